"""The in-memory prototype cache.

Readers take an immutable `GroupSnapshot`; writers build a new snapshot and swap the
whole mapping in one reference assignment, so a request never sees a half-updated class.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from models.calibration import CalibrationConfig, class_threshold
from storage import repositories as repo


@dataclass(frozen=True)
class ClassEntry:
    class_id: int
    name: str
    group: str
    support: np.ndarray  # (n, D) metric embeddings (unit vectors): ranking and methods
    image_ids: tuple[int, ...]
    prototype: np.ndarray  # (D,)
    threshold: float
    # The optional appearance part (global ImageNet look), used only to reject images
    # unlike anything enrolled; None for single-part backbones.
    app_prototype: np.ndarray | None = None
    app_threshold: float = float("inf")


@dataclass(frozen=True)
class GroupSnapshot:
    group: str
    entries: tuple[ClassEntry, ...]
    prototypes: np.ndarray  # (C, D)
    thresholds: np.ndarray  # (C,)
    proto_sq: np.ndarray  # (C,) squared norms, so a request reads the prototypes once
    app_prototypes: np.ndarray | None = None  # (C, Da)
    app_thresholds: np.ndarray | None = None  # (C,)
    # Fitted methods for this exact support set, filled lazily (idempotent).
    fitted: dict[str, Any] = field(default_factory=dict, compare=False)

    def support_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """All support embeddings (N, D) and their class indices (N,)."""
        sup = np.concatenate([e.support for e in self.entries], axis=0)
        lab = np.concatenate(
            [np.full(len(e.image_ids), i, dtype=np.int64) for i, e in enumerate(self.entries)]
        )
        return sup, lab


@dataclass(frozen=True)
class EmbeddingLayout:
    """How a stored vector splits: the first `metric_dim` values rank the classes; the
    rest, if any, is an appearance embedding used only for rejection."""

    metric_dim: int
    metric_calib: CalibrationConfig
    app_calib: CalibrationConfig | None = None


def make_entry(
    class_id: int, name: str, group: str, image_ids: list[int], vectors: list[np.ndarray],
    layout: EmbeddingLayout,
) -> ClassEntry:
    full = np.stack(vectors).astype(np.float32)
    support = np.ascontiguousarray(full[:, :layout.metric_dim])
    support.setflags(write=False)
    proto = support.mean(axis=0)
    proto.setflags(write=False)
    entry = ClassEntry(class_id, name, group, support, tuple(image_ids), proto,
                       class_threshold(support, layout.metric_calib))
    if layout.app_calib is None:
        return entry
    app = full[:, layout.metric_dim:]
    return replace(entry, app_prototype=app.mean(axis=0),
                   app_threshold=class_threshold(app, layout.app_calib))


class PrototypeCache:
    def __init__(self, model_version: str, layout: EmbeddingLayout) -> None:
        self.model_version = model_version
        self.layout = layout
        self._groups: dict[str, GroupSnapshot] = {}
        self._entries: dict[str, dict[int, ClassEntry]] = {}
        self._lock = threading.Lock()
        self._published: dict[str, int] = {}  # per group: snapshots published so far

    def snapshot(self, group: str) -> GroupSnapshot | None:
        return self._groups.get(group)

    def class_count(self) -> int:
        return sum(len(s.entries) for s in self._groups.values())

    def load_all(self, s: Session) -> None:
        """Build every group from the database (start-up, or after re-embedding)."""
        classes = {c.id: c for c in repo.list_classes(s)}
        by_class: dict[int, tuple[list[int], list[np.ndarray]]] = {}
        for emb in repo.embeddings_for(s, self.model_version):
            ids, vecs = by_class.setdefault(emb.class_id, ([], []))
            ids.append(emb.image_id)
            vecs.append(emb.vector)
        entries: dict[str, dict[int, ClassEntry]] = {}
        for cid, (ids, vecs) in by_class.items():
            c = classes[cid]
            entries.setdefault(c.group_name, {})[cid] = make_entry(
                cid, c.name, c.group_name, ids, vecs, self.layout
            )
        with self._lock:
            self._entries = entries
            self._groups = {g: self._build(g, e) for g, e in entries.items()}

    def refresh_group(self, s: Session, group: str) -> bool:
        """Re-read a whole group (another replica changed it). Returns False, publishing
        nothing, when a local change to the group was published while this read ran:
        the read may predate it (a just-enrolled class would vanish until the next
        sync), so the caller reads again later."""
        seen = self._published.get(group, 0)
        classes = {c.id: c for c in repo.list_classes(s, group)}
        by_class: dict[int, tuple[list[int], list[np.ndarray]]] = {}
        for emb in repo.embeddings_for(s, self.model_version, list(classes)):
            ids, vecs = by_class.setdefault(emb.class_id, ([], []))
            ids.append(emb.image_id)
            vecs.append(emb.vector)
        fresh = {cid: make_entry(cid, classes[cid].name, group, ids, vecs, self.layout)
                 for cid, (ids, vecs) in by_class.items()}
        with self._lock:
            if self._published.get(group, 0) != seen:
                return False
            self._publish(group, fresh)
        return True

    def refresh_class(self, s: Session, class_id: int, group: str) -> None:
        """Re-read one class from the database and swap in its group's new snapshot."""
        cls = repo.get_class(s, class_id)
        rows = repo.embeddings_for(s, self.model_version, [class_id]) if cls else []
        with self._lock:
            group_entries = dict(self._entries.get(group, {}))
            if rows and cls is not None:
                group_entries[class_id] = make_entry(
                    class_id, cls.name, group, [r.image_id for r in rows],
                    [r.vector for r in rows], self.layout,
                )
            else:
                group_entries.pop(class_id, None)
            self._publish(group, group_entries)

    def _publish(self, group: str, group_entries: dict[int, ClassEntry]) -> None:
        entries = dict(self._entries)
        groups = dict(self._groups)
        if group_entries:
            entries[group] = group_entries
            groups[group] = self._build(group, group_entries)
        else:
            entries.pop(group, None)
            groups.pop(group, None)
        self._entries = entries
        self._groups = groups  # the atomic swap readers see
        self._published[group] = self._published.get(group, 0) + 1

    def _build(self, group: str, entries: dict[int, ClassEntry]) -> GroupSnapshot:
        ordered = tuple(entries[k] for k in sorted(entries))
        protos = np.stack([e.prototype for e in ordered]).astype(np.float32)
        thresholds = np.asarray([e.threshold for e in ordered], dtype=np.float32)
        protos.setflags(write=False)
        thresholds.setflags(write=False)
        sq = np.einsum("cd,cd->c", protos, protos)
        sq.setflags(write=False)
        snap = GroupSnapshot(group, ordered, protos, thresholds, sq)
        if self.layout.app_calib is None:
            return snap
        app = np.stack([e.app_prototype for e in ordered]).astype(np.float32)  # type: ignore[misc]
        return replace(snap, app_prototypes=app,
                       app_thresholds=np.asarray([e.app_threshold for e in ordered], np.float32))
