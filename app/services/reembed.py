"""Re-embedding: recompute every support image's embedding for the configured backbone,
and its patch features (models.patchcore) for the patch version, from one forward pass
where both are missing.

Batched, resumable (every batch commits, and a later run picks up only what is still
missing), with a progress bar. Until it has run, the service refuses to start on a
database whose embeddings belong to another backbone version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from models.backbones import Backbone
from models.embedder import make_embedder, unpack
from models.preprocess import load_for_backbone
from models.progress import progress as progress_bar
from models.zoo import create_backbone
from storage import repositories as repo
from storage.blobs import BlobStore
from storage.migrate import open_migrated
from storage.stores import open_stores
from storage.tables import SupportImage

Row = Any  # a storage row built for one image (an Embedding or a PatchFeatures)


def reembed(settings: Settings, batch: int = 32, prune: bool = False,
            max_batches: int | None = None, progress: bool = True) -> tuple[int, int]:
    """Embed every image lacking an embedding of the current version, then compute the
    patch features any image still lacks. Returns (images done now, images still lacking
    either)."""
    engine, sessions = open_migrated(settings.resolved_database_url)
    bb = create_backbone(settings.backbone, settings.precision)
    embedder = make_embedder(bb, settings.runtime, settings.resolved_model_cache,
                             settings.threads)
    blobs, _ = open_stores(settings.blob_url, settings.data_dir, settings.s3_endpoint_url)

    def rows(x: np.ndarray, ids: list[int], embeddings: bool = True) -> list[Row]:
        """From one forward pass: the embeddings (unless asked not to) and the patch
        features these images still lack."""
        if not bb.patch_layers:
            vectors, patches = embedder.embed(x), None
        else:
            vectors, patches = unpack(embedder.embed_packed(x), bb)
            with sessions() as s:
                have = repo.have_patches(s, bb.patch_version, ids)
        out: list[Row] = [
            repo.new_embedding(v, bb.name, bb.weights_sha256, bb.version, image_id=i)
            for i, v in zip(ids, vectors, strict=True)] if embeddings else []
        if patches is not None:
            out += [repo.new_patches(p, bb.patch_version, image_id=i)
                    for i, p in zip(ids, patches, strict=True) if i not in have]
        return out

    fill = partial(_backfill, sessions, blobs, bb, batch, max_batches, progress)
    done = fill(f"re-embed for {bb.version}",
                lambda s: repo.count_images_missing_version(s, bb.version),
                lambda s, n: repo.images_missing_version(s, bb.version, n), rows)
    if bb.patch_layers:
        pv = bb.patch_version
        done += fill("patch features",
                     lambda s: repo.count_images_missing_patches(s, pv),
                     lambda s, n: repo.images_missing_patches(s, pv, n),
                     partial(rows, embeddings=False))
    with sessions.begin() as s:
        left = repo.count_images_incomplete(
            s, bb.version, bb.patch_version if bb.patch_layers else None)
        if prune and left == 0:
            repo.drop_other_versions(s, bb.version)
            if bb.patch_layers:
                repo.drop_other_patch_versions(s, bb.patch_version)
    engine.dispose()
    return done, left


def _backfill(sessions: sessionmaker[Session], blobs: BlobStore, bb: Backbone, batch: int,
              max_batches: int | None, progress: bool, desc: str,
              count: Callable[[Session], int],
              missing: Callable[[Session, int], Sequence[SupportImage]],
              rows: Callable[[np.ndarray, list[int]], list[Row]]) -> int:
    """Batch by batch, each committed: the images `missing` still lists, decoded from their
    blobs, turned into `rows` and stored. Returns how many images were done."""
    with sessions() as s:
        total = count(s)
    done = 0
    with progress_bar(total=total, desc=desc, unit="image",
                      disable=not progress or total == 0) as bar:
        for _ in range(max_batches if max_batches is not None else 10**12):
            with sessions() as s:
                todo = [(i.id, i.sha256) for i in missing(s, batch)]
            if not todo:
                break
            x = np.stack([load_for_backbone(_stored(blobs, sha), bb.preprocess, 10**9)
                          for _, sha in todo])
            built = rows(x, [i for i, _ in todo])
            with sessions.begin() as s:
                s.add_all(built)
            done += len(todo)
            bar.update(len(todo))
    return done


def _stored(blobs: BlobStore, digest: str) -> bytes:
    data = blobs.get(digest)
    if data is None:
        raise FileNotFoundError(f"support image {digest} is missing from "
                                f"{blobs.objects.describe()}")
    return data
