"""push_targets: per-group webhook and MQTT destinations for classification results

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
        "push_targets",
        sa.Column("group_name", sa.String(length=64), primary_key=True),
        sa.Column("webhook_url", sa.String(length=2000), nullable=True),
        sa.Column("webhook_secret", sa.String(length=256), nullable=True),
        sa.Column("mqtt_topic", sa.String(length=256), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("push_targets")
