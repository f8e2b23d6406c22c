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


def loo_distances(support: np.ndarray) -> np.ndarray:
    """(n, D) -> (n,) distance of each member to the mean of the others (n >= 2)."""
    n = support.shape[0]
    total = support.sum(axis=0)
    others = (total[None, :] - support) / (n - 1)
    return np.linalg.norm(support - others, axis=1).astype(np.float32)


def class_threshold(support: np.ndarray, cfg: CalibrationConfig) -> float:
    if support.shape[0] < 2:
        return cfg.fallback
    d = loo_distances(support)
    thr = max(cfg.margin * float(d.max()), float(d.mean() + cfg.k_std * d.std()))
    return float(np.clip(thr, cfg.floor, cfg.ceiling))


def rejection_rates(metric: np.ndarray, appearance: np.ndarray, labels: np.ndarray,
                    foreign: tuple[np.ndarray, np.ndarray], metric_cfg: CalibrationConfig,
                    app_cfg: CalibrationConfig, k_shot: int, n_way: int, episodes: int,
                    seed: int, groups: np.ndarray | None = None, q_query: int = 10,
                    foreign_per_episode: int = 30) -> dict[str, float]:
    """Enrol n_way classes from k_shot images each, calibrated as the service does, then
    judge q_query held-out images of each class and foreign_per_episode images of an
    unrelated set. Returns the fractions: accepted with the right class, falsely
    rejected (a genuine member called unknown), and foreign rejected."""
    from models.data.episodes import EpisodeSampler

    sampler = EpisodeSampler(labels, n_way, k_shot, q_query, seed, groups=groups)
    rng = np.random.default_rng(seed + 1)
    right = false_reject = foreign_reject = 0
    for _ in range(episodes):
        ep = sampler.sample()
        sup_m, sup_a = metric[ep.support], appearance[ep.support]
        by = [ep.support_labels == c for c in range(n_way)]
        pm = np.stack([sup_m[b].mean(0) for b in by])
        pa = np.stack([sup_a[b].mean(0) for b in by])
        tm = np.array([class_threshold(sup_m[b], metric_cfg) for b in by])
        ta = np.array([class_threshold(sup_a[b], app_cfg) for b in by])

        best, unk = _judge(metric[ep.query], appearance[ep.query], pm, pa, tm, ta)
        right += int(((best == ep.query_labels) & ~unk).sum())
        false_reject += int(unk.sum())
        f = rng.choice(len(foreign[0]), foreign_per_episode, replace=False)
        foreign_reject += int(_judge(foreign[0][f], foreign[1][f], pm, pa, tm, ta)[1].sum())
    nq, nf = episodes * n_way * q_query, episodes * foreign_per_episode
    return {"accepted_correct": right / nq, "falsely_rejected": false_reject / nq,
            "foreign_rejected": foreign_reject / nf}


def novelty_rates(metric: np.ndarray, appearance: np.ndarray, labels: np.ndarray,
                  groups: np.ndarray, metric_cfg: CalibrationConfig,
                  app_cfg: CalibrationConfig, k_shot: int, known_defects: int,
                  episodes: int, seed: int, q_query: int = 10) -> dict[str, float]:
    """Open set on one part: inside one group (surface), enrol label 0 ("ok") and
    `known_defects` random other labels from k_shot images each; then judge held-out
    images of those classes and images of the labels left out (defect types nobody
    enrolled). Returns: known accepted with the right class, known falsely rejected, and
    novel rejected (what an honest "unknown" should catch)."""
    rng = np.random.default_rng(seed)
    right = false_reject = novel_reject = n_known = n_novel = 0
    defects = [int(c) for c in np.unique(labels) if c != 0]
    for _ in range(episodes):
        g = rng.choice(np.unique(groups))
        known = [0, *(int(c) for c in rng.choice(defects, known_defects, replace=False))]
        pm, pa, tm, ta, queries, qlab = [], [], [], [], [], []
        for i, c in enumerate(known):
            idx = rng.permutation(np.flatnonzero((labels == c) & (groups == g)))
            sup, q = idx[:k_shot], idx[k_shot:k_shot + q_query]
            pm.append(metric[sup].mean(0))
            pa.append(appearance[sup].mean(0))
            tm.append(class_threshold(metric[sup], metric_cfg))
            ta.append(class_threshold(appearance[sup], app_cfg))
            queries.append(q)
            qlab.append(np.full(len(q), i))
        protos = (np.stack(pm), np.stack(pa), np.array(tm), np.array(ta))
        q, ql = np.concatenate(queries), np.concatenate(qlab)
        best, unk = _judge(metric[q], appearance[q], *protos)
        right += int(((best == ql) & ~unk).sum())
        false_reject += int(unk.sum())
        n_known += len(q)
        novel = np.flatnonzero(~np.isin(labels, known) & (groups == g))
        nq = rng.choice(novel, min(len(novel), q_query * 3), replace=False)
        novel_reject += int(_judge(metric[nq], appearance[nq], *protos)[1].sum())
        n_novel += len(nq)
    return {"accepted_correct": right / n_known, "falsely_rejected": false_reject / n_known,
            "novel_rejected": novel_reject / n_novel}


def _judge(qm: np.ndarray, qa: np.ndarray, pm: np.ndarray, pa: np.ndarray, tm: np.ndarray,
           ta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The service's rule (app/services/classification.py), vectorised: the winner is the
    nearest metric prototype; it is unknown when its metric distance exceeds its metric
    threshold or its appearance distance its appearance threshold. -> (winner, unknown)"""
    dm = np.linalg.norm(qm[:, None] - pm[None], axis=2)
    da = np.linalg.norm(qa[:, None] - pa[None], axis=2)
    best = dm.argmin(axis=1)
    rows = np.arange(len(best))
    return best, (dm[rows, best] > tm[best]) | (da[rows, best] > ta[best])
