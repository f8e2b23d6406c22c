"""Copy image bytes from one store to another (`fsdi blobs migrate`): the move from one
host's disk to object storage, and back.

- Only the keys the service owns are copied (`blobs/`, `query-images/`): a data directory
  also holds the database and the ONNX cache, which stay where they are.
- Each object copied is read back from the target and its sha256 compared with the
  source's (and, for a support image, with its name, which is its sha256): a copy is
  never trusted unread.
- Resumable: an object already at the target with the source's size is skipped. A put is
  atomic on both stores (rename, or one PUT), so a same-size object is a finished copy;
  a pack a running process is still appending to has grown, and is copied again.
- Safe while the service runs: the source is only read. What is written meanwhile is
  picked up by the next run; an object removed meanwhile (retention, a deleted class) is
  counted as gone.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from storage.blobs import PREFIX as BLOBS
from storage.objects import ObjectInfo, ObjectStore
from storage.packs import PREFIX as PACKS

OWNED = (BLOBS, PACKS)


@dataclass
class CopyReport:
    copied: int = 0
    copied_bytes: int = 0
    already: int = 0  # at the target with the source's size
    gone: int = 0  # listed, then removed from the source before it was read
    corrupt: list[str] = field(default_factory=list)  # source bytes that fail their hash
    mismatched: list[str] = field(default_factory=list)  # read back different
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.mismatched

    def add(self, outcome: str, key: str, size: int) -> None:
        with self._lock:
            if outcome == "copied":
                self.copied += 1
                self.copied_bytes += size
            elif outcome == "already":
                self.already += 1
            elif outcome == "gone":
                self.gone += 1
            elif outcome == "corrupt":
                self.corrupt.append(key)
            else:
                self.mismatched.append(key)


def owned_objects(store: ObjectStore) -> Iterator[ObjectInfo]:
    for prefix in OWNED:
        yield from store.list(prefix)


def copy_one(src: ObjectStore, dst: ObjectStore, info: ObjectInfo) -> str:
    """Copy one object; returns its outcome: copied, already, gone, corrupt or mismatched."""
    if dst.size(info.key) == info.size:
        return "already"
    data = src.get(info.key)
    if data is None:
        return "gone"
    digest = hashlib.sha256(data).hexdigest()
    if info.key.startswith(BLOBS) and info.key.rsplit("/", 1)[-1] != digest:
        return "corrupt"
    dst.put(info.key, data)
    back = dst.get(info.key)
    if back is None or hashlib.sha256(back).hexdigest() != digest:
        return "mismatched"
    return "copied"


def copy_store(src: ObjectStore, dst: ObjectStore, workers: int = 8,
               progress: Callable[[int], None] | None = None) -> CopyReport:
    """Copy every object the service owns from `src` to `dst`. `progress(n)` is called
    with the bytes of each object handled. Store failures (StoreUnavailable) propagate:
    a rerun resumes where this one stopped."""
    report = CopyReport()

    def one(info: ObjectInfo) -> None:
        report.add(copy_one(src, dst, info), info.key, info.size)
        if progress is not None:
            progress(info.size)

    with ThreadPoolExecutor(workers) as pool:
        # Bounded in flight: a store with millions of objects is listed lazily.
        pending = []
        for info in owned_objects(src):
            pending.append(pool.submit(one, info))
            if len(pending) >= 4 * workers:
                pending.pop(0).result()
        for f in pending:
            f.result()
    return report
