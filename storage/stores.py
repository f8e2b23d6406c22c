"""The two image stores a process uses, opened from one URL (FSDI_BLOB_URL)."""

from __future__ import annotations

from pathlib import Path

from storage.blobs import BlobStore
from storage.objects import LocalObjects, open_objects
from storage.packs import PREFIX, ObjectPacks, PackStore, QueryImages


def open_stores(url: str | None, data_dir: Path, endpoint_url: str | None = None
                ) -> tuple[BlobStore, QueryImages]:
    """Support images (content-addressed, fsynced) and kept query images (packs) in the
    store `url` names; unset: `data_dir` on local disk. Kept query images get a client
    that gives up within a few seconds: keeping is best effort and the results writer
    must not wait on a slow store."""
    objects = open_objects(url, data_dir, endpoint_url)
    if isinstance(objects, LocalObjects):
        return BlobStore(objects), PackStore(objects.root / PREFIX.rstrip("/"))
    fast = open_objects(url, data_dir, endpoint_url, connect_timeout_s=1.0,
                        read_timeout_s=2.0, max_attempts=1)
    return BlobStore(objects), ObjectPacks(fast)
