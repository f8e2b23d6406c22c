"""Append-only pack files for classified (query) images.

/classify keeps every query image so that an operator's correction can be promoted into
a support set. One file per image costs the file system an inode, a directory entry and
a rename per image (measured in bench/README.md); appending to a pack costs one write. A
result row keeps its image's reference, `<pack name>:<offset>:<length>`, and the caller
checks the bytes it reads back against the row's sha256, so a torn tail after a crash
reads as "not kept", never as another image.

Each process appends to packs of its own (a random token in the name: replicas may share
the volume) and starts a new pack once the current one holds `max_bytes`. Not fsynced,
like the per-file query images were: a lost image only means its result cannot be
promoted. Support images stay in the content-addressed, fsynced BlobStore.

Keeping is best effort: after a failed write (a full disk, an I/O error) appends are
refused for `retry_s` seconds without touching the disk, rather than trying, and leaving
a new empty pack, for every image. `prune` removes whole packs last written before a
cutoff (retention).
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path

from storage.objects import ObjectStore

PREFIX = "query-images/"

_NAME = re.compile(r"^[0-9]{19}-[0-9a-f]{12}\.pack$")


class PackUnavailable(OSError):
    """Appends are paused after a failed write; see PackStore.retry_s."""


class QueryImages(ABC):
    """Where classified images are kept; a reference per image names its bytes."""

    retry_s: float

    @abstractmethod
    def keep(self, images: list[bytes]) -> list[str]:
        """Store `images`; one reference each. Raises OSError when the store refuses,
        and PackUnavailable for `retry_s` seconds after that."""

    @abstractmethod
    def read(self, ref: str) -> bytes | None:
        """The bytes behind `ref`, or None when they are gone. May raise
        storage.objects.StoreUnavailable when the store cannot be asked."""

    @abstractmethod
    def prune(self, older_than_s: float) -> int:
        """Remove packs last written more than `older_than_s` seconds ago."""

    def close(self) -> None:  # noqa: B027  (nothing to release unless a store holds files)
        """Release what the store holds open."""


def parse_ref(ref: str) -> tuple[str, int, int] | None:
    """`<pack name>:<offset>:<length>` -> its parts; None for anything else."""
    try:
        name, offset, length = ref.split(":")
        start, n = int(offset), int(length)
    except ValueError:
        return None
    if not _NAME.match(name) or start < 0 or n < 0:
        return None
    return name, start, n


class PackStore(QueryImages):
    def __init__(self, root: Path, max_bytes: int = 256 * 1024 * 1024,
                 retry_s: float = 10.0) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.retry_s = retry_s
        self._token = secrets.token_hex(6)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._name = ""
        self._size = 0
        self._paused_until = 0.0

    def keep(self, images: list[bytes]) -> list[str]:
        return [self.append(data) for data in images]

    def append(self, data: bytes) -> str:
        """Write `data` at the end of this process's current pack; return its reference.
        Raises OSError when the write fails, and PackUnavailable (an OSError) for
        `retry_s` seconds after that."""
        with self._lock:
            if time.monotonic() < self._paused_until:
                raise PackUnavailable("query-image packs paused after a failed write")
            try:
                if self._fd is None or self._size >= self.max_bytes:
                    self._open_next()
                assert self._fd is not None
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                # Where the bytes really went (O_APPEND writes at the file's end).
                self._size = os.lseek(self._fd, 0, os.SEEK_CUR)
            except BaseException:
                self._close()  # the tail may be torn: never append after it
                self._paused_until = time.monotonic() + self.retry_s
                raise
            return f"{self._name}:{self._size - len(data)}:{len(data)}"

    def prune(self, older_than_s: float) -> int:
        """Remove the packs last written more than `older_than_s` seconds ago (any
        process's: a pack still being appended to was written just now); returns how
        many. Results that point into them read as not kept."""
        cutoff = time.time() - older_than_s
        removed = 0
        with self._lock:
            current = self._name if self._fd is not None else None
        for p in self.root.glob("*.pack") if self.root.is_dir() else ():
            if not _NAME.match(p.name) or p.name == current:
                continue
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # another replica pruned it meanwhile
        return removed

    def read(self, ref: str) -> bytes | None:
        """The bytes behind `ref`, or None when the pack or that stretch of it is gone."""
        parsed = parse_ref(ref)
        if parsed is None:
            return None
        name, start, n = parsed
        try:
            with open(self.root / name, "rb") as fh:
                fh.seek(start)
                data = fh.read(n)
        except FileNotFoundError:
            return None
        return data if len(data) == n else None

    def close(self) -> None:
        with self._lock:
            self._close()

    def _open_next(self) -> None:
        self._close()
        self.root.mkdir(parents=True, exist_ok=True)
        # Names sort by creation time.
        self._name = f"{time.time_ns():019d}-{self._token}.pack"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.root / self._name, flags, 0o644)
        self._size = 0

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ObjectPacks(QueryImages):
    """Packs as objects under `query-images/`: one object per `keep` call, never
    appended to. Names sort by creation time, as on disk, so retention reads a pack's age
    from its name and several replicas may prune at once."""

    def __init__(self, objects: ObjectStore, retry_s: float = 10.0) -> None:
        self.objects = objects
        self.retry_s = retry_s
        self._token = secrets.token_hex(6)
        self._lock = threading.Lock()
        self._last_ns = 0
        self._paused_until = 0.0

    def _next_name(self) -> str:
        with self._lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            return f"{self._last_ns:019d}-{self._token}.pack"

    def keep(self, images: list[bytes]) -> list[str]:
        if time.monotonic() < self._paused_until:
            raise PackUnavailable("query-image packs paused after a failed write")
        name = self._next_name()
        refs, offset = [], 0
        for data in images:
            refs.append(f"{name}:{offset}:{len(data)}")
            offset += len(data)
        try:
            self.objects.put(PREFIX + name, b"".join(images))
        except OSError:
            self._paused_until = time.monotonic() + self.retry_s
            raise
        return refs

    def read(self, ref: str) -> bytes | None:
        parsed = parse_ref(ref)
        if parsed is None:
            return None
        name, start, n = parsed
        return self.objects.get_range(PREFIX + name, start, n)

    def prune(self, older_than_s: float) -> int:
        cutoff_ns = time.time_ns() - int(older_than_s * 1e9)
        removed = 0
        for o in self.objects.list(PREFIX):
            name = o.key[len(PREFIX):]
            if _NAME.match(name) and int(name[:19]) < cutoff_ns:
                self.objects.delete(o.key)
                removed += 1
        return removed
