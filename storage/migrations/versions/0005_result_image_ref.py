"""classification_results.image_ref: the kept query image's place in a pack file

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("classification_results") as batch:
        batch.add_column(sa.Column("image_ref", sa.String(length=96), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("classification_results") as batch:
        batch.drop_column("image_ref")
