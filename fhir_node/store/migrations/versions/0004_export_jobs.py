"""export jobs: Bulk Data export jobs and their NDJSON segments, in the database so any worker resumes
and serves them

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "export_jobs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.LargeBinary(), nullable=False),
        sa.Column("request", sa.String(length=2048), nullable=False),
        sa.Column("types", sa.String(length=1024), nullable=False),
        sa.Column("since", sa.DateTime(timezone=False), nullable=True),
        sa.Column("members", sa.LargeBinary(), nullable=True),
        sa.Column("transaction_time", sa.DateTime(timezone=False), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("type_index", sa.Integer(), nullable=False),
        sa.Column("cursor", sa.String(length=64), nullable=True),
        sa.Column("exported", sa.Integer(), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=False), nullable=True),
        sa.Column("error", sa.String(length=2048), nullable=True),
        sa.Column("finished", sa.DateTime(timezone=False), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        comment="Bulk Data export jobs: who asked (owner: the principal, JSON), what (types, since, the Group's "
        "members), where the export stands (type_index, cursor: the last id written), so any worker resumes it.",
    )
    op.create_index("ix_export_jobs_status", "export_jobs", ["status", "lease_until"])
    op.create_table(
        "export_files",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        comment="The NDJSON of export jobs, one segment per step: a file is the segments of (job, type, part) in "
        "seq order. In the database, so every worker serves every file.",
    )
    op.create_index("ix_export_files_job", "export_files", ["job_id", "res_type", "part", "seq"])


def downgrade() -> None:
    op.drop_index("ix_export_files_job", table_name="export_files")
    op.drop_table("export_files")
    op.drop_index("ix_export_jobs_status", table_name="export_jobs")
    op.drop_table("export_jobs")
