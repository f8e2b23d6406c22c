"""Per-class rejection thresholds from the class's own support set.

For a class with n >= 2 support embeddings, each one is held out in turn and its
distance to the prototype of the other n - 1 is measured (leave-one-out). Those are
honest "how far does a genuine member of this class land" samples. The threshold is

    max(margin * max(loo), mean(loo) + k * std(loo))

clamped to [floor, ceiling]. A 1-shot class has no such sample and gets `fallback`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CalibrationConfig:
    margin: float = 1.5
    k_std: float = 3.0
    floor: float = 0.25
    ceiling: float = 0.95
    fallback: float = 1.0


def loo_means(support: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """(n, D) -> (n, D): for each member, the mean of the others (n >= 2), summed in
    `dtype`."""
    n = support.shape[0]
    return (support.sum(axis=0, dtype=dtype)[None, :] - support) / (n - 1)


def loo_distances(support: np.ndarray) -> np.ndarray:
    """(n, D) -> (n,) distance of each member to the mean of the others (n >= 2)."""
    return np.linalg.norm(support - loo_means(support), axis=1).astype(np.float32)


def class_threshold(support: np.ndarray, cfg: CalibrationConfig) -> float:
    if support.shape[0] < 2:
        return cfg.fallback
    d = loo_distances(support)
    thr = max(cfg.margin * float(d.max()), float(d.mean() + cfg.k_std * d.std()))
    return float(np.clip(thr, cfg.floor, cfg.ceiling))


# -- score calibration: a temperature per group, from its own support set ------------------
#
# ProtoNet's score is softmax(-d^2 / T) over the classes. A fixed T says nothing about how
# separable a group's classes are, so its scores cannot be probabilities for every group
# (models/MODEL_CARD.md, "Scores"). Each group instead gets the T that best predicts its
# own support set, left out one image at a time (maximum likelihood): `probes` keeps, per
# class, a few support vectors with their honest own-class distances; `fit_temperature`
# fits T on them against every class's prototype, weighed against a prior
# (`prior_temperature`): a few held-out images pin T down only loosely, and with none
# (1-shot classes) the prior is all there is.

PROBES_PER_CLASS = 16  # held-out support images a class contributes (evenly spread)
MAX_PROBES = 256  # per group: a temperature is one number; 256 samples pin it down
TEMPERATURE_RANGE = (1e-3, 10.0)
# The prior on a group's temperature: log T ~ Normal(log(PRIOR_SCALE * s), PRIOR_SIGMA^2),
# s the median squared distance between the group's prototypes. It is scale-free (a line
# whose parts lie twice as far apart gets a temperature four times as large), so it can
# travel between lines. Both numbers were fitted on the meta-training sources' episodes
# only (synthetic training defect types and Fashion-MNIST classes 0-4, 1/5/10 shots,
# held-out query likelihood: models.evaluate.fit_score_prior, rerun by `fsdi evaluate
# scores`), never on evaluation or real images; models/MODEL_CARD.md, "Scores", shows
# what they do there.
PRIOR_SCALE = 0.37
PRIOR_SIGMA = 1.0
PRIOR_PROTOTYPES = 64  # the median distance is taken over at most this many prototypes


def probes(support: np.ndarray, per_class: int = PROBES_PER_CLASS
           ) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) one class's support vectors -> up to `per_class` of them (float16) and each
    one's squared distance to the class prototype as a *new* image would see it.

    Held out, image i lies at ||x_i - mean of the other n-1||^2; for a new image the
    prototype is the mean of all n, which is closer on average by the factor
    (1 + 1/n) / (1 + 1/(n-1)) (independent draws of equal variance). A 1-shot class has
    no held-out sample: empty arrays."""
    n = support.shape[0]
    if n < 2:
        return np.zeros((0, support.shape[1]), np.float16), np.zeros(0, np.float32)
    pick = np.unique(np.linspace(0, n - 1, min(n, per_class)).round().astype(int))
    x = support[pick].astype(np.float32)
    others = loo_means(support, np.float64)[pick]
    own = ((x - others) ** 2).sum(axis=1) * ((1 + 1 / n) / (1 + 1 / (n - 1)))
    return x.astype(np.float16), own.astype(np.float32)


def _nll(d2: np.ndarray, own: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the true classes; d2 (H, C) with the own class's
    entry already replaced by its held-out distance (`own` holds those column indices)."""
    z = -d2 / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z[np.arange(len(z)), own] - np.log(np.exp(z).sum(axis=1))
    return float(-log_p.mean())


def prior_temperature(prototypes: np.ndarray, scale: float = PRIOR_SCALE,
                      max_prototypes: int = PRIOR_PROTOTYPES) -> float | None:
    """(C, D) prototypes -> the prior's centre, `scale` x the median squared distance
    between them (at most `max_prototypes` of them, evenly spread: a median needs no
    more), within TEMPERATURE_RANGE. None for fewer than two distinct prototypes."""
    c = len(prototypes)
    if c < 2:
        return None
    pick = np.unique(np.linspace(0, c - 1, min(c, max_prototypes)).round().astype(int))
    p = prototypes[pick].astype(np.float64)
    sq = (p * p).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None] - 2.0 * p @ p.T, 0.0)[np.triu_indices(len(p), 1)]
    s = float(np.median(d2))
    if s <= 0.0:
        return None
    return float(np.clip(scale * s, *TEMPERATURE_RANGE))


def fit_temperature(d2: np.ndarray, own: np.ndarray, fallback: float,
                    iters: int = 30, prior: float | None = None,
                    prior_sigma: float = PRIOR_SIGMA) -> float:
    """The temperature for held-out squared distances d2 (H, C) whose true classes are
    `own` (H,): maximum likelihood, or with `prior` (a temperature) the maximum a
    posteriori under log T ~ Normal(log prior, prior_sigma^2). A coarse grid over log T
    brackets the optimum and a golden-section search refines it. With no samples or one
    class: the prior, or `fallback` without one."""
    if d2.shape[0] == 0 or d2.shape[1] < 2:
        return fallback if prior is None else prior
    h = d2.shape[0]

    def cost(log_t: float) -> float:
        c = h * _nll(d2, own, float(np.exp(log_t)))
        if prior is not None:
            c += (log_t - np.log(prior)) ** 2 / (2.0 * prior_sigma ** 2)
        return c

    lo, hi = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    grid = np.linspace(lo, hi, 13)  # e-fold steps: each cost is one pass over d2
    k = int(np.argmin([cost(float(x)) for x in grid]))
    lo, hi = grid[max(0, k - 1)], grid[min(len(grid) - 1, k + 1)]
    g = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = cost(a), cost(b)
    for _ in range(iters):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = cost(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = cost(b)
    return float(np.exp((lo + hi) / 2.0))


def held_out_distances(class_probes: list[tuple[np.ndarray, np.ndarray]],
                       prototypes: np.ndarray, max_probes: int | None = MAX_PROBES
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The classes' held-out images (`probes`, in prototype order; at most `max_probes`,
    spread evenly over the classes) against the prototypes (C, D): squared distances
    (H, C), each own-class entry the distance a new image would see, and the own classes
    (H,)."""
    rows = [(c, j) for c, (x, _) in enumerate(class_probes) for j in range(len(x))]
    if max_probes is not None and len(rows) > max_probes:
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, max_probes).round().astype(int)]
    own = np.array([c for c, _ in rows], np.int64)
    if not rows:
        return np.zeros((0, len(prototypes)), np.float32), own
    x = np.stack([class_probes[c][0][j] for c, j in rows]).astype(np.float32)
    p = prototypes.astype(np.float32)
    d2 = np.maximum((x * x).sum(1)[:, None] + (p * p).sum(1)[None] - 2.0 * x @ p.T, 0.0)
    d2[np.arange(len(rows)), own] = [class_probes[c][1][j] for c, j in rows]
    return d2, own


def group_temperature(class_probes: list[tuple[np.ndarray, np.ndarray]],
                      prototypes: np.ndarray, fallback: float,
                      max_probes: int = MAX_PROBES, prior: bool = True) -> tuple[float, int]:
    """One temperature for a group, and how many held-out images it rests on. Per class
    (in prototype order) its `probes`, and the prototypes (C, D) they are scored against.
    At most `max_probes` held-out images are used, spread evenly over the classes. With
    `prior`, the fit is weighed against `prior_temperature(prototypes)`, and a group with
    nothing to hold out (1-shot classes) takes that prior; without, or for a single class,
    `fallback` (0 held out)."""
    if len(prototypes) < 2:
        return fallback, 0
    centre = prior_temperature(prototypes) if prior else None
    d2, own = held_out_distances(class_probes, prototypes, max_probes)
    if not len(own):
        return (fallback if centre is None else centre), 0
    return fit_temperature(d2, own, fallback, prior=centre), len(own)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               bins: int = 15) -> float:
    """ECE: over equal-width confidence bins, the share-weighted gap between mean
    confidence and accuracy."""
    return float(sum(n * abs(conf - acc) for conf, acc, n in
                     reliability(confidence, correct, bins)) / max(1, len(confidence)))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 15
                ) -> list[tuple[float, float, int]]:
    """Per non-empty bin: (mean confidence, accuracy, count), for a reliability plot."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return [(float(confidence[which == b].mean()), float(correct[which == b].mean()),
             int((which == b).sum())) for b in range(bins) if (which == b).any()]
