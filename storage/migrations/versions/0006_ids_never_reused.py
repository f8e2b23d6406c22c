"""ids are never reused, and results and feedback refer to classes by real foreign keys

SQLite hands a deleted row's id to the next insert unless the table is AUTOINCREMENT: a
deleted class's id could come back as another group's class, and feedback naming the old
class would then promote into the new one. classes and support_images become
AUTOINCREMENT (their sequence starts above every id ever referenced), and
classification_results.class_id / feedback.class_id become foreign keys ON DELETE SET NULL
(orphans from earlier deletions are cleared first). PostgreSQL sequences never reuse ids;
there only the foreign keys are added.

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

REFS = (("classification_results", "fk_results_class"), ("feedback", "fk_feedback_class"))


def _clear_orphans() -> None:
    """Ids of classes deleted before this migration point nowhere: no class, then."""
    for table, _ in REFS:
        op.execute(f"UPDATE {table} SET class_id = NULL WHERE class_id IS NOT NULL AND "
                   "class_id NOT IN (SELECT id FROM classes)")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        # storage.migrate runs SQLite migrations with foreign keys off: recreating a table
        # must not cascade its implicit DELETE to the rows that refer to it.
        high = {"classes": bind.scalar(sa.text(
            "SELECT max(m) FROM (SELECT max(id) AS m FROM classes UNION ALL "
            "SELECT max(class_id) FROM classification_results UNION ALL "
            "SELECT max(class_id) FROM feedback)")) or 0,
                "support_images": bind.scalar(sa.text(
                    "SELECT max(id) FROM support_images")) or 0}
        _clear_orphans()
        for table in ("classes", "support_images"):
            with op.batch_alter_table(table, recreate="always",
                                      table_kwargs={"sqlite_autoincrement": True}):
                pass
            op.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = :t").bindparams(
                t=table))
            op.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :s)"
                               ).bindparams(t=table, s=int(high[table])))
    else:
        _clear_orphans()
    for table, fk in REFS:
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(fk, "classes", ["class_id"], ["id"], ondelete="SET NULL")
            batch.create_index(f"ix_{table}_class_id", ["class_id"])


def downgrade() -> None:
    for table, fk in REFS:
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_class_id")
            batch.drop_constraint(fk, type_="foreignkey")
