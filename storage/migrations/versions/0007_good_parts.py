"""good parts: classes.kind, patch_features, group_settings, results' verdict and anomaly

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("classes") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=8), nullable=False,
                                   server_default="defect"))
    op.create_table(
        "patch_features",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("image_id", sa.Integer(),
                  sa.ForeignKey("support_images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_version", sa.String(length=200), nullable=False),
        sa.Column("grid_h", sa.Integer(), nullable=False),
        sa.Column("grid_w", sa.Integer(), nullable=False),
        sa.Column("channels", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.UniqueConstraint("image_id", "model_version", name="uq_patches_image_version"),
    )
    op.create_index("ix_patch_features_image_id", "patch_features", ["image_id"])
    op.create_index("ix_patch_features_version", "patch_features", ["model_version"])
    op.create_table(
        "group_settings",
        sa.Column("group_name", sa.String(length=64), primary_key=True),
        sa.Column("false_alarm_rate", sa.Float(), nullable=True),
    )
    with op.batch_alter_table("classification_results") as batch:
        batch.add_column(sa.Column("verdict", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("anomaly_score", sa.Float(), nullable=True))
        batch.add_column(sa.Column("anomaly_threshold", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("classification_results") as batch:
        batch.drop_column("anomaly_threshold")
        batch.drop_column("anomaly_score")
        batch.drop_column("verdict")
    op.drop_table("group_settings")
    op.drop_index("ix_patch_features_version", table_name="patch_features")
    op.drop_index("ix_patch_features_image_id", table_name="patch_features")
    op.drop_table("patch_features")
    with op.batch_alter_table("classes") as batch:
        batch.drop_column("kind")
