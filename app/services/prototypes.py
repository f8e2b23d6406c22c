"""The in-memory cache of group indexes (models.inference.GroupIndex).

Readers take an immutable `GroupIndex`; writers build a new one and swap the whole
mapping in one reference assignment, so a request never sees a half-updated class. This
module only reads rows, swaps and locks: every decision is models.inference's.
"""

from __future__ import annotations

import threading

import numpy as np
from sqlalchemy.orm import Session

from models.inference import ClassEntry, EmbeddingLayout, GroupIndex, make_entry
from storage import repositories as repo

__all__ = ["EmbeddingLayout", "PrototypeCache"]


class PrototypeCache:
    def __init__(self, model_version: str, layout: EmbeddingLayout, temperature: float = 0.05,
                 runtime: str = "onnxruntime") -> None:
        self.model_version = model_version
        self.layout = layout
        self.temperature = temperature
        self.runtime = runtime
        self._groups: dict[str, GroupIndex] = {}
        self._entries: dict[str, dict[int, ClassEntry]] = {}
        self._lock = threading.Lock()
        self._published: dict[str, int] = {}  # per group: snapshots published so far

    def snapshot(self, group: str) -> GroupIndex | None:
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

    def _build(self, group: str, entries: dict[int, ClassEntry]) -> GroupIndex:
        return GroupIndex.build(group, (entries[k] for k in sorted(entries)),
                                self.layout.metric_dim, self.temperature, self.runtime)
