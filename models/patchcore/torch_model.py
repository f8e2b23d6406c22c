"""The patch memory: good images' patch features, a query's distance map, its image score,
and a threshold calibrated from the good images alone.

Shapes: patches (N, C, h, w) unit vectors -> distance maps (N, h, w) in [0, 2] (cosine
distance to the nearest good patch) -> image scores (N,) = the mean of the map's top
`top_fraction` of patches (at least one), so score and heatmap never disagree.
"""

from __future__ import annotations

import math

import numpy as np

from models.patchcore.sampler import KCenterGreedy


class PatchMemory:
    def __init__(self, good: np.ndarray, sampler: KCenterGreedy | None = None,
                 top_fraction: float = 0.01, chunk: int = 4096) -> None:
        n, c, h, w = good.shape
        flat = good.transpose(0, 2, 3, 1).reshape(n * h * w, c).astype(np.float32)
        owner = np.repeat(np.arange(n), h * w)
        keep = sampler.select(flat) if sampler is not None else np.arange(len(flat))
        self.bank = np.ascontiguousarray(flat[keep])  # (M, C)
        self.owner = owner[keep]  # (M,) which good image each bank patch came from
        self.n_good = n
        self.grid = (h, w)
        self.top_fraction = top_fraction
        self.chunk = chunk

    def distances(self, patches: np.ndarray, exclude: int | None = None) -> np.ndarray:
        """(N, C, h, w) -> (N, h, w) cosine distance of each patch to its nearest bank
        patch; `exclude` leaves one good image's own patches out (leave-one-out)."""
        n, c, h, w = patches.shape
        q = patches.transpose(0, 2, 3, 1).reshape(-1, c).astype(np.float32)
        bank = self.bank if exclude is None else self.bank[self.owner != exclude]
        best = np.empty(len(q), np.float32)
        for i in range(0, len(q), self.chunk):
            best[i:i + self.chunk] = (q[i:i + self.chunk] @ bank.T).max(axis=1)
        return np.clip(1.0 - best, 0.0, 2.0).reshape(n, h, w)

    def image_scores(self, dist: np.ndarray) -> np.ndarray:
        """(N, h, w) -> (N,) the mean of each map's highest patches."""
        flat = dist.reshape(len(dist), -1)
        k = max(1, math.ceil(self.top_fraction * flat.shape[1]))
        return np.sort(flat, axis=1)[:, -k:].mean(axis=1)

    def leave_one_out(self, good: np.ndarray) -> np.ndarray:
        """(n, C, h, w) the bank's own good images -> (n,) each one's score against the
        bank without its patches: honest samples of how a good part scores."""
        if self.n_good < 2:
            return np.zeros(0, np.float32)
        return np.array([self.image_scores(self.distances(good[i:i + 1], exclude=i))[0]
                         for i in range(len(good))], np.float32)


def calibrate_threshold(loo: np.ndarray, false_alarm_rate: float) -> tuple[float, str | None]:
    """The score above which a part is called anomalous, so that about `false_alarm_rate` of
    good parts would be: the (1 - rate) quantile of the leave-one-out scores (the next
    sample up, never interpolated below it). With n scores no rate below 1/(n + 1) can be
    told apart: the warning says so. No scores (one good image): infinity and a warning."""
    if len(loo) == 0:
        return float("inf"), "one good image cannot calibrate a threshold; enrol more"
    thr = float(np.quantile(loo, 1.0 - false_alarm_rate, method="higher"))
    floor = 1.0 / (len(loo) + 1)
    warning = None
    if false_alarm_rate < floor:
        warning = (f"with {len(loo)} good images the false-alarm rate can only be set to about "
                   f"{floor:.0%}, not {false_alarm_rate:.0%}: enrol more good parts")
    return thr, warning
