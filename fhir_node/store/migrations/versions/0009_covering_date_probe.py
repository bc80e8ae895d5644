"""covering date probe: the date index by resource holds each row's range, so a search that probes a
resource's dates (`date=ge...` beside another criterion) reads the index alone, not the table too

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_NAME = "ix_idx_date_resource"


def upgrade() -> None:
    op.drop_index(_NAME, table_name="idx_date")
    op.create_index(_NAME, "idx_date", ["res_type", "res_id", "param", "low", "high"])


def downgrade() -> None:
    op.drop_index(_NAME, table_name="idx_date")
    op.create_index(_NAME, "idx_date", ["res_type", "res_id", "param"])
