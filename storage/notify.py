"""Replicas tell each other that something changed: PostgreSQL's NOTIFY, sent in the
transaction that made the change (delivered only if it commits), heard by a LISTEN thread
in every replica, which then syncs at once instead of at its next poll. The poll stays:
a replica whose listening connection is down (or SQLite, which has none) still converges
within FSDI_SYNC_INTERVAL_MS."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

CHANNEL = "fsdi_changes"
log = logging.getLogger("fsdi")


def notify_change(s: Session) -> None:
    """Tell every listening replica, when this transaction commits, to sync."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


class ChangeListener:
    """A daemon thread holding one connection that LISTENs on CHANNEL; `on_change()` runs
    (on that thread) for each notification. Reconnects after a lost connection."""

    def __init__(self, database_url: str, on_change: Callable[[], object],
                 retry_s: float = 1.0) -> None:
        self._dsn = make_url(database_url).set(drivername="postgresql").render_as_string(
            hide_password=False)
        self._on_change = on_change
        self._retry_s = retry_s
        self._stop = threading.Event()
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fsdi-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    # A change made while we were not listening: sync once on (re)connect.
                    self._on_change()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self._on_change()
            except Exception as exc:  # the poll covers the gap; try again shortly
                if self.listening.is_set():
                    log.warning("change notifications lost (%s); polling until back",
                                type(exc).__name__)
                self.listening.clear()
                self._stop.wait(self._retry_s)
        self.listening.clear()
