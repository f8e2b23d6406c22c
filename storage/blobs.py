"""Content-addressed image store: one file per distinct sha256, written atomically."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """Files live at `root/ab/cd/<sha256>`; the same bytes are stored once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("not a sha256 hex digest")
        return self.root / digest[:2] / digest[2:4] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(self, data: bytes, digest: str | None = None) -> tuple[str, bool]:
        """Store `data`; return (sha256, created) where created is False for a duplicate.
        `digest`, when the caller already hashed `data`, saves hashing it again.

        Temp file + fsync + rename + directory fsync, so a crash leaves either the
        whole file or nothing under the final name.
        """
        digest = digest or sha256_hex(data)
        target = self.path(digest)
        if target.is_file():
            return digest, False
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return digest, True

    def get(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def all_digests(self) -> set[str]:
        return {p.name for p in self.root.glob("??/??/*") if not p.name.startswith(".tmp-")}

    def sweep(self, referenced: Callable[[set[str]], set[str]], min_age_s: float = 0.0
              ) -> int:
        """Remove temp leftovers and blobs no row refers to (crash orphans) that are older
        than `min_age_s`: a replica sharing this store may be mid-enrolment, its blob
        written and its row not yet committed. `referenced(digests)` says which of the
        old blobs' digests rows still refer to."""
        cutoff = time.time() - min_age_s
        removed = 0

        def old(p: Path) -> bool:
            try:
                return p.stat().st_mtime <= cutoff
            except FileNotFoundError:
                return False

        for p in self.root.glob("??/??/.tmp-*"):
            if old(p):
                p.unlink(missing_ok=True)
                removed += 1
        candidates = {d for d in self.all_digests() if old(self.path(d))}
        if candidates:
            for digest in candidates - referenced(candidates):
                self.delete(digest)
                removed += 1
        return removed
