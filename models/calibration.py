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
