"""the latest feedback's verdict on its result row, so that the history's feedback filter
is an index like the others

`classification_results.feedback_correct` (NULL: no feedback yet) is kept by a trigger on
feedback inserts, whatever code writes them (an older replica during a rolling upgrade
included), and reached by (group_name, feedback_correct, id) and (feedback_correct, id), both
over judged results only. The feedback rows stay the
record. Before, a feedback filter aggregated the whole feedback table, and a group nobody
judged was scanned to find nothing.

PostgreSQL, online: the column and the trigger in one short transaction (lock_timeout
bounded, retried); the existing feedback copied over in batches; the index built
CONCURRENTLY.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

from storage.widen import briefly, do_block

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# Only judged results: small indexes, each reached by a verdict (and a group).
INDEXES = (("ix_results_group_feedback_id", ["group_name", "feedback_correct", "id"]),
           ("ix_results_feedback_id", ["feedback_correct", "id"]))
JUDGED = sa.text("feedback_correct IS NOT NULL")
TRIGGER = "fsdi_feedback_on_result"
BATCH = 20_000

# Only a result without the column set is filled from its latest feedback: one the
# trigger has set meanwhile already holds the newest verdict.
BACKFILL = ("UPDATE classification_results SET feedback_correct = ("
            "SELECT f.correct FROM feedback f WHERE f.result_id = classification_results.id "
            "ORDER BY f.id DESC LIMIT 1) "
            "WHERE feedback_correct IS NULL AND id IN ("
            "SELECT result_id FROM feedback WHERE id > :lo AND id <= :hi)")


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        op.add_column("classification_results",
                      sa.Column("feedback_correct", sa.Boolean(), nullable=True))
        op.execute(f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON feedback FOR EACH ROW BEGIN "
                   "UPDATE classification_results SET feedback_correct = NEW.correct "
                   "WHERE id = NEW.result_id; END")
        op.execute(sa.text(BACKFILL).bindparams(lo=0, hi=2**62))
        for name, columns in INDEXES:
            op.create_index(name, "classification_results", columns, sqlite_where=JUDGED)
        return
    with op.get_context().autocommit_block():
        briefly(conn, do_block([
            "ALTER TABLE classification_results ADD COLUMN IF NOT EXISTS feedback_correct "
            "BOOLEAN",
            f"CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger AS $$ BEGIN "
            "UPDATE classification_results SET feedback_correct = NEW.correct "
            "WHERE id = NEW.result_id; RETURN NULL; END; $$ LANGUAGE plpgsql",
            f"DROP TRIGGER IF EXISTS {TRIGGER} ON feedback",
            f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON feedback FOR EACH ROW "
            f"EXECUTE FUNCTION {TRIGGER}()"]))
        top = conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM feedback")).scalar_one()
        for lo in range(0, int(top), BATCH):
            conn.execute(sa.text(BACKFILL), {"lo": lo, "hi": lo + BATCH})
        for name, columns in INDEXES:
            op.create_index(name, "classification_results", columns, postgresql_where=JUDGED,
                            postgresql_concurrently=True, if_not_exists=True)
        op.execute("ANALYZE classification_results")


def downgrade() -> None:
    conn = op.get_bind()
    for name, _ in INDEXES:
        op.drop_index(name, table_name="classification_results")
    if conn.dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER} ON feedback")
        op.execute(f"DROP FUNCTION IF EXISTS {TRIGGER}()")
    else:
        op.execute(f"DROP TRIGGER IF EXISTS {TRIGGER}")
    with op.batch_alter_table("classification_results") as batch:
        batch.drop_column("feedback_correct")
