"""audit chain: the hash chain of the node's own AuditEvents, and its anchor after retention

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_chain",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("res_id"),
        comment="The node's own AuditEvents in the order written: each one's SHA-256; each event carries its "
        "predecessor's hash, so a changed or removed event breaks the chain (fhir-node audit verify).",
        sqlite_autoincrement=True,
    )
    op.create_table(
        "audit_anchor",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        comment="Where verification starts once retention removed the oldest events: the last removed one.",
    )


def downgrade() -> None:
    op.drop_table("audit_anchor")
    op.drop_table("audit_chain")
