"""Re-embedding: recompute every support image's embedding for the configured backbone.

Batched, resumable (every batch commits, and a later run picks up only what is still
missing), with a progress bar. Until it has run, the service refuses to start on a
database whose embeddings belong to another backbone version.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from app.settings import Settings
from models.embedder import make_embedder
from models.preprocess import load_for_backbone
from models.zoo import create_backbone
from storage import repositories as repo
from storage.blobs import BlobStore
from storage.migrate import open_migrated


def reembed(settings: Settings, batch: int = 32, prune: bool = False,
            max_batches: int | None = None, progress: bool = True) -> tuple[int, int]:
    """Embed every image lacking an embedding of the current version.
    Returns (embedded now, still missing)."""
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
    with sessions.begin() as s:
        left = repo.count_images_missing_version(s, bb.version)
        if prune and left == 0:
            repo.drop_other_versions(s, bb.version)
    engine.dispose()
    return done, left
