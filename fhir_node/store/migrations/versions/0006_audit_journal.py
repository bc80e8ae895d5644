"""audit journal: the chain holds each event's time and stored bytes, and `audit_indexed` how far the
events are stored and indexed as resources (the chain is written first, the index afterwards)

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from fhir_node.store.schema import audit_chain, audit_indexed, resource_versions

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_chain", sa.Column("recorded", sa.DateTime(timezone=False), nullable=True))
    op.add_column("audit_chain", sa.Column("content", sa.LargeBinary(), nullable=True))
    op.create_table(
        "audit_indexed",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        comment=audit_indexed.comment,
    )
    conn = op.get_bind()
    c, v = audit_chain.c, resource_versions.c
    first = sa.and_(v.res_type == "AuditEvent", v.res_id == c.res_id, v.version_id == 1)
    conn.execute(
        sa.update(audit_chain).values(
            recorded=sa.select(v.last_updated).where(first).scalar_subquery(),
            content=sa.select(v.content).where(first).scalar_subquery(),
        )
    )
    last = conn.execute(sa.select(sa.func.max(c.seq))).scalar() or 0
    conn.execute(sa.insert(audit_indexed).values(id=1, seq=last))


def downgrade() -> None:
    op.drop_table("audit_indexed")
    with op.batch_alter_table("audit_chain") as batch:
        batch.drop_column("content")
        batch.drop_column("recorded")
