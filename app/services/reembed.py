"""Re-embedding: recompute every support image's embedding for the configured backbone,
and every good image's patch features (models.patchcore) for its patch version.

Batched, resumable (every batch commits, and a later run picks up only what is still
missing), with a progress bar. Until it has run, the service refuses to start on a
database whose embeddings belong to another backbone version.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from app.settings import Settings
from models.backbones import Backbone
from models.embedder import Embedder, make_embedder, unpack
from models.preprocess import load_for_backbone
from models.zoo import create_backbone
from storage import repositories as repo
from storage.blobs import BlobStore
from storage.migrate import open_migrated


def reembed(settings: Settings, batch: int = 32, prune: bool = False,
            max_batches: int | None = None, progress: bool = True) -> tuple[int, int]:
    """Embed every image lacking an embedding of the current version, then compute the
    patch features every good image lacks. Returns (images done now, still missing)."""
    engine, sessions = open_migrated(settings.resolved_database_url)
    bb = create_backbone(settings.backbone, settings.precision)
    embedder = make_embedder(bb, settings.runtime, settings.resolved_model_cache,
                             settings.threads)
    blobs = BlobStore(settings.data_dir / "blobs")
    with sessions() as s:
        total = repo.count_images_missing_version(s, bb.version)
    done = 0
    with tqdm(total=total, desc=f"re-embed for {bb.version}", unit="image",
              disable=not progress) as bar:
        for _ in range(max_batches if max_batches is not None else 10**12):
            with sessions() as s:
                todo = [(i.id, i.sha256) for i in
                        repo.images_missing_version(s, bb.version, batch)]
            if not todo:
                break
            x = np.stack([load_for_backbone(blobs.get(sha), bb.preprocess, 10**9)
                          for _, sha in todo])
            vecs = embedder.embed(x)
            with sessions.begin() as s:
                for (image_id, _), v in zip(todo, vecs, strict=True):
                    s.add(repo.new_embedding(v, bb.name, bb.weights_sha256, bb.version,
                                             image_id=image_id))
            done += len(todo)
            bar.update(len(todo))
    if bb.patch_layers:
        done += _patches(sessions, bb, embedder, blobs, batch, max_batches, progress)
    with sessions.begin() as s:
        left = repo.count_images_missing_version(s, bb.version)
        if bb.patch_layers:
            left += repo.count_good_images_missing_patches(s, bb.patch_version)
        if prune and left == 0:
            repo.drop_other_versions(s, bb.version)
            if bb.patch_layers:
                repo.drop_other_patch_versions(s, bb.patch_version)
    engine.dispose()
    return done, left


def _patches(sessions: sessionmaker[Session], bb: Backbone, embedder: Embedder,
             blobs: BlobStore, batch: int, max_batches: int | None, progress: bool) -> int:
    pv = bb.patch_version
    with sessions() as s:
        total = repo.count_good_images_missing_patches(s, pv)
    done = 0
    with tqdm(total=total, desc="patch features of good images", unit="image",
              disable=not progress or total == 0) as bar:
        for _ in range(max_batches if max_batches is not None else 10**12):
            with sessions() as s:
                todo = [(i.id, i.sha256) for i in
                        repo.good_images_missing_patches(s, pv, batch)]
            if not todo:
                break
            x = np.stack([load_for_backbone(blobs.get(sha), bb.preprocess, 10**9)
                          for _, sha in todo])
            _, patches = unpack(embedder.embed_packed(x), bb)
            with sessions.begin() as s:
                for (image_id, _), p in zip(todo, patches, strict=True):
                    s.add(repo.new_patches(p, pv, image_id=image_id))
            done += len(todo)
            bar.update(len(todo))
    return done
