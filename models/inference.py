"""The served decision, in one place: a group's index of enrolled classes and `decide`.

`/classify` (app.services.classification) and `fsdi evaluate` (models.calibration,
models.evaluate) both build a `GroupIndex` and call `decide`, so every reported number is
what the service answers.

A stored vector is `[metric (metric_dim) | appearance (rest)]` (`EmbeddingLayout`): the
metric part ranks the classes through the chosen few-shot method; rejection is always
judged on the winning class's prototype distance against its calibrated threshold, and,
where the layout has an appearance part, on the appearance distance too.
Shapes: embeddings (Q, D_full) -> Q decisions; support (n, D_metric) per class.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from models.calibration import CalibrationConfig, class_threshold, group_temperature, probes
from models.methods import FewShotMethod, create_method
from models.methods.protonet import (
    DEFAULT_TEMPERATURE,
    ProtoNet,
    euclidean,
    score_from_distances,
)
from models.patchcore.memory import (
    MAX_HELD_OUT,
    MEMORY_PATCHES,
    PatchMemory,
    balanced_threshold,
    calibrate_threshold,
    held_out,
)

EVIDENCE_PER_CLASS = 3
# positions (k,) in a group's good-image sequence -> their patch features (k, h, w, C)
PatchSource = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EmbeddingLayout:
    """How a stored vector splits: the first `metric_dim` values rank the classes; the
    rest, if any, is an appearance embedding used only for rejection."""

    metric_dim: int
    metric_calib: CalibrationConfig
    app_calib: CalibrationConfig | None = None
    # What ProtoNet (the default method) ranks classes by: the "metric" part (the
    # meta-trained head) or the "appearance" part (the frozen ImageNet global pool).
    # The other methods always take the metric part their weights were trained on.
    rank_by: str = "metric"


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
    kind: str = "defect"  # "good": images of parts that pass inspection
    # A few appearance support vectors (float16) and their honest held-out squared
    # distances to this class: what the group's score temperature is fitted on when
    # ProtoNet ranks by appearance (models.calibration.probes; the metric part's come
    # from `support`). None without an appearance part; empty for a 1-shot class.
    app_probes: tuple[np.ndarray, np.ndarray] | None = None


def make_entry(class_id: int, name: str, group: str, image_ids: Sequence[int],
               vectors: Sequence[np.ndarray] | np.ndarray, layout: EmbeddingLayout,
               kind: str = "defect") -> ClassEntry:
    """A class from its stored vectors: prototype and threshold per embedding part."""
    full = np.stack(list(vectors)).astype(np.float32)
    support = np.ascontiguousarray(full[:, :layout.metric_dim])
    support.setflags(write=False)
    proto = support.mean(axis=0)
    proto.setflags(write=False)
    entry = ClassEntry(class_id, name, group, support, tuple(image_ids), proto,
                       class_threshold(support, layout.metric_calib), kind=kind)
    if layout.app_calib is None:
        return entry
    app = full[:, layout.metric_dim:]
    return replace(entry, app_prototype=app.mean(axis=0),
                   app_threshold=class_threshold(app, layout.app_calib),
                   app_probes=probes(app))


@dataclass(frozen=True)
class Candidate:
    """One of a query's nearest classes. `index` points into GroupIndex.entries;
    `evidence` (with evidence=True) is the class's nearest support images."""

    index: int
    score: float
    distance: float  # to the class prototype (metric part)
    threshold: float
    evidence: tuple[tuple[int, float], ...] | None = None  # (image_id, distance)


@dataclass(frozen=True)
class Decision:
    """A query's answer: `top` best first (never empty); `unknown` when the winner is
    rejected, then there is no label, only the candidates."""

    top: tuple[Candidate, ...]
    unknown: bool

    @property
    def best(self) -> Candidate:
        return self.top[0]


@dataclass(frozen=True)
class GroupIndex:
    """A group's enrolled classes, immutable: prototypes, thresholds, the support set, and
    the few-shot methods fitted on it (lazily, once per support-set version)."""

    group: str
    entries: tuple[ClassEntry, ...]
    metric_dim: int
    prototypes: np.ndarray  # (C, D)
    thresholds: np.ndarray  # (C,)
    proto_sq: np.ndarray  # (C,) squared norms, so a request reads the prototypes once
    app_prototypes: np.ndarray | None = None  # (C, Da)
    app_thresholds: np.ndarray | None = None  # (C,)
    temperature: float = DEFAULT_TEMPERATURE
    runtime: str = "onnxruntime"
    rank_by: str = "metric"  # EmbeddingLayout.rank_by
    app_sq: np.ndarray | None = None  # (C,) squared norms of app_prototypes
    # What `build` was asked for: the fallback temperature and whether to fit the group's
    # own (`temperature` above is the one in use); sub-indexes are built the same way.
    fallback_temperature: float = DEFAULT_TEMPERATURE
    calibrate: bool = True
    calibrated_on: int = 0  # held-out support images `temperature` was fitted on (0: none)
    fitted: dict[str, FewShotMethod] = field(default_factory=dict, compare=False)
    _fit_lock: threading.Lock = field(default_factory=threading.Lock, compare=False)

    @classmethod
    def build(cls, group: str, entries: Iterable[ClassEntry], metric_dim: int,
              temperature: float = DEFAULT_TEMPERATURE, runtime: str = "onnxruntime",
              rank_by: str = "metric", calibrate: bool = True, prior: bool = True
              ) -> GroupIndex:
        """`temperature` is ProtoNet's score temperature; with `calibrate` it is only the
        fallback, and the group's own is fitted on its classes' held-out probes against a
        scale-free prior (models.calibration.group_temperature; a group of 1-shot classes
        takes the prior's centre, a group of one class keeps the fallback; `prior` False
        fits by maximum likelihood alone, for comparison)."""
        ordered = tuple(entries)
        if not ordered:
            raise ValueError("a group index needs at least one class")
        protos = np.stack([e.prototype for e in ordered]).astype(np.float32)
        thresholds = np.asarray([e.threshold for e in ordered], dtype=np.float32)
        sq = np.einsum("cd,cd->c", protos, protos)
        app = app_thr = app_sq = None
        if ordered[0].app_prototype is not None:
            app = np.stack([e.app_prototype for e in ordered]).astype(np.float32)  # type: ignore[misc]
            app_thr = np.asarray([e.app_threshold for e in ordered], np.float32)
            app_sq = np.einsum("cd,cd->c", app, app)
        for a in (protos, thresholds, sq, app, app_thr, app_sq):
            if a is not None:
                a.setflags(write=False)
        fitted, held_out = temperature, 0
        if calibrate:
            ranked = app if rank_by == "appearance" and app is not None else protos
            fitted, held_out = group_temperature(
                [e.app_probes if ranked is app and e.app_probes is not None
                 else probes(e.support) for e in ordered], ranked, temperature,
                prior=prior)
        return cls(group, ordered, metric_dim, protos, thresholds, sq, app, app_thr,
                   fitted, runtime, rank_by, app_sq, temperature, calibrate, held_out)

    def support_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """All support embeddings (N, D) and their class indices (N,)."""
        sup = np.concatenate([e.support for e in self.entries], axis=0)
        lab = np.concatenate([np.full(len(e.image_ids), i, dtype=np.int64)
                              for i, e in enumerate(self.entries)])
        return sup, lab

    def method(self, name: str) -> FewShotMethod:
        """The registered method `name`, fitted on this support set once and reused (a
        request never adapts). ProtoNet takes the prototypes already here."""
        m = self.fitted.get(name)
        if m is not None:
            return m
        with self._fit_lock:
            m = self.fitted.get(name)
            if m is None:
                m = create_method(name, **({"temperature": self.temperature}
                                           if name == ProtoNet.name else {}))
                if isinstance(m, ProtoNet):
                    m.use_prototypes(self.prototypes, self.proto_sq)
                else:
                    m.fit(*self.support_matrix())
                m.prepare(self.runtime)
                self.fitted[name] = m
        return m

    def decide(self, embeddings: np.ndarray, top_k: int, method: str = ProtoNet.name,
               threshold: float | None = None, evidence: bool = False) -> list[Decision]:
        """The served answer for each query vector (Q, D_full): the method ranks the
        classes, on the metric part, or for ProtoNet with `rank_by="appearance"` on the
        appearance part. The winner is rejected (unknown) when its distance in the
        ranking part exceeds its threshold there (or `threshold`, which overrides every
        class's), or, with no override, when its distance in the other part (if any)
        exceeds its threshold there."""
        q, scores, dist, thresholds, other = self._rank(embeddings, method)
        k = min(top_k, len(self.entries))
        decisions = []
        for i in range(q.shape[0]):
            top = tuple(Candidate(
                index=int(c), score=float(scores[i, c]), distance=float(dist[i, c]),
                threshold=float(threshold) if threshold is not None else float(thresholds[c]),
                evidence=self._evidence(int(c), q[i]) if evidence else None)
                for c in top_indices(scores[i], k))
            best = top[0]
            unknown = best.distance > best.threshold
            if not unknown and threshold is None and other is not None:
                # Unlike the winner in the other part: reject, whatever the ranking says.
                # Only the winner's distance is needed (10,000 classes cost no more).
                x, protos, thr = other
                unknown = float(np.linalg.norm(x[i] - protos[best.index])) \
                    > float(thr[best.index])
            decisions.append(Decision(top, unknown))
        return decisions

    def posteriors(self, embeddings: np.ndarray) -> np.ndarray:
        """(Q, D_full) -> (Q, N): each query's probability of each class, as /classify
        scores them with the default method (the entries' order)."""
        scores = self._rank(embeddings, ProtoNet.name)[1]
        return scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-12)

    def _rank(self, embeddings: np.ndarray, method: str) -> tuple[
            np.ndarray, np.ndarray, np.ndarray, np.ndarray,
            tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
        """(metric part, scores, distances, thresholds in the ranking part, the other
        part's (queries, prototypes, thresholds) where there is one)."""
        q = np.ascontiguousarray(embeddings[:, :self.metric_dim], dtype=np.float32)
        a = embeddings[:, self.metric_dim:]
        app_p, app_t = self.app_prototypes, self.app_thresholds
        other: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if method == ProtoNet.name and self.rank_by == "appearance" \
                and app_p is not None and app_t is not None:
            dist = euclidean(np.ascontiguousarray(a, dtype=np.float32), app_p, self.app_sq)
            scores, thresholds = score_from_distances(dist, self.temperature), app_t
            other = (q, self.prototypes, self.thresholds)
        else:
            out = self.method(method).predict(q)
            scores, thresholds = out.scores, self.thresholds
            dist = (out.distances if method == ProtoNet.name
                    else euclidean(q, self.prototypes, self.proto_sq))
            if app_p is not None and app_t is not None:
                other = (a, app_p, app_t)
        return q, scores, dist, thresholds, other

    def _evidence(self, c: int, q: np.ndarray) -> tuple[tuple[int, float], ...]:
        e = self.entries[c]
        d = np.linalg.norm(e.support - q, axis=1)
        return tuple((e.image_ids[j], float(d[j])) for j in np.argsort(d)[:EVIDENCE_PER_CLASS])


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first, without sorting all C classes."""
    if k < scores.shape[0]:
        idx = np.argpartition(-scores, k - 1)[:k]
        return idx[np.argsort(-scores[idx], kind="stable")]
    return np.argsort(-scores, kind="stable")


# -- good parts: anomaly score, threshold, verdict -----------------------------------------

# How a group's anomaly threshold is set (FSDI_ANOMALY_THRESHOLD_RULE):
# - "auto": the admin's false-alarm rate, from the good images' leave-one-out scores; while
#   the good images are too few to tell that rate apart (fewer than 1/rate - 1 held-out
#   scores) and the group has defect images, midway between the good images' and the
#   defect images' scores instead ("balanced": README, "Good parts");
# - "false_alarm_rate": always the rate, from the good images alone.
THRESHOLD_RULES = ("auto", "false_alarm_rate")


@dataclass(frozen=True)
class GoodParts:
    """A group's good images as a patch memory (models.patchcore), with the threshold
    calibrated from their leave-one-out scores to the group's false-alarm rate, or, while
    they are too few for that rate, balanced against the group's defect images."""

    memory: PatchMemory
    image_ids: tuple[int, ...]
    false_alarm_rate: float
    threshold: float
    held_out: int  # how many leave-one-out scores the threshold rests on
    warning: str | None
    rule: str = "false_alarm_rate"  # what set `threshold`: "false_alarm_rate" | "balanced"
    defect_examples: int = 0  # enrolled defect images scored against the memory
    defect_flagged: int = 0  # of those, how many score above `threshold`
    loo: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), compare=False)
    own_region: float | None = None  # one good image: its leave-region-out score
    # ... and the same scored block by block (`PatchMemory.region_scores`): the good side's
    # spread for the verdict's probability when one defect image cannot give one either.
    own_parts: np.ndarray | None = field(default=None, compare=False)
    # With a balanced threshold: the slope of P(defect | score) = sigmoid(slope * (score -
    # threshold)), the two classes' scores taken as Gaussians of one pooled variance
    # (linear discriminant, equal priors, so P = 1/2 at the threshold). None otherwise.
    slope: float | None = None
    # The slope's relative sampling variance (`discriminant`): the logit is moderated by it
    # (MacKay's probit approximation), so a slope estimated from a few scores never claims
    # near-certainty, and one from many is used as it is.
    slope_uncertainty: float | None = None

    def defect_probability(self, score: float) -> float | None:
        """P(the part is defective | its anomaly score), where the group can say it."""
        if self.slope is None:
            return None
        z = self.slope * (score - self.threshold)
        if self.slope_uncertainty:
            z /= math.sqrt(1.0 + math.pi * z * z * self.slope_uncertainty / 8.0)
        return float(0.5 * (1.0 + np.tanh(0.5 * z)))

    @classmethod
    def build(cls, patches: np.ndarray | PatchSource, image_ids: Sequence[int],
              false_alarm_rate: float, defect_patches: np.ndarray | None = None,
              rule: str = "auto", previous: GoodParts | None = None,
              memory_patches: int | None = None) -> GoodParts:
        """`patches`: (n, h, w, C) unit patch features of the group's good images, in the
        order of `image_ids`, or a function giving those at given positions (so that only
        the images needed are read); `defect_patches` (m, h, w, C) of up to MAX_HELD_OUT
        of its defect images, if any. `memory_patches`: the patch memory's cap
        (models.patchcore.PatchMemory; None: every patch). `previous`: the group's last
        build; when it holds the same good images, its memory and leave-one-out scores are
        reused (a defect or rate change costs no rebuild); when the good images only
        grew, its memory is extended with the new ones alone."""
        if rule not in THRESHOLD_RULES:
            raise ValueError(f"unknown threshold rule {rule!r}; one of {THRESHOLD_RULES}")
        source: PatchSource = (patches if callable(patches)
                               else lambda positions: patches[positions])
        ids = tuple(image_ids)
        reuse = previous if previous is not None and previous.image_ids == ids else None
        grown = (previous is not None and reuse is None and memory_patches is not None
                 and previous.memory.cap == memory_patches
                 and ids[:len(previous.image_ids)] == previous.image_ids)
        if reuse:
            memory = reuse.memory
        elif grown:
            assert previous is not None
            memory = previous.memory.extend(source(np.arange(len(previous.image_ids),
                                                             len(ids))))
        else:
            memory = PatchMemory(source(np.arange(len(ids))), cap=memory_patches)
        if reuse:
            loo = reuse.loo
        else:
            held = held_out(len(ids))
            loo = memory.scores_without(source(held), held)
        own_region = reuse.own_region if reuse else None
        own_parts = reuse.own_parts if reuse else None
        thr, warning = calibrate_threshold(loo, false_alarm_rate)
        used = "false_alarm_rate"
        bad = np.zeros(0, np.float32)
        good_side = loo
        if defect_patches is not None and len(defect_patches):
            bad = memory.image_scores(memory.distances(defect_patches[:MAX_HELD_OUT]))
            # One good image has no leave-one-out score: its regions left out in turn
            # stand in for it (optimistic, so only as the good side of the balance).
            if not len(loo) and own_region is None:
                own_region, own_parts = memory.own_scores(source(np.arange(1))[0])
            if not len(loo):
                good_side = np.asarray([own_region], np.float32)
            mid = balanced_threshold(good_side, bad)
            if rule == "auto" and warning is not None:
                if mid is not None:
                    thr, used = mid, "balanced"
                    warning = (
                        f"{warning}; meanwhile the threshold sits midway between the good "
                        f"images' and the {len(bad)} defect images' scores" if len(loo) else
                        "one good image cannot calibrate a threshold: meanwhile it sits midway "
                        "between that image's score with its regions left out in turn and the "
                        f"{len(bad)} defect images' scores; enrol more good parts")
                else:
                    warning = (f"{warning}; the defect images score no higher than good "
                               "parts, so they cannot place the threshold either")
        # The probability's spread: the scores either side. One good and one defect image
        # have none between them; the good image's blocks, each against the rest of it,
        # give one (too little spread where more defect images can give theirs: measured).
        spread_side = own_parts if not len(loo) and len(bad) == 1 else good_side
        slope, spread = (discriminant(np.asarray(spread_side), bad) if used == "balanced"
                         else None) or (None, None)
        return cls(memory, tuple(image_ids), false_alarm_rate, thr, len(loo), warning, used,
                   len(bad), int((bad > thr).sum()), loo, own_region, own_parts, slope, spread)


def discriminant(good: np.ndarray, bad: np.ndarray) -> tuple[float, float] | None:
    """(mean(bad) - mean(good)) / pooled variance: the logit's slope in the score when both
    are Gaussians of one variance; and that slope's relative sampling variance, from the
    pooled variance's (2 / dof) and the gap's (variance (1/n_good + 1/n_bad) / gap^2).
    None without a degree of freedom, a spread or a gap."""
    dof = len(good) + len(bad) - 2
    if dof < 1:
        return None
    ss = float(((good - good.mean()) ** 2).sum() + ((bad - bad.mean()) ** 2).sum())
    gap = float(bad.mean() - good.mean())
    if ss <= 0 or gap <= 0:
        return None
    var = ss / dof
    return gap / var, 2.0 / dof + var * (1.0 / len(good) + 1.0 / len(bad)) / gap ** 2


def fuse_region(vectors: np.ndarray, regions: np.ndarray, metric_dim: int) -> np.ndarray:
    """Stored vectors (n, D) [metric | appearance] and defect-region descriptors (n, C)
    -> (n, D + C) [metric | (appearance, region) / sqrt 2]: in a group with good parts a
    defect is ranked by its global look (which product) and the look of where it differs
    from the good parts (which defect), both unit vectors, weighed alike."""
    app = np.concatenate([vectors[:, metric_dim:], regions], axis=1) / np.sqrt(2.0)
    return np.concatenate([vectors[:, :metric_dim], app], axis=1).astype(np.float32)


def region_descriptors(good_parts: GoodParts, patches: Mapping[int, np.ndarray]
                       ) -> dict[int, np.ndarray]:
    """Each image's defect-region descriptor (`PatchMemory.regions`) against the group's
    memory, by image id; a bounded number of images per step."""
    ids = list(patches)
    out: dict[int, np.ndarray] = {}
    for start in range(0, len(ids), MAX_HELD_OUT):
        chunk = ids[start:start + MAX_HELD_OUT]
        out.update(zip(chunk, good_parts.memory.regions(np.stack([patches[i] for i in chunk])),
                       strict=True))
    return out


def region_entries(entries: Iterable[ClassEntry], vectors: Mapping[int, np.ndarray],
                   regions: Mapping[int, np.ndarray], layout: EmbeddingLayout
                   ) -> list[ClassEntry] | None:
    """The defect classes among `entries` rebuilt on region-fused vectors (`fuse_region`),
    from every image's stored vector and region descriptor (`region_descriptors`, by
    image id). None when fusion cannot apply: the layout has no appearance part, or some
    defect image has no region (no patch features: a database from before they were kept
    for defect images; `fsdi reembed` fills them)."""
    defects = [e for e in entries if e.kind != "good"]
    if layout.app_calib is None or not defects:
        return None
    if any(i not in regions or i not in vectors for e in defects for i in e.image_ids):
        return None
    return [make_entry(e.class_id, e.name, e.group, e.image_ids,
                       fuse_region(np.stack([vectors[i] for i in e.image_ids]),
                                   np.stack([regions[i] for i in e.image_ids]),
                                   layout.metric_dim), layout, e.kind)
            for e in defects]


@dataclass(frozen=True)
class Anomaly:
    score: float  # higher: less like any good part (cosine distance, comparable in a group)
    threshold: float
    anomalous: bool
    patch_map: np.ndarray  # (h, w) the heatmap: each patch's distance to the good parts
    probability: float | None = None  # P(defective | score) (GoodParts.defect_probability)


@dataclass(frozen=True)
class Inspection:
    """A query's whole answer. `index` is the GroupIndex that `decision` points into; it
    is None when the part is anomalous and the group has no defect classes (the defect is
    unknown). `anomaly` and `verdict` are None in groups without good images."""

    index: GroupIndex | None
    decision: Decision | None
    anomaly: Anomaly | None
    verdict: str | None  # "ok" | "defect"

    @property
    def unknown(self) -> bool:
        return self.decision is None or self.decision.unknown

    @property
    def entry(self) -> ClassEntry | None:
        if self.index is None or self.decision is None or self.decision.unknown:
            return None
        return self.index.entries[self.decision.best.index]

    @property
    def score(self) -> float:
        """The probability that the answer is right: 0 for an unknown; otherwise the
        label's calibrated class score, times, where the group can say it (a threshold
        balanced against defect images), the probability of the verdict itself."""
        if self.unknown or self.decision is None:
            return 0.0
        s = self.decision.best.score
        p = None if self.anomaly is None else self.anomaly.probability
        if p is not None:
            s *= p if self.verdict == "defect" else 1.0 - p
        return float(s)


@dataclass(frozen=True)
class ServedGroup:
    """Everything the service decides a group's queries with.

    Without good images: the class decision over all classes, as `GroupIndex.decide`.
    With them, the good parts decide OK/NG and the classes say which:
    - anomalous (score > threshold): verdict "defect"; the label is the nearest *defect*
      class, or unknown when it is rejected or the group has none (a new defect type);
    - otherwise: verdict "ok"; the label is the nearest *good* class (a product variant),
      never unknown.
    """

    index: GroupIndex
    defects: GroupIndex | None = None
    goods: GroupIndex | None = None
    good_parts: GoodParts | None = None
    # The defect classes are ranked on region-fused vectors (`region_entries`): an
    # anomalous query's own region joins its appearance part before `defects.decide`.
    regions: bool = False

    @classmethod
    def build(cls, index: GroupIndex, good_parts: GoodParts | None = None,
              defect_entries: Sequence[ClassEntry] | None = None) -> ServedGroup:
        """`defect_entries`: the defect classes rebuilt by `region_entries`, or None to
        rank them on the stored vectors as they are."""
        if good_parts is None:
            return cls(index)

        def sub(kind: str, chosen: Sequence[ClassEntry] | None = None) -> GroupIndex | None:
            chosen = [e for e in index.entries if e.kind == kind] if chosen is None else chosen
            if not chosen:
                return None
            return GroupIndex.build(index.group, chosen, index.metric_dim,
                                    index.fallback_temperature, index.runtime, index.rank_by,
                                    index.calibrate)
        return cls(index, sub("defect", defect_entries), sub("good"), good_parts,
                   bool(defect_entries))

    @property
    def group(self) -> str:
        return self.index.group

    def anomalies(self, patches: np.ndarray) -> list[Anomaly]:
        """(Q, h, w, C) query patch features -> one Anomaly each (good parts needed)."""
        gp = self.good_parts
        if gp is None:
            raise ValueError(f"group {self.group!r} has no good images")
        maps = gp.memory.distances(patches)
        scores = gp.memory.image_scores(maps)
        return [Anomaly(float(sc), gp.threshold, bool(sc > gp.threshold), m,
                        gp.defect_probability(float(sc)))
                for sc, m in zip(scores, maps, strict=True)]

    def inspect(self, embeddings: np.ndarray, patches: np.ndarray | None, top_k: int,
                method: str = ProtoNet.name, threshold: float | None = None,
                evidence: bool = False) -> list[Inspection]:
        """The served answer for each query: embeddings (Q, D_full), patch features
        (Q, h, w, C) (needed only when the group has good images)."""
        if self.good_parts is None:
            return [Inspection(self.index, d, None, None)
                    for d in self.index.decide(embeddings, top_k, method, threshold, evidence)]
        if patches is None:
            raise ValueError("a group with good images needs the queries' patch features")
        anomalies = self.anomalies(patches)
        out: list[Inspection | None] = [None] * len(anomalies)
        for flagged, idx in ((True, self.defects), (False, self.goods)):
            rows = [i for i, a in enumerate(anomalies) if a.anomalous == flagged]
            if not rows:
                continue
            verdict = "defect" if flagged else "ok"
            if idx is None:
                for i in rows:
                    out[i] = Inspection(None, None, anomalies[i], verdict)
                continue
            vectors = embeddings[rows]
            if flagged and self.regions and self.good_parts is not None:
                maps = np.stack([anomalies[i].patch_map for i in rows])
                vectors = fuse_region(vectors, self.good_parts.memory.regions(
                    patches[rows], maps), self.index.metric_dim)
            ds = idx.decide(vectors, top_k, method, threshold if flagged else None,
                            evidence)
            for i, d in zip(rows, ds, strict=True):
                # An OK part is one of the good variants, whatever its global distance.
                out[i] = Inspection(idx, d if flagged else replace(d, unknown=False),
                                    anomalies[i], verdict)
        return [o for o in out if o is not None]


# The served metric part's rejection calibration (FSDI_CALIB_METRIC_*): the meta-trained
# head spreads a class wider than the unit-norm ImageNet pool, so it is judged leniently.
SERVED_METRIC_CALIB = CalibrationConfig(margin=1.5, k_std=3.0, floor=0.4, ceiling=1.3,
                                        fallback=1.3)


@dataclass(frozen=True)
class ServingConfig:
    """Every choice the service makes when it builds a group, in one place. The service
    makes it from its settings (app.settings.Settings.serving_config); its defaults are
    the settings' defaults (a test holds them equal), so an evaluator or a bench that
    builds groups with `ServingConfig()` decides exactly as /classify does."""

    metric_calib: CalibrationConfig = SERVED_METRIC_CALIB
    app_calib: CalibrationConfig = CalibrationConfig()
    rank_by: str = "appearance"
    temperature: float = DEFAULT_TEMPERATURE
    calibrate_scores: bool = True
    runtime: str = "onnxruntime"
    false_alarm_rate: float = 0.02
    threshold_rule: str = "auto"
    memory_patches: int | None = MEMORY_PATCHES  # the patch memory's cap (None: none)

    def layout(self, metric_dim: int, dim: int) -> EmbeddingLayout:
        """How a backbone's vectors (metric_dim of dim values rank) are judged."""
        if metric_dim == dim:
            return EmbeddingLayout(dim, self.app_calib)
        return EmbeddingLayout(metric_dim, self.metric_calib, self.app_calib, self.rank_by)


@dataclass(frozen=True)
class EnrolledClass:
    """A class as stored: its images' ids (enrolment order), full vectors (n, D) and,
    where kept, patch features (n, h, w, C)."""

    class_id: int
    name: str
    kind: str
    image_ids: tuple[int, ...]
    vectors: np.ndarray
    patches: np.ndarray | None = None


def build_served_group(group: str, classes: Sequence[EnrolledClass], metric_dim: int,
                       config: ServingConfig, false_alarm_rate: float | None = None,
                       threshold_rule: str | None = None) -> ServedGroup:
    """The group as the service serves it, from its classes alone: the classes' index,
    and where it has good images with patch features, their memory with its threshold
    (from the good images, or balanced against the latest defect images), and the
    defect classes on region-fused vectors. `false_alarm_rate` / `threshold_rule`: the
    group's own settings, where it has them."""
    ordered = sorted(classes, key=lambda c: c.class_id)
    layout = config.layout(metric_dim, ordered[0].vectors.shape[1])
    entries = [make_entry(c.class_id, c.name, group, c.image_ids, c.vectors, layout, c.kind)
               for c in ordered]
    index = GroupIndex.build(group, entries, metric_dim, config.temperature, config.runtime,
                             layout.rank_by, config.calibrate_scores)
    good = sorted(((i, p) for c in ordered if c.kind == "good" and c.patches is not None
                   for i, p in zip(c.image_ids, c.patches, strict=True)), key=lambda t: t[0])
    if not good:
        return ServedGroup.build(index)
    defect = sorted(((i, p, v) for c in ordered if c.kind != "good" and c.patches is not None
                     for i, p, v in zip(c.image_ids, c.patches, c.vectors, strict=True)),
                    key=lambda t: t[0])
    latest = np.stack([p for _, p, _ in defect[-MAX_HELD_OUT:]]) if defect else None
    gp = GoodParts.build(np.stack([p for _, p in good]), [i for i, _ in good],
                         false_alarm_rate or config.false_alarm_rate, latest,
                         threshold_rule or config.threshold_rule,
                         memory_patches=config.memory_patches)
    regions = region_descriptors(gp, {i: p for i, p, _ in defect})
    fused = region_entries(index.entries, {i: v for i, _, v in defect}, regions, layout)
    return ServedGroup.build(index, gp, fused)
