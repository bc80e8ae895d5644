"""sparse indexes: the search indexes led by a mostly NULL column (a reference's URL or identifier, a
token's text) hold only the rows that have one (`schema.sparse_index`)

Revision ID: 0008
Revises: 0007
"""

from alembic import op
from sqlalchemy import text

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: (table, index, columns after type and parameter) as they were at this revision (0010 adds `rid`).
_SPARSE = (
    ("idx_reference", "ix_idx_reference_url_res_id", ["url", "res_id"]),
    ("idx_reference", "ix_idx_reference_id_value_res_id", ["id_value", "res_id"]),
    ("idx_token", "ix_idx_token_text", ["text"]),
)


def upgrade() -> None:
    for table, name, cols in _SPARSE:
        op.drop_index(name, table_name=table)
        where = text(f"{cols[0]} IS NOT NULL")
        op.create_index(name, table, ["res_type", "param", *cols], sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for table, name, cols in _SPARSE:
        op.drop_index(name, table_name=table)
        op.create_index(name, table, ["res_type", "param", *cols])
