"""The in-memory cache of what each group is decided with (models.inference.ServedGroup:
the classes' index and, where the group has good images, their patch memory).

Readers take an immutable `ServedGroup`; writers build a new one and swap the whole
mapping in one reference assignment, so a request never sees a half-updated class. This
module only reads rows, swaps and locks: every decision is models.inference's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
from sqlalchemy.orm import Session

from models.inference import (
    MAX_HELD_OUT,
    ClassEntry,
    EmbeddingLayout,
    GoodParts,
    GroupIndex,
    ServedGroup,
    make_entry,
    region_descriptors,
    region_entries,
)
from models.methods.protonet import DEFAULT_TEMPERATURE
from storage import repositories as repo
from storage.tables import DefectClass

__all__ = ["EmbeddingLayout", "PrototypeCache"]

# entries by group and class, good parts by group, region-fused defect entries by group
Read = tuple[dict[str, dict[int, ClassEntry]], dict[str, GoodParts], dict[str, list[ClassEntry]]]


class PrototypeCache:
    def __init__(self, model_version: str, layout: EmbeddingLayout,
                 temperature: float = DEFAULT_TEMPERATURE,
                 runtime: str = "onnxruntime", patch_version: str | None = None,
                 false_alarm_rate: float = 0.02, calibrate_scores: bool = True,
                 threshold_rule: str = "auto", memory_patches: int | None = None) -> None:
        self.model_version = model_version
        self.layout = layout
        self.temperature = temperature  # the fallback where a group cannot fit its own
        self.calibrate_scores = calibrate_scores
        self.runtime = runtime
        # None: this backbone serves no patch features, and no group has good parts
        self.patch_version = patch_version
        self.false_alarm_rate = false_alarm_rate
        self.threshold_rule = threshold_rule  # models.inference.THRESHOLD_RULES
        self.memory_patches = memory_patches  # the patch memory's cap (None: every patch)
        self._groups: dict[str, ServedGroup] = {}
        self._entries: dict[str, dict[int, ClassEntry]] = {}
        self._good: dict[str, GoodParts] = {}
        # per group: the good image ids its memory was built from, and the defect-region
        # descriptors of its defect images against that memory (by image id)
        self._regions: dict[str, tuple[tuple[int, ...], dict[int, np.ndarray]]] = {}
        self._lock = threading.Lock()
        self._published: dict[str, int] = {}  # per group: snapshots published so far
        # per group: the stored version (repo.group_version) its snapshot is known to hold,
        # where the whole group was read after reading that version
        self._versions: dict[str, int | None] = {}

    def snapshot(self, group: str) -> GroupIndex | None:
        """The group's class index (every class, good and defect)."""
        served = self._groups.get(group)
        return None if served is None else served.index

    def served(self, group: str) -> ServedGroup | None:
        return self._groups.get(group)

    def group_names(self) -> list[str]:
        """The groups served now (each has at least one class)."""
        return list(self._groups)

    def class_count(self) -> int:
        return sum(len(s.index.entries) for s in self._groups.values())

    def _read(self, s: Session, classes: dict[int, DefectClass], group: str | None) -> Read:
        """Entries, good parts and region-fused defect entries of these classes (one
        group, or all with None)."""
        by_class: dict[int, tuple[list[int], list[np.ndarray]]] = {}
        ids = None if group is None else list(classes)
        for emb in repo.embeddings_for(s, self.model_version, ids):
            cids, vecs = by_class.setdefault(emb.class_id, ([], []))
            cids.append(emb.image_id)
            vecs.append(emb.vector)
        entries: dict[str, dict[int, ClassEntry]] = {}
        for cid, (img_ids, vecs) in by_class.items():
            c = classes[cid]
            entries.setdefault(c.group_name, {})[cid] = make_entry(
                cid, c.name, c.group_name, img_ids, vecs, self.layout, c.kind)
        goods, fused = self._read_goods(s, classes, group, entries, by_class)
        return entries, goods, fused

    def _read_goods(self, s: Session, classes: dict[int, DefectClass], group: str | None,
                    entries: dict[str, dict[int, ClassEntry]],
                    by_class: dict[int, tuple[list[int], list[np.ndarray]]]
                    ) -> tuple[dict[str, GoodParts], dict[str, list[ClassEntry]]]:
        """The good-parts memory of every group among these classes that has good images
        (one group, or all with None), at each group's false-alarm rate, with its latest
        defect images to place the threshold while the good ones are few; and those
        groups' defect classes rebuilt on region-fused vectors, where they can be."""
        goods = [c.id for c in classes.values() if c.kind == "good"]
        if self.patch_version is None or not goods:
            return {}, {}
        rows: dict[str, list[int]] = {}
        for image_id, class_id in repo.patch_image_ids(s, self.patch_version, goods):
            rows.setdefault(classes[class_id].group_name, []).append(image_id)
        own = repo.anomaly_overrides(s, group)
        defects_of: dict[str, list[int]] = {}
        for c in classes.values():
            if c.kind != "good":
                defects_of.setdefault(c.group_name, []).append(c.id)
        built: dict[str, GoodParts] = {}
        fused: dict[str, list[ClassEntry]] = {}
        for g, good_list in rows.items():
            defects = defects_of.get(g, [])
            latest = repo.patches_for(s, self.patch_version, defects, latest=MAX_HELD_OUT)
            good_ids = tuple(good_list)
            o = own.get(g, repo.AnomalyOverrides())
            gp = built[g] = GoodParts.build(
                self._patch_source(s, good_ids), good_ids,
                o.false_alarm_rate or self.false_alarm_rate,
                np.stack([p.patches for p in latest]) if latest else None,
                o.threshold_rule or self.threshold_rule, self._good.get(g),
                self.memory_patches)
            vectors = {i: v for cid in defects for i, v in zip(*by_class.get(cid, ([], [])),
                                                                strict=True)}
            regions = self._regions_of(s, g, gp, good_ids, list(vectors))
            fused_g = region_entries(entries.get(g, {}).values(), vectors, regions, self.layout)
            if fused_g is not None:
                fused[g] = fused_g
        return built, fused

    def _patch_source(self, s: Session, image_ids: tuple[int, ...]
                      ) -> Callable[[np.ndarray], np.ndarray]:
        """Positions in `image_ids` -> those images' patch features, read when asked (a
        memory that only grows reads its new images and its held-out sample, never the
        whole group), each image at most once per build."""
        read: dict[int, np.ndarray] = {}

        def get(positions: np.ndarray) -> np.ndarray:
            wanted = [image_ids[int(i)] for i in positions]
            todo = [i for i in wanted if i not in read]
            for p in repo.patches_for_images(s, self.patch_version or "", todo):
                read[p.image_id] = p.patches
            return np.stack([read[i] for i in wanted])

        return get

    def _regions_of(self, s: Session, group: str, gp: GoodParts, good_ids: tuple[int, ...],
                    image_ids: list[int]) -> dict[int, np.ndarray]:
        """The defect-region descriptors of these images against the group's memory. A
        descriptor depends only on its image and the good images, so while those stay
        the same, only images new to the group are computed (a defect enrolment costs
        its own images, not the group's)."""
        with self._lock:
            seen_good, known = self._regions.get(group, ((), {}))
        if seen_good != good_ids:
            known = {}
        todo = [i for i in image_ids if i not in known]
        fresh = {}
        if todo and self.patch_version is not None:
            fresh = region_descriptors(gp, {p.image_id: p.patches for p in
                                            repo.patches_for_images(s, self.patch_version, todo)})
        regions = {i: known[i] for i in image_ids if i in known} | fresh
        with self._lock:
            self._regions[group] = (good_ids, regions)
        return regions

    def load_all(self, s: Session) -> None:
        """Build every group from the database (start-up, or after re-embedding)."""
        classes = {c.id: c for c in repo.list_classes(s)}
        entries, good, fused = self._read(s, classes, None)
        with self._lock:
            self._entries = entries
            self._good = good
            self._groups = {g: self._build(g, e, good.get(g), fused.get(g))
                            for g, e in entries.items()}

    def holds(self, group: str, version: int) -> bool:
        """Whether the group's snapshot already holds its stored `version`: it was read
        whole, after that version was committed (a change this replica made and read
        back itself), so a replica sync need not read it again."""
        return self._versions.get(group) == version

    def refresh_group(self, s: Session, group: str) -> bool:
        """Re-read a whole group (another replica changed it). Returns False, publishing
        nothing, when a local change to the group was published while this read ran:
        the read may predate it (a just-enrolled class would vanish until the next
        sync), so the caller reads again later."""
        return self._read_and_publish(s, group)

    def refresh_class(self, s: Session, class_id: int, group: str) -> None:
        """Re-read one class from the database and swap in its group's new snapshot. In a
        group with good parts (or one this class makes or made so) the whole group is
        re-read: its memory, threshold and the defect classes' regions depend on all of
        its images."""
        cls = repo.get_class(s, class_id)
        was_good = any(e.kind == "good" for e in self._entries.get(group, {}).values()
                       if e.class_id == class_id)
        if group in self._good or was_good or (cls is not None and cls.kind == "good"):
            self.refresh_good(s, group)
            return
        rows = repo.embeddings_for(s, self.model_version, [class_id]) if cls else []
        with self._lock:
            group_entries = dict(self._entries.get(group, {}))
            if rows and cls is not None:
                group_entries[class_id] = make_entry(
                    class_id, cls.name, group, [r.image_id for r in rows],
                    [r.vector for r in rows], self.layout, cls.kind,
                )
            else:
                group_entries.pop(class_id, None)
            self._publish(group, group_entries, None, None)

    def refresh_good(self, s: Session, group: str) -> None:
        """Re-read the whole group with its good parts (a class or the group's
        false-alarm rate changed). A read that another publication of the group overtook
        (a slow rebuild, a quick enrolment meanwhile) is read again, never published
        over the newer state."""
        while not self._read_and_publish(s, group):
            s.rollback()  # end the read: the next one sees what was committed meanwhile

    def _read_and_publish(self, s: Session, group: str) -> bool:
        """Read the group and publish it, unless another publication of it came while the
        read ran (then publish nothing and return False)."""
        seen = self._published.get(group, 0)
        # the version first: the rows read after it hold at least that version's changes
        version = repo.group_version(s, group)
        entries, good, fused = self._read_group(s, group)
        with self._lock:
            if self._published.get(group, 0) != seen:
                return False
            self._publish(group, entries.get(group, {}), good.get(group), fused.get(group),
                          version)
        return True

    def _read_group(self, s: Session, group: str) -> Read:
        return self._read(s, {c.id: c for c in repo.list_classes(s, group)}, group)

    def _publish(self, group: str, group_entries: dict[int, ClassEntry],
                 good: GoodParts | None, fused: list[ClassEntry] | None,
                 version: int | None = None) -> None:
        """Swap in the group's new snapshot; `version`: the stored version it was read
        whole after (None: a partial update, which holds no version for certain)."""
        entries = dict(self._entries)
        goods = dict(self._good)
        groups = dict(self._groups)
        goods.pop(group, None)
        if group_entries:
            entries[group] = group_entries
            if good is not None:
                goods[group] = good
            groups[group] = self._build(group, group_entries, good, fused)
        else:
            entries.pop(group, None)
            groups.pop(group, None)
            self._regions.pop(group, None)
        self._entries = entries
        self._good = goods
        self._groups = groups  # the atomic swap readers see
        self._published[group] = self._published.get(group, 0) + 1
        self._versions[group] = version

    def _build(self, group: str, entries: dict[int, ClassEntry], good: GoodParts | None,
               fused: list[ClassEntry] | None) -> ServedGroup:
        index = GroupIndex.build(group, (entries[k] for k in sorted(entries)),
                                 self.layout.metric_dim, self.temperature, self.runtime,
                                 self.layout.rank_by, self.calibrate_scores)
        return ServedGroup.build(index, good, fused)
