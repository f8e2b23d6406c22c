"""Run the Alembic migrations shipped in this package."""

from __future__ import annotations

import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage.db import make_engine, make_sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x46534449  # "FSDI": the advisory lock replicas migrate under
LOCK_POLL_S = 0.2  # how often a replica waiting for it tries again


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database at `engine` to the newest schema revision (or `revision`).

    On PostgreSQL Alembic manages the transactions (a migration may step out of them to
    change a big table while it stays in use), and replicas starting together take turns
    on an advisory lock: the second finds the work done.

    On SQLite the migrations run with foreign keys off (a table that a migration recreates
    is dropped, and with foreign keys on that drop would cascade to the rows referring to
    it), then `PRAGMA foreign_key_check` must come back empty before they count."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine.dialect.name != "sqlite":
        # The lock's session stays out of any transaction (autocommit), so it holds back
        # neither vacuum nor a CONCURRENTLY built index; and it waits for the lock in
        # short tries, never inside one statement: a statement blocked on the lock holds
        # a snapshot, which the holder's CONCURRENTLY built index would wait for, while
        # the holder keeps the lock until its index is built (two replicas starting
        # together on a database that needs such a migration would wait forever).
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock, \
                engine.connect() as conn:
            while not lock.exec_driver_sql(
                    f"SELECT pg_try_advisory_lock({MIGRATION_LOCK})").scalar():
                time.sleep(LOCK_POLL_S)
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
            finally:
                lock.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # outside a transaction: effective
        conn.commit()  # ends SQLAlchemy's autobegun (empty) transaction
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"migration left dangling references: {broken[:5]}")
        finally:
            conn.rollback()  # nothing open after a failure either
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()


def open_migrated(url: str) -> tuple[Engine, sessionmaker[Session]]:
    """An engine for `url`, migrated to the newest schema, and its session factory."""
    engine = make_engine(url)
    upgrade(engine)
    return engine, make_sessionmaker(engine)
