"""reference targets in the resource index: a resource's own reference targets (its patient, for the
consent filter probed per row) are read from the index alone

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_idx_reference_resource", table_name="idx_reference")
    op.create_index(
        "ix_idx_reference_resource", "idx_reference", ["res_type", "res_id", "param", "target_type", "target_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_idx_reference_resource", table_name="idx_reference")
    op.create_index("ix_idx_reference_resource", "idx_reference", ["res_type", "res_id", "param"])
