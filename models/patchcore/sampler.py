"""Greedy k-center coreset (Sener & Savarese, ICLR 2018), as PatchCore subsamples its
memory bank: each pick is the patch farthest from everything picked so far, so the
subset covers the bank's spread, rare good patterns included.
Shapes: (M, C) -> indices (k,)."""

from __future__ import annotations

import numpy as np


class KCenterGreedy:
    def __init__(self, ratio: float = 0.1, min_size: int = 1, seed: int = 0) -> None:
        self.ratio = ratio
        self.min_size = min_size
        self.seed = seed

    def select(self, bank: np.ndarray) -> np.ndarray:
        m = bank.shape[0]
        k = min(m, max(self.min_size, int(round(self.ratio * m))))
        if k >= m:
            return np.arange(m)
        rng = np.random.default_rng(self.seed)
        picked = np.empty(k, dtype=np.int64)
        picked[0] = int(rng.integers(m))
        sq = np.einsum("mc,mc->m", bank, bank)
        # squared distance of every patch to its nearest picked patch
        nearest = sq + sq[picked[0]] - 2.0 * bank @ bank[picked[0]]
        for j in range(1, k):
            picked[j] = int(np.argmax(nearest))
            d = sq + sq[picked[j]] - 2.0 * bank @ bank[picked[j]]
            np.minimum(nearest, d, out=nearest)
        return picked
