"""Group commit for classification results: one writer thread stores the results of all
/classify requests that arrived while its previous commit ran, in one transaction.

Every request still gets its ids only after its rows are durable; concurrent requests
share the transaction's fixed costs (begin, commit, the WAL fsync) instead of paying
them one by one. If a shared transaction fails, each request of it is retried alone, so
one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from app.services.handoff import hand_back
from app.services.threadnames import name_this_thread
from storage import repositories as repo
from storage.packs import PackUnavailable
from storage.repositories import ResultRow

if TYPE_CHECKING:
    from prometheus_client import Counter
    from sqlalchemy.orm import Session, sessionmaker

    from app.services.uploads import Upload
    from storage.packs import QueryImages

log = logging.getLogger("fsdi")
T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    loop: asyncio.AbstractEventLoop

    def hand_back(self, value: R | BaseException) -> None:
        hand_back(self.loop, self.future, value)


class GroupCommit(Generic[T, R]):
    """`write(items)` stores items in one transaction and returns one result per item;
    `submit(item)` waits for its item's result."""

    def __init__(self, write: Callable[[list[T]], list[R]], name: str,
                 max_items: int = 64) -> None:
        self._write = write
        self._name = name
        self.max_items = max_items
        self._queue: queue.SimpleQueue[_Pending[T, R] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Whatever was submitted before is still written; then the thread ends."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None

    async def submit(self, item: T) -> R:
        if self._thread is None:
            raise RuntimeError(f"{self._name} not started")
        loop = asyncio.get_running_loop()
        pending: _Pending[T, R] = _Pending(item, loop.create_future(), loop)
        self._queue.put(pending)
        return await pending.future

    def _run(self) -> None:
        name_this_thread()
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, stopping = [first], False
            while len(group) < self.max_items:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                group.append(nxt)
            self._commit(group)
            if stopping:
                return

    def _commit(self, group: list[_Pending[T, R]]) -> None:
        try:
            results = self._write([p.item for p in group])
        except Exception as exc:
            if len(group) == 1:
                group[0].hand_back(exc)
                return
            for p in group:  # find the bad one: each alone
                self._commit([p])
            return
        for p, r in zip(group, results, strict=True):
            p.hand_back(r)


@dataclass(frozen=True)
class PendingResults:
    """One /classify request's results, as `classification.classify` decided them."""
    group: str
    uploads: list[Upload]
    rows: list[ResultRow]  # one per upload
    actor: str


@dataclass(frozen=True)
class ResultStore:
    """Where classification results go: the database, and (when `keep`) the query-image
    packs; `not_kept` counts images the disk refused."""

    sessions: sessionmaker[Session]
    packs: QueryImages
    keep: bool
    not_kept: Counter


def write_results(store: ResultStore, items: list[PendingResults]) -> list[list[int]]:
    """Keep the query images when the settings say so (appended to this process's pack,
    not fsynced: a lost one only means its result cannot be promoted), then record each
    result, with where its image lies, and its audit event in one transaction. Returns
    each request's result ids."""
    # A retry alone (GroupCommit) keeps its first keep's references.
    todo = [(u, row) for it in items for u, row in zip(it.uploads, it.rows, strict=True)
            if "image_ref" not in row]
    refs = keep_images(store, [u.data for u, _ in todo]) if store.keep else [None] * len(todo)
    for (_, row), ref in zip(todo, refs, strict=True):
        row["image_ref"] = ref
    rows = [row for it in items for row in it.rows]
    with store.sessions.begin() as s:
        ids = repo.add_classifications(s, rows, [it.actor for it in items for _ in it.rows])
    out, start = [], 0
    for it in items:
        out.append(ids[start:start + len(it.rows)])
        start += len(it.rows)
    return out


def keep_images(store: ResultStore, images: list[bytes]) -> list[str | None]:
    """Keep classified images (one pack write, or one object, for all of them); None
    each when the store refuses. Keeping is best effort: a full disk or an unreachable
    object store must not stop classification. The failure is logged once, then the
    packs pause (storage/packs.py) and each image refused meanwhile is counted."""
    if not images:
        return []
    try:
        return list(store.packs.keep(images))
    except PackUnavailable:
        pass
    except OSError as exc:
        log.warning("query images are not kept for the next %.0f s: %s (%s)",
                    store.packs.retry_s, type(exc).__name__, exc.strerror or exc)
    store.not_kept.inc(len(images))
    return [None] * len(images)
