"""research consented: the Patients whose latest research consent is an active permit, filled from the
Consents already stored

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from fhir_node.rules.research_consent import fill
from fhir_node.store.schema import research_consented, resources

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "research_consented",
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("patient_id"),
        comment=research_consented.comment,
    )
    conn = op.get_bind()
    r = resources.c
    fill(conn, [pid for (pid,) in conn.execute(sa.select(r.res_id).where(r.res_type == "Patient", r.deleted == sa.false()))])


def downgrade() -> None:
    op.drop_table("research_consented")
