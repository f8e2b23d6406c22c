"""group_settings.threshold_rule: a group's own rule for its good-parts threshold

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("group_settings") as batch:
        batch.add_column(sa.Column("threshold_rule", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("group_settings") as batch:
        batch.drop_column("threshold_rule")
