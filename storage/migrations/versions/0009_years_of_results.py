"""64-bit ids for the tables that grow with traffic, and indexes that follow the history
filters

PostgreSQL: classification_results.id, feedback.id, feedback.result_id and
audit_events.id become BIGINT (and their sequences too) while the tables stay in use: a
twin column filled in short batches and swapped in by one short transaction
(storage/widen.py), and the indexes built CONCURRENTLY; the service keeps classifying
throughout (bench/README.md, "Years of results", at 5 M results). An interrupted upgrade
resumes where it stopped. SQLite's INTEGER PRIMARY KEY is 64-bit already. Both: the group's history is reached by
(group, id), (group, verdict, id), (group, unknown, id), (group, label, id), and time
windows by (group, created_at, id) and (created_at, id); (group, id) replaces the index
on the group alone.

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

from storage.widen import append_only, widen

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

WIDE = (("feedback", "result_id"), ("classification_results", "id"), ("feedback", "id"),
        ("audit_events", "id"))
SEQUENCES = ("classification_results_id_seq", "feedback_id_seq", "audit_events_id_seq")
AUDIT_GUARD = append_only("fsdi_audit_append_only", "audit_events is append-only", "id_wide")
INDEXES = (("ix_results_group_id", ["group_name", "id"]),
           ("ix_results_group_verdict_id", ["group_name", "verdict", "id"]),
           ("ix_results_group_unknown_id", ["group_name", "unknown", "id"]),
           ("ix_results_group_label_id", ["group_name", "label", "id"]),
           ("ix_results_group_time", ["group_name", "created_at", "id"]),
           ("ix_results_time", ["created_at", "id"]))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index("ix_classification_results_group_name",
                      table_name="classification_results")
        for name, columns in INDEXES:
            op.create_index(name, "classification_results", columns)
        return
    with op.get_context().autocommit_block():
        conn = op.get_bind()
        for table, column in WIDE:
            widen(conn, table, column,
                  guard=AUDIT_GUARD if table == "audit_events" else None)
        for name, columns in INDEXES:
            op.create_index(name, "classification_results", columns,
                            postgresql_concurrently=True, if_not_exists=True)
        op.drop_index("ix_classification_results_group_name",
                      table_name="classification_results", postgresql_concurrently=True,
                      if_exists=True)
        op.execute("ANALYZE classification_results")


def downgrade() -> None:
    for name, _ in INDEXES:
        op.drop_index(name, table_name="classification_results")
    op.create_index("ix_classification_results_group_name", "classification_results",
                    ["group_name"])
    if op.get_bind().dialect.name == "postgresql":
        for seq in SEQUENCES:
            op.execute(f"ALTER SEQUENCE IF EXISTS {seq} AS INTEGER")
        for table, column in WIDE:
            op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger())
