"""Content-addressed image store: one object per distinct sha256, on local disk or in an
S3-compatible object store (storage/objects.py)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from storage.objects import LocalObjects, ObjectStore, StoreUnavailable

PREFIX = "blobs/"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_key(digest: str) -> str:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("not a sha256 hex digest")
    return f"{PREFIX}{digest[:2]}/{digest[2:4]}/{digest}"


class NotAllStored(StoreUnavailable):
    """`put_many` stored some blobs, not all; `created` are those it wrote new."""

    def __init__(self, message: str, created: list[str]) -> None:
        super().__init__(message)
        self.created = created


class BlobStore:
    """Objects live at `blobs/ab/cd/<sha256>`; the same bytes are stored once. Every
    method may raise storage.objects.StoreUnavailable."""

    def __init__(self, objects: ObjectStore | Path) -> None:
        # A path: the blobs directory itself (its parent is the store's root).
        if isinstance(objects, Path):
            if objects.name != PREFIX.rstrip("/"):
                raise ValueError(f"a local blob store's directory is named "
                                 f"{PREFIX.rstrip('/')!r}")
            objects = LocalObjects(objects.parent)
        self.objects = objects

    def exists(self, digest: str) -> bool:
        return self.objects.exists(blob_key(digest))

    def put(self, data: bytes, digest: str | None = None) -> tuple[str, bool]:
        """Store `data`; return (sha256, created) where created is False for a duplicate.
        `digest`, when the caller already hashed `data`, saves hashing it again. A crash
        leaves the whole object or nothing under its key."""
        digest = digest or sha256_hex(data)
        key = blob_key(digest)
        if self.objects.exists(key):
            return digest, False
        self.objects.put(key, data)
        return digest, True

    def put_many(self, items: list[tuple[bytes, str]], workers: int = 8) -> list[str]:
        """Store each (data, sha256) at once (an object store answers each PUT in a
        round trip); return the digests written new. When any fails, raises
        NotAllStored, naming those written new, once every write has ended."""
        if not items:
            return []
        with ThreadPoolExecutor(min(workers, len(items))) as pool:
            futures = [pool.submit(self.put, data, digest) for data, digest in items]
        created: list[str] = []
        failed: BaseException | None = None
        for f in futures:
            try:
                digest, new = f.result()
            except Exception as exc:
                failed = failed or exc
                continue
            if new:
                created.append(digest)
        if failed is not None:
            raise NotAllStored(str(failed), created) from failed
        return created

    def get(self, digest: str) -> bytes | None:
        """The bytes, or None when there is no such blob."""
        return self.objects.get(blob_key(digest))

    def delete(self, digest: str) -> None:
        self.objects.delete(blob_key(digest))

    def listing(self) -> Iterator[tuple[str, float]]:
        """(sha256, last written) of every blob."""
        for o in self.objects.list(PREFIX):
            name = o.key.rsplit("/", 1)[-1]
            if len(name) == 64 and _hex(name) and o.key == blob_key(name):
                yield name, o.mtime

    def all_digests(self) -> set[str]:
        return {d for d, _ in self.listing()}

    def sweep(self, referenced: Callable[[set[str]], set[str]], min_age_s: float = 0.0
              ) -> int:
        """Remove leftovers of interrupted writes and blobs no row refers to (crash
        orphans) that are older than `min_age_s`: another replica sharing this store may
        be mid-enrolment, its blob written and its row not yet committed. Replicas may
        sweep at once: a delete of what another already deleted is no error.
        `referenced(digests)` says which of the old blobs' digests rows still refer to."""
        cutoff = time.time() - min_age_s
        removed = self.objects.remove_temp(cutoff)
        candidates = {d for d, mtime in self.listing() if mtime <= cutoff}
        if candidates:
            for digest in candidates - referenced(candidates):
                self.delete(digest)
                removed += 1
        return removed


def _hex(name: str) -> bool:
    return all(c in "0123456789abcdef" for c in name)
