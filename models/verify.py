"""Verification: are two images the same class? Two scores, each turned into a
probability of "same" by a calibration fitted on pairs of images (Platt scaling):

- in a group (`/verify?group=G`): the probability that both images fall in one of G's
  classes, sum_c p(c | a) p(c | b), with p as /classify scores them. Its calibration is
  G's own: every pair of its enrolled images, each image held out of the group it is
  scored by (models.inference.build_served_group without it), pairs within a class
  ("same") against pairs across classes ("different"). Measured (`fsdi evaluate
  verify`), it separates same from different better than the Siamese pair logit on
  every set tried, real images included.
- without a group, or in a group too small to calibrate: the Siamese network's pair
  logit (models/methods/siamese.py, computed here in NumPy from its shipped weights, so
  serving needs no torch), calibrated once on pairs from the meta-training sources only
  (synthetic training defect types inside one surface, Fashion-MNIST training classes),
  shipped as `models/weights/methods/siamese.verify.json` (`fsdi train
  --verify-calibration`).

p(same) = sigmoid(slope * score + intercept), "same" when p >= 0.5: same and different
pairs are weighed to equal prior, so this is the balanced decision. The slope is kept
positive (a calibration may sharpen or soften a score, never reverse it), and a weak
prior pulls both towards the identity (1, 0) so that a handful of pairs cannot fit
noise. In a group with good parts and two defect classes or more, how alike the two
images' defect regions look (`pair_looks`) is weighed beside the score: direct evidence
of "the same defect". In a group without good parts, its classes are ranked on each
image's defect region found against the group's other classes (`Surface`) where its
own held-out images name their class more surely so than by the whole frame. A group's
fits (this one and its verdict's) answer through their uncertainty (`moderated`): a
group of a few images is less sure than one of many.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from models.inference import (
    ClassEntry,
    EnrolledClass,
    GroupIndex,
    ServedGroup,
    ServingConfig,
    build_served_group,
    fuse_region,
    make_entry,
)
from models.patchcore.memory import PatchMemory

WEIGHTS = Path(__file__).parent / "weights" / "methods"
GLOBAL_PATH = WEIGHTS / "siamese.verify.json"
SCALE = 10.0  # the Siamese network's distance scale (models.methods.siamese.SCALE)
# The fewest same and different pairs a group must give for its own calibration.
MIN_PAIRS = 6
PRIOR_STRENGTH = 1.0  # pairs' worth of pull towards slope 1, intercept 0
MAX_PER_CLASS = 20  # a class's images a group calibration holds out at most
MAX_HELD_OUT = 200  # and all its classes' together (each class keeps at least 2)


class PairModel:
    """The Siamese network's pair logit, bias - SCALE * |a - b|^2 + gate * g([|a - b|, a*b]),
    from its shipped safetensors (NumPy: no torch)."""

    def __init__(self, path: Path = WEIGHTS / "siamese.safetensors") -> None:
        from safetensors.numpy import load_file

        w = load_file(str(path))
        self.w1, self.b1 = w["g.0.weight"].T.copy(), w["g.0.bias"]
        self.w2, self.b2 = w["g.2.weight"][0].copy(), float(w["g.2.bias"][0])
        self.gate, self.bias = float(w["gate"]), float(w["bias"])
        self.dim = self.w1.shape[0] // 2

    def logits(self, a: np.ndarray, b: np.ndarray, rows: int = 16) -> np.ndarray:
        """(A, D), (B, D) -> (A, B) pair logits, `rows` of A at a time (bounded memory)."""
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        out = np.empty((len(a), len(b)), np.float64)
        for i in range(0, len(a), rows):
            x = a[i:i + rows, None]
            diff = x - b[None]
            feats = np.concatenate([np.abs(diff), x * b[None]], axis=-1)
            hidden = np.maximum(feats @ self.w1 + self.b1, 0.0)
            out[i:i + rows] = self.bias - SCALE * (diff * diff).sum(-1) \
                + self.gate * (hidden @ self.w2 + self.b2)
        return out


@dataclass(frozen=True)
class VerdictModel:
    """P(defective | anomaly score) = sigmoid(slope * (score - centre) / scale + intercept),
    fitted on a group's held-out scores (good and defect images weighed equally),
    moderated by the fit's uncertainty (`moderated`)."""
    centre: float
    scale: float
    slope: float
    intercept: float
    covariance: tuple[tuple[float, ...], ...] | None = None  # of (slope, intercept)

    def defect_probability(self, scores: np.ndarray) -> np.ndarray:
        x = (np.asarray(scores, np.float64).reshape(-1) - self.centre) / self.scale
        a = np.stack([x, np.ones_like(x)], axis=1)
        p = moderated(a, np.array([self.slope, self.intercept]), _matrix(self.covariance))
        return p.reshape(np.shape(scores))

    @classmethod
    def fit(cls, scores: np.ndarray, defective: np.ndarray,
            prior: float = PRIOR_STRENGTH) -> VerdictModel:
        x = np.asarray(scores, np.float64)
        centre, scale = float(x.mean()), float(x.std()) or 1.0
        (slope, intercept), cov = logistic(((x - centre) / scale)[:, None],
                                           np.asarray(defective, bool), np.array([1.0, 0.0]),
                                           prior)
        return cls(centre, scale, float(max(slope, 1e-3)), float(intercept), _rows(cov))


@dataclass(frozen=True)
class Calibration:
    slope: float
    intercept: float
    source: str  # "group" | "global"
    pairs: int = 0  # the pairs it was fitted on
    # In a group with good parts and defect images: the verdict's part of p(c | x).
    verdict: VerdictModel | None = None
    # Of the weights (slope[, look weight], intercept): a fit on few pairs is moderated.
    covariance: tuple[tuple[float, ...], ...] | None = None
    # In a group with good parts and two defect classes or more: the weight of how alike
    # the pair's defect looks are (`pair_looks`), standardised by the centre and scale
    # it had on the fitted pairs: (weight, centre, scale).
    look: tuple[float, float, float] | None = None
    # In a group without good parts whose own held-out images are told apart better so:
    # its classes ranked on region-fused vectors, the region found against the others.
    surface: Surface | None = None

    def probability(self, logit: np.ndarray | float,
                    look: np.ndarray | float | None = None) -> np.ndarray:
        """p(same) of agreement logits (and, where this calibration weighs it, the
        pairs' `pair_looks`; missing, it counts as the fitted pairs' mean)."""
        x = np.asarray(logit, np.float64)
        cols, theta = [x.reshape(-1)], [self.slope]
        if self.look is not None:
            weight, centre, scale = self.look
            cols.append(np.zeros(x.size) if look is None else
                        (np.asarray(look, np.float64).reshape(-1) - centre) / scale)
            theta.append(weight)
        a = np.stack([*cols, np.ones(x.size)], axis=1)
        return moderated(a, np.array([*theta, self.intercept]),
                         _matrix(self.covariance)).reshape(x.shape)


@dataclass(frozen=True, eq=False)
class Surface:
    """A group without good parts, where its classes are defects on one surface: an
    image's defect is what it shares with few of the group's classes, the surface what
    it shares with all. Each class keeps a patch memory of its images; a patch's rarity
    is the median over the classes of its distance to the class's nearest patch (low on
    the surface every class shows, high on a defect only its own class shows), and the
    image's region descriptor is the mean of its rarest patches (`PatchMemory.regions`'s
    top fraction). The classes are then ranked on region-fused vectors (`fuse_region`), as
    the defect classes of a group with good parts are."""
    memories: tuple[PatchMemory, ...]  # one per class, in `index.entries`' order
    index: GroupIndex  # the classes on region-fused vectors

    @classmethod
    def build(cls, group: str, classes: Sequence[EnrolledClass],
              picks: Sequence[tuple[int, int]], patches: Mapping[int, np.ndarray],
              metric_dim: int, config: ServingConfig) -> tuple[Surface, np.ndarray] | None:
        """From the picked (class position, image position) images of `classes` and their
        patch features by image id: the surface and each pick's region-fused vector, its
        region found without its own patches. None where it cannot apply: fewer than two
        classes, a pick without patch features, or a layout without an appearance part."""
        layout = config.layout(metric_dim, classes[0].vectors.shape[1])
        ids = [classes[c].image_ids[j] for c, j in picks]
        if len(classes) < 2 or layout.app_calib is None or any(i not in patches for i in ids):
            return None
        mine = [[k for k, (c, _) in enumerate(picks) if c == n] for n in range(len(classes))]
        own = np.stack([patches[i] for i in ids]).astype(np.float32)
        # searched in full: a subspace fitted on one class's few images is that class's
        # own, where another class's defect is what has to stand out
        memories = tuple(PatchMemory(own[m], dims=None) for m in mine)
        slot = {k: (c, m.index(k)) for c, m in enumerate(mine) for k in m}
        regions = _rarest(memories, own, [slot[k] for k in range(len(picks))])
        vectors = np.stack([classes[c].vectors[j] for c, j in picks])
        fused = fuse_region(vectors, regions, metric_dim)
        entries = [make_entry(cl.class_id, cl.name, group,
                              tuple(ids[k] for k in mine[c]), fused[mine[c]], layout, cl.kind)
                   for c, cl in enumerate(classes)]
        index = GroupIndex.build(group, entries, metric_dim, config.temperature,
                                 config.runtime, layout.rank_by, config.calibrate_scores)
        return cls(memories, index), fused

    def regions(self, patches: np.ndarray) -> np.ndarray:
        """(n, h, w, C) patches -> (n, C) unit descriptors of their defect regions."""
        return _rarest(self.memories, patches)

    def fused(self, vectors: np.ndarray, patches: np.ndarray) -> np.ndarray:
        """(n, D) vectors and their (n, h, w, C) patches -> their region-fused vectors."""
        return fuse_region(vectors, self.regions(patches), self.index.metric_dim)


def _rarest(memories: Sequence[PatchMemory], patches: np.ndarray,
            own: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """(n, h, w, C) -> (n, C) `Surface` region descriptors; `own[i]`: the (class, image)
    a memory image i is, left out of that class's memory (a class of one image then has
    no say on it)."""
    n, h, w, _ = patches.shape
    slots: Sequence[tuple[int, int] | None] = own if own is not None else [None] * n
    dist = np.empty((n, len(memories), h, w), np.float32)
    for c, m in enumerate(memories):
        rest = [i for i, o in enumerate(slots) if o is None or o[0] != c]
        if rest:  # one search for every image that is not this class's own
            dist[rest, c] = m.distances(patches[rest])
        for i, o in enumerate(slots):
            if o is not None and o[0] == c:
                dist[i, c] = m.distances(patches[i][None], exclude=o[1])[0] \
                    if m.n_good > 1 else np.nan
    return memories[0].regions(patches, np.nanmedian(dist, axis=1))


def fit(logits: np.ndarray, same: np.ndarray, source: str,
        prior: float = PRIOR_STRENGTH, look: np.ndarray | None = None) -> Calibration:
    """Platt scaling of pair logits (with `look`: each pair's `pair_looks` beside them,
    standardised): same and different pairs weighed to equal prior, a Gaussian pull of
    `prior` pairs' weight towards the identity (the look's weight towards 0), the slope
    kept positive and the look's weight not negative (defects that look more alike
    never argue for "different")."""
    x = np.asarray(logits, np.float64)[:, None]
    y = np.asarray(same, bool)
    if y.all() or not y.any():
        raise ValueError("a calibration needs same and different pairs")
    centre, scale = 0.0, 1.0
    if look is not None:
        raw = np.asarray(look, np.float64)
        centre, scale = float(raw.mean()), float(raw.std()) or 1.0
        x = np.concatenate([x, ((raw - centre) / scale)[:, None]], axis=1)
    theta, cov = logistic(x, y, np.r_[1.0, np.zeros(x.shape[1])], prior)
    return Calibration(float(max(theta[0], 1e-3)), float(theta[-1]), source, int(len(y)),
                       covariance=_rows(cov),
                       look=None if look is None else (float(max(theta[1], 0.0)), centre, scale))


def logistic(x: np.ndarray, y: np.ndarray, centre: np.ndarray, prior: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """Weights (one per column of x, then the intercept) of a logistic regression of y on
    x, the two classes weighed equally, with a Gaussian pull of `prior` rows' weight
    towards `centre`: Newton steps with a backtracking line search (the objective is
    convex, so each step that does not lower it is halved). With them, their covariance
    (Laplace: the inverse Hessian of the objective at the optimum), how far a few rows
    leave them uncertain."""
    a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    wts = np.where(y, 0.5 / y.sum(), 0.5 / (~y).sum()) * len(y)
    t = y.astype(np.float64)

    def loss(theta: np.ndarray) -> float:
        z = a @ theta
        return float(wts @ (np.logaddexp(0, z) - t * z)
                     + prior / 2 * ((theta - centre) ** 2).sum())

    theta = centre.astype(np.float64).copy()
    current = loss(theta)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(a @ theta, -60, 60)))
        grad = a.T @ (wts * (p - t)) + prior * (theta - centre)
        hess = (a * (wts * p * (1 - p))[:, None]).T @ a + prior * np.eye(len(theta))
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(theta)), grad)
        for _ in range(30):
            new = loss(theta - step)
            if new <= current:
                break
            step = step / 2
        else:
            break
        theta, gain, current = theta - step, current - new, new
        if gain < 1e-10 * max(1.0, abs(current)):
            break
    p = 1.0 / (1.0 + np.exp(-np.clip(a @ theta, -60, 60)))
    hess = (a * (wts * p * (1 - p))[:, None]).T @ a + prior * np.eye(len(theta))
    return theta, np.linalg.inv(hess + 1e-9 * np.eye(len(theta)))


def moderated(a: np.ndarray, theta: np.ndarray, covariance: np.ndarray | None
              ) -> np.ndarray:
    """sigmoid(a @ theta) averaged over the weights' uncertainty (MacKay's probit
    approximation: the logit shrunk by sqrt(1 + pi/8 var)): a fit on a few images
    answers less surely where it has seen little, and as fitted where it has seen
    much. Rows of `a` end with the intercept's 1."""
    z = a @ theta
    if covariance is not None:
        var = np.maximum(np.einsum("ij,jk,ik->i", a, covariance, a), 0.0)
        z = z / np.sqrt(1.0 + np.pi * var / 8.0)
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -60, 60))), np.float64)


def _matrix(c: tuple[tuple[float, ...], ...] | None) -> np.ndarray | None:
    return None if c is None else np.array(c, np.float64)


def _rows(c: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in c)


def enrolled_pairs(model: PairModel, vectors: np.ndarray, labels: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair of images: (logits, same class). The pair logit is
    symmetric: the upper triangle holds each pair once."""
    z = model.logits(vectors, vectors)
    i, j = np.triu_indices(len(vectors), k=1)
    return z[i, j], labels[i] == labels[j]


def agreement_logits(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """(n, N), (n, N) class probabilities -> (n,) log-odds that each pair shows one class:
    the probability that both fall in the same class, sum_c pa_c * pb_c."""
    p = np.clip((np.asarray(pa, np.float64) * pb).sum(axis=-1), 1e-9, 1 - 1e-9)
    return np.asarray(np.log(p) - np.log1p(-p), np.float64)


def with_verdict(post: np.ndarray, defect_p: np.ndarray, good: np.ndarray) -> np.ndarray:
    """(n, N) class posteriors, (n,) P(defective), (N,) which classes are good -> the
    posteriors with the verdict's say: the good classes share 1 - P(defective) in their
    own proportions, the defect classes P(defective) (evenly, where a kind's posteriors
    are all 0)."""
    out = np.zeros_like(post, dtype=np.float64)
    for kind, share in ((good, 1.0 - defect_p), (~good, defect_p)):
        if not kind.any():
            continue
        part = post[:, kind].astype(np.float64)
        total = part.sum(axis=1, keepdims=True)
        part = np.where(total > 0, part / np.where(total > 0, total, 1.0), 1.0 / kind.sum())
        out[:, kind] = part * share[:, None]
    return out


def _posteriors(index: GroupIndex, x: np.ndarray, hold: int | None, metric_dim: int
                ) -> np.ndarray:
    """`index`'s posteriors of one vector (its entries' order); `hold`: the entry that
    vector was enrolled in, taken as the mean of its other images (a class of one image
    leaves: probability 0)."""
    if hold is None:
        return index.posteriors(x[None])[0]
    entries, cols = list(index.entries), list(range(len(index.entries)))
    if len(entries[hold].image_ids) > 1:
        entries[hold] = _without(entries[hold], x, metric_dim)
    else:
        del entries[hold], cols[hold]
    out = np.zeros(len(index.entries))
    if entries:
        held = GroupIndex.build(index.group, entries, metric_dim, index.temperature,
                                index.runtime, index.rank_by, calibrate=False)
        out[cols] = held.posteriors(x[None])[0]
    return out


def as_served(served: ServedGroup, vectors: np.ndarray, regions: np.ndarray,
              defect_p: np.ndarray, metric_dim: int,
              held: Sequence[tuple[int, str] | None] | None = None) -> np.ndarray | None:
    """(n, D) vectors and their (n, C) defect-region descriptors against the good parts
    (an enrolled good image's found without its own patches: `held_out_maps`) -> (n, N)
    class probabilities as /classify decides in a group with good parts (columns:
    `served.index.entries`): P(defective) shared among the defect classes as its defects
    index ranks them, on region-fused vectors (the image's own region joins its look),
    the rest among the good classes on their index. `held[i]`: (class_id, kind) an
    enrolled image is held out of. None where the group is not served that way."""
    if served.good_parts is None or served.defects is None or not served.regions:
        return None
    col = {e.class_id: k for k, e in enumerate(served.index.entries)}
    out = np.zeros((len(vectors), len(served.index.entries)))
    fused_all = fuse_region(vectors, regions, metric_dim)
    for i, (x, fused) in enumerate(zip(vectors, fused_all, strict=True)):
        spot = None if held is None else held[i]
        for idx, share, v in ((served.defects, defect_p[i], fused),
                              (served.goods, 1.0 - defect_p[i], x)):
            if idx is None:
                continue
            ids = [e.class_id for e in idx.entries]
            hold = ids.index(spot[0]) if spot is not None and spot[0] in ids else None
            out[i, [col[c] for c in ids]] = share * _posteriors(idx, v, hold, metric_dim)
    return out


def held_out_maps(served: ServedGroup, picks: Sequence[tuple[int, str]],
                  patches: Mapping[int, np.ndarray]) -> np.ndarray | None:
    """(image id, kind) -> each image's distance map against the group's good parts
    without itself (a good image without its own patches, a defect image as it is), or
    None where the group has no good parts, an image has no patch features, or a good
    image is the memory's only one."""
    gp = served.good_parts
    if gp is None or any(i not in patches for i, _ in picks):
        return None
    position = {image_id: k for k, image_id in enumerate(gp.image_ids)}
    maps = []
    for i, kind in picks:
        own = position.get(i) if kind == "good" else None
        if own is not None and gp.memory.n_good < 2:
            return None
        maps.append(gp.memory.distances(patches[i][None], exclude=own)[0])
    return np.stack(maps)


def group_calibration(classes: Sequence[EnrolledClass], metric_dim: int,
                      config: ServingConfig, per_class: int = MAX_PER_CLASS,
                      most: int = MAX_HELD_OUT, served: ServedGroup | None = None,
                      patches_of: Callable[[list[int]], dict[int, np.ndarray]] | None = None
                      ) -> Calibration | None:
    """The group's own calibration of `agreement_logits`, from its enrolled images, or
    None when they give fewer than MIN_PAIRS same or different pairs (then the global
    one decides). The group is built as served (models.inference.build_served_group);
    each image is then held out in turn: its class's prototypes become the mean of the
    class's other images (a class of one image leaves the group), the group's fitted
    temperature is kept, and its class probabilities come from that index, so no pair
    is scored by prototypes that contain it. At most `per_class` images of a class and
    `most` in all take part, evenly spread over each class's enrolment order: the same
    on every replica, and a bounded cost for a good class of thousands or a group of
    hundreds of classes. With `served` (the group as served, good parts included) and
    `patches_of` (image ids -> their patch features), a group with good and defect
    images also fits its `VerdictModel` on the picked images' held-out anomaly scores,
    and a group without good parts is ranked on its `Surface` where the picked images,
    each held out, give their own class a higher mean log-probability so than on the
    whole frame."""
    ordered = sorted(classes, key=lambda c: c.class_id)
    take = max(2, min(per_class, most // max(1, len(ordered))))
    picks = [(c, j) for c, cls in enumerate(ordered) for j in
             _spread(len(cls.image_ids), take)]
    counts = np.bincount([c for c, _ in picks], minlength=len(ordered))
    same_pairs = int((counts * (counts - 1) // 2).sum())
    different_pairs = (len(picks) * (len(picks) - 1)) // 2 - same_pairs
    if same_pairs < MIN_PAIRS or different_pairs < MIN_PAIRS:
        return None
    labels = np.array([c for c, _ in picks])
    a, b = np.triu_indices(len(picks), k=1)

    def class_posteriors() -> np.ndarray:
        """Each pick's posteriors on the group's classes alone, held out of its class."""
        index = build_served_group("verify", [replace(c, patches=None) for c in ordered],
                                   metric_dim, config).index
        return np.stack([_posteriors(index, ordered[c].vectors[j], c, metric_dim)
                         for c, j in picks])

    probs, verdict, looks = None, None, None
    good = np.array([c.kind == "good" for c in ordered])
    if served is not None and patches_of is not None and good.any() and not good.all():
        kinds = [(ordered[c].image_ids[j], ordered[c].kind) for c, j in picks]
        got = patches_of([i for i, _ in kinds])
        maps = held_out_maps(served, kinds, got)
        if maps is not None and served.good_parts is not None:
            gp = served.good_parts
            scores = gp.memory.image_scores(maps)
            verdict = VerdictModel.fit(scores, ~good[labels])
            q = verdict.defect_probability(scores)
            patches = np.stack([got[i] for i, _ in kinds])
            regions = gp.memory.regions(patches, maps)
            probs = as_served(
                served, np.stack([ordered[c].vectors[j] for c, j in picks]), regions, q,
                metric_dim, held=[(ordered[c].class_id, ordered[c].kind) for c, _ in picks])
            if probs is None:
                probs = with_verdict(class_posteriors(), q, good)
            elif (~good).sum() >= 2:  # which defect is a question only among two or more
                looks = defect_looks(q, regions)
    surface = None
    if probs is None:
        probs = class_posteriors()
        if patches_of is not None and not good.any():
            built = Surface.build("verify", ordered, picks,
                                  patches_of([ordered[c].image_ids[j] for c, j in picks]),
                                  metric_dim, config)
            if built is not None:
                fused = np.stack([_posteriors(built[0].index, v, c, metric_dim)
                                  for v, c in zip(built[1], labels, strict=True)])
                # the group's own held-out images decide: on region-fused vectors only
                # where they name their own class more surely so
                if _log_likelihood(fused, labels) > _log_likelihood(probs, labels):
                    probs, surface = fused, built[0]
    cal = fit(agreement_logits(probs[a], probs[b]), labels[a] == labels[b], "group",
              look=None if looks is None else pair_looks(looks, a, b))
    return replace(cal, verdict=verdict, surface=surface)


def _log_likelihood(post: np.ndarray, labels: np.ndarray) -> float:
    """The mean log-probability held-out posteriors give each image's own class."""
    return float(np.log(np.maximum(post[np.arange(len(labels)), labels], 1e-9)).mean())


def defect_looks(defect_p: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """(n,) P(defective), (n, C) unit defect-region descriptors -> (n, C): each image's
    defect region, as far as it is defective (a good part's region is noise)."""
    return np.asarray(defect_p, np.float64)[:, None] * regions


def pair_looks(looks: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How alike pairs' defects look: P(a defective) P(b defective) cos(region a, region b)
    - direct evidence of "the same defect" beside the classes both fall in."""
    return np.asarray((looks[a] * looks[b]).sum(axis=-1), np.float64)


def seen(served: ServedGroup, cal: Calibration, vectors: np.ndarray,
         patches: np.ndarray | None, metric_dim: int
         ) -> tuple[np.ndarray, np.ndarray | None]:
    """(n, D) embeddings (and their (n, h, w, C) patch features) -> their class
    probabilities as the group's calibration `cal` was fitted on them (columns: the
    group's classes, `served.index.entries` or, ranked on its surface, `cal.surface`'s)
    and, where `cal` weighs them, their `defect_looks`."""
    gp = served.good_parts
    if cal.surface is not None and patches is not None:
        return cal.surface.index.posteriors(cal.surface.fused(vectors, patches)), None
    if cal.verdict is None or gp is None or patches is None:
        return served.index.posteriors(vectors), None
    maps = gp.memory.distances(patches)
    q = cal.verdict.defect_probability(gp.memory.image_scores(maps))
    regions = gp.memory.regions(patches, maps)
    fused = as_served(served, vectors, regions, q, metric_dim)
    if fused is None:
        good = np.array([e.kind == "good" for e in served.index.entries])
        return with_verdict(served.index.posteriors(vectors), q, good), None
    return fused, None if cal.look is None else defect_looks(q, regions)


def same_probability(cal: Calibration, post: np.ndarray, looks: np.ndarray | None,
                     a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """p(same) of the pairs (a[i], b[i]) of images `seen` by a group."""
    return cal.probability(agreement_logits(post[a], post[b]),
                           None if looks is None else pair_looks(looks, a, b))


def _without(entry: ClassEntry, vector: np.ndarray, metric_dim: int) -> ClassEntry:
    """`entry` without one of its images as far as ranking goes: each part's prototype
    is the mean of the other images (the posteriors use no threshold)."""
    n = len(entry.image_ids)
    proto = ((entry.prototype * n - vector[:metric_dim]) / (n - 1)).astype(np.float32)
    app = None if entry.app_prototype is None else (
        (entry.app_prototype * n - vector[metric_dim:]) / (n - 1)).astype(np.float32)
    return replace(entry, prototype=proto, app_prototype=app)


def _spread(n: int, k: int) -> list[int]:
    """At most k of range(n), evenly spread."""
    return list(range(n)) if n <= k else \
        sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def load_global(path: Path = GLOBAL_PATH) -> Calibration:
    d = json.loads(path.read_text())
    return Calibration(float(d["slope"]), float(d["intercept"]), "global", int(d["pairs"]))


def save_global(c: Calibration, fitted_on: str, path: Path = GLOBAL_PATH) -> None:
    path.write_text(json.dumps(asdict(c) | {"fitted_on": fitted_on}, indent=1) + "\n")
