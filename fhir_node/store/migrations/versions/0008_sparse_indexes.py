"""sparse indexes: the search indexes led by a mostly NULL column (a reference's URL or identifier, a
token's text) hold only the rows that have one (`schema.sparse_index`)

Revision ID: 0008
Revises: 0007
"""

from alembic import op
from sqlalchemy import Index

from fhir_node.store.schema import idx_reference, idx_token

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _sparse() -> list[Index]:
    return [i for t in (idx_reference, idx_token) for i in t.indexes if i.dialect_options["sqlite"]["where"] is not None]


def upgrade() -> None:
    for index in _sparse():
        op.drop_index(index.name, table_name=index.table.name)
        index.create(op.get_bind())


def downgrade() -> None:
    for index in _sparse():
        op.drop_index(index.name, table_name=index.table.name)
        op.create_index(index.name, index.table.name, [c.name for c in index.columns])
