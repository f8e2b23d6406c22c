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


def greedy_net(points: np.ndarray, radius: float, order: np.ndarray | None = None,
               block: int = 256) -> np.ndarray:
    """(M, C) unit vectors -> indices of a `radius`-net taken greedily in `order` (default:
    all, in index order): a point is kept unless a kept point before it lies within
    cosine distance `radius`. Deterministic; every point ends within `radius` of a kept
    one. A block of points is settled among itself, then its kept points cover every
    later point in one matrix product."""
    idx = np.arange(len(points)) if order is None else np.asarray(order)
    if len(idx) == 0:
        return idx.astype(np.int64)
    cand = np.ascontiguousarray(points[idx])
    covered = np.zeros(len(idx), dtype=bool)
    kept: list[int] = []
    limit = 1.0 - radius
    for start in range(0, len(idx), block):
        end = min(start + block, len(idx))
        inner = cand[start:end] @ cand[start:end].T >= limit  # (b, b)
        mine = []
        for j in range(end - start):
            if covered[start + j]:
                continue
            mine.append(j)
            covered[start:end] |= inner[j]
        kept.extend(start + j for j in mine)
        if end < len(idx) and mine:
            later = cand[start:end][mine] @ cand[end:].T >= limit  # (k, rest)
            covered[end:] |= later.any(axis=0)
    return idx[np.asarray(kept, dtype=np.int64)]


def nearest_other(points: np.ndarray, chunk: int = 512) -> np.ndarray:
    """(M, C) unit vectors -> (M,) each one's cosine distance to its nearest other point."""
    out = np.empty(len(points), np.float32)
    for start in range(0, len(points), chunk):
        sims = points[start:start + chunk] @ points.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf
        out[start:start + chunk] = 1.0 - sims.max(axis=1)
    return np.clip(out, 0.0, 2.0)
