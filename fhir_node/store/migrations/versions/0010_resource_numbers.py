"""resource numbers: each resource row gets a number (`rid`, on SQLite the table's own key), each search
index row its resource's, and the indexes a search walks in id order hold it: a page's rows are joined to
their resources by the number, found by one lookup instead of two (the (type, id) index, then the table)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_COMMENT = (
    "The current version of each resource, with its JSON bytes exactly as served; rid, its row's number, is "
    "what index rows join it by (on SQLite the table's own key: one lookup, not two)."
)
_OLD_COMMENT = "The current version of each resource, with its JSON bytes exactly as served."
_INDEX_TABLES = ("idx_token", "idx_string", "idx_date", "idx_reference", "idx_uri", "idx_number")
#: (table, index, columns after type and parameter, the column a sparse index needs) as at 0009; `rid` follows.
_WALKED = (
    ("idx_token", "ix_idx_token_code_res_id", ["code", "res_id"], None),
    ("idx_string", "ix_idx_string_exact_res_id", ["exact", "res_id"], None),
    ("idx_reference", "ix_idx_reference_target_type_target_id_res_id", ["target_type", "target_id", "res_id"], None),
    ("idx_reference", "ix_idx_reference_url_res_id", ["url", "res_id"], "url"),
    ("idx_reference", "ix_idx_reference_id_value_res_id", ["id_value", "res_id"], "id_value"),
    ("idx_uri", "ix_idx_uri_uri_res_id", ["uri", "res_id"], None),
)
_COLUMNS = "res_type, res_id, version_id, last_updated, deleted, content"


def _walked(with_rid: bool) -> None:
    for table, name, cols, sparse in _WALKED:
        op.drop_index(name, table_name=table)
        where = sa.text(f"{sparse} IS NOT NULL") if sparse else None
        columns = ["res_type", "param", *cols, *(["rid"] if with_rid else [])]
        op.create_index(name, table, columns, sqlite_where=where, postgresql_where=where)


def _sqlite_resources(numbered: bool) -> None:
    """SQLite changes a table's key by copying it into a new table."""
    identity = (
        [
            sa.Column("rid", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column("res_type", sa.String(64), nullable=False),
            sa.Column("res_id", sa.String(64), nullable=False),
        ]
        if numbered
        else [
            sa.Column("res_type", sa.String(64), primary_key=True),
            sa.Column("res_id", sa.String(64), primary_key=True),
        ]
    )
    op.create_table(
        "resources_new",
        *identity,
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        *([sa.UniqueConstraint("res_type", "res_id", name="uq_resources_resource")] if numbered else []),
        sqlite_autoincrement=numbered,
    )
    op.execute(f"INSERT INTO resources_new ({_COLUMNS}) SELECT {_COLUMNS} FROM resources ORDER BY res_type, res_id")
    op.drop_table("resources")
    op.rename_table("resources_new", "resources")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        _sqlite_resources(numbered=True)
    else:
        op.create_unique_constraint("uq_resources_resource", "resources", ["res_type", "res_id"])
        op.drop_constraint("resources_pkey", "resources", type_="primary")
        op.execute("ALTER TABLE resources ADD COLUMN rid BIGSERIAL")
        op.create_primary_key("resources_pkey", "resources", ["rid"])
        op.create_table_comment("resources", _COMMENT, existing_comment=_OLD_COMMENT)
    for table in _INDEX_TABLES:
        mine = f"resources.res_type = {table}.res_type AND resources.res_id = {table}.res_id"
        op.execute(f"DELETE FROM {table} WHERE NOT EXISTS (SELECT 1 FROM resources WHERE {mine})")  # none expected
        if sqlite:  # SQLite adds a NOT NULL column only with a default; every insert names the value
            op.add_column(table, sa.Column("rid", sa.Integer(), nullable=False, server_default="0"))
            op.execute(f"UPDATE {table} SET rid = (SELECT rid FROM resources WHERE {mine})")
        else:
            op.add_column(table, sa.Column("rid", sa.BigInteger(), nullable=True))
            op.execute(f"UPDATE {table} SET rid = resources.rid FROM resources WHERE {mine}")
            op.alter_column(table, "rid", nullable=False)
    _walked(with_rid=True)


def downgrade() -> None:
    _walked(with_rid=False)
    for table in _INDEX_TABLES:
        op.execute(f"ALTER TABLE {table} DROP COLUMN rid")
    if op.get_bind().dialect.name == "sqlite":
        _sqlite_resources(numbered=False)
        return
    op.drop_constraint("resources_pkey", "resources", type_="primary")
    op.drop_column("resources", "rid")
    op.create_primary_key("resources_pkey", "resources", ["res_type", "res_id"])
    op.drop_constraint("uq_resources_resource", "resources", type_="unique")
    op.create_table_comment("resources", _OLD_COMMENT, existing_comment=_COMMENT)
