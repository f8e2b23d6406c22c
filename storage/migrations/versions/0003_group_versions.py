"""group_versions: a per-group counter that replicas poll to keep their caches coherent

Bumped by every enrolment and deletion.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "group_versions",
        sa.Column("group_name", sa.String(length=64), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("group_versions")
