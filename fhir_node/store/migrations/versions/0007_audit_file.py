"""audit file: on SQLite the hash chain moves to a file of its own, attached as `audit` (see
`store.audit_file`), and a write's AuditEvent is staged in `audit_outbox` with the write

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from fhir_node.store.audit_file import MOVED, apart, copy_table
from fhir_node.store.schema import audit_outbox

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_outbox",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("res_id", sa.String(64), nullable=False),
        sa.Column("recorded", sa.DateTime(timezone=False), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("res_id"),
        comment=audit_outbox.comment,
    )
    if apart(op.get_bind()):  # set aside here, moved once this commits (`audit_file.move_chain`)
        for table in MOVED:
            op.rename_table(table.name, f"{table.name}_moved")


def downgrade() -> None:
    conn = op.get_bind()
    if apart(conn):
        for table in MOVED:
            copy_table(conn, table, f"audit.{table.name}", "main")
            conn.exec_driver_sql(f"DROP TABLE audit.{table.name}")
    op.drop_table("audit_outbox")
