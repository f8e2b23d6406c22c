"""The patch memory: good images' patch features, a query's distance map, its image score,
and a threshold calibrated from the good images (or, while they are few, balanced
against defect images).

Shapes: patches (N, h, w, C) unit vectors -> distance maps (N, h, w) in [0, 2] (cosine
distance to the nearest good patch) -> image scores (N,) = the mean of the map's top
`top_fraction` of patches (at least one), so score and heatmap never disagree.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar

import numpy as np

from models.patchcore.sampler import KCenterGreedy, greedy_net, nearest_other

TOP_FRACTION = 0.01
# The largest cosine distance between unit vectors: a threshold here flags nothing.
MAX_DISTANCE = 2.0
# The bank is searched in the span of its own top singular directions (the line's own
# good-patch subspace), 64 of the 192 feature dimensions: a third of the arithmetic per
# query patch. A defect patch's energy outside that span still lowers its best match
# (|Pq . Pb| <= |Pq| < 1), so it still stands out; measured in models/MODEL_CARD.md.
PROJECTION_DIMS = 64
# Leave-one-out calibration scores at most this many good images (spread evenly over the
# enrolment order): exact leave-one-out costs n^2 and a threshold at a 2% false-alarm
# rate is as well resolved by 64 scores as by 200.
MAX_HELD_OUT = 64
# With a single good image, each patch is scored against the image's own patches beyond
# this many cells (its 3 x 3 neighbourhood left out: neighbours overlap in what they see).
SELF_RADIUS = 1
# ... and, for the spread of good scores that one image cannot otherwise give, its grid is
# scored in 2 x 2 blocks (`region_scores`; 3 x 3 blocks were measured too, in
# models/MODEL_CARD.md).
REGION_PARTS = 2


# A bank at least this large is searched on `set_search_threads` cores at once, inside
# `spread_search()` (where the caller knows the other cores are idle).
SPLIT_MIN_PATCHES = 4096
_search_pool: ThreadPoolExecutor | None = None
_spread: ContextVar[bool] = ContextVar("fsdi_spread_search", default=False)


@contextlib.contextmanager
def spread_search() -> Iterator[None]:
    """Within this block (and what it hands to threads with its context), large banks
    are searched on every search thread at once."""
    token = _spread.set(True)
    try:
        yield
    finally:
        _spread.reset(token)


def set_search_threads(n: int) -> None:
    """Search large banks on `n` threads (the caller's and n - 1 helpers); 1: one."""
    global _search_pool
    old, _search_pool = _search_pool, (
        ThreadPoolExecutor(n - 1, thread_name_prefix="fsdi-search") if n > 1 else None)
    if old is not None:
        old.shutdown(wait=False)


def _best_match(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    return (queries @ bank.T).max(axis=1)


# The bank holds at most this many patches by default (FSDI_ANOMALY_MEMORY_PATCHES): about
# 83 good images' worth at 14 x 14, so smaller groups keep every patch (exact), and a
# group of thousands costs what one of ~83 does (why this value: bench/README.md).
MEMORY_PATCHES = 16_384
# When a capped bank overflows, it is thinned to between these shares of its cap: room for
# the next images' new patches without thinning again at once, and most of the cap used.
THIN_TO = (0.6, 0.8)


class PatchMemory:
    """The good images' patches, searched for each query patch's nearest neighbour.

    With `cap` None, or while the good images' patches fit under it, the bank is every
    patch (exact). Past it the bank is a cover of every patch seen (the streaming form of
    PatchCore's k-center coreset: Charikar et al., STOC 1997): a new patch joins only if
    it is farther than `radius` from every bank patch, and when the bank overflows,
    `radius` grows and the bank is thinned to a `radius`-net of itself, kept in order.
    Every patch seen stays within about 2 x `radius` of a bank patch, so a query's
    distance is at most that far above the exact one. Images are taken strictly in order,
    one at a time, so the bank depends only on the sequence of good images, not on how
    it arrived: `extend` after `PatchMemory(a)` gives what `PatchMemory(a + b)` gives,
    and replicas that saw the same enrolments in different batches agree.

    The projection (`PROJECTION_DIMS`) is fitted on the images that fit under the cap
    (all of them while it is not reached) and then kept.
    """

    def __init__(self, good: np.ndarray, sampler: KCenterGreedy | None = None,
                 top_fraction: float = TOP_FRACTION, chunk: int = 256,
                 dims: int | None = PROJECTION_DIMS, cap: int | None = None) -> None:
        n, h, w, c = good.shape
        self.grid = (h, w)
        self.top_fraction = top_fraction
        self.chunk = chunk
        self.dims = dims
        self.cap = cap
        self.radius = 0.0  # 0: the bank holds every patch seen (exact)
        per = h * w
        first = n if cap is None or n * per <= cap else max(1, cap // per)
        flat = np.ascontiguousarray(good, dtype=np.float32).reshape(n * per, c)
        head = flat[:first * per]
        # (C, k) onto the good patches' top-k right singular vectors (uncentred: cosine
        # geometry is kept), or None to search the full features.
        self.projection: np.ndarray | None = None
        if dims is not None and dims < c:
            _, vecs = np.linalg.eigh(head.T @ head)  # ascending eigenvalues
            self.projection = np.ascontiguousarray(vecs[:, ::-1][:, :dims], np.float32)
        projected = self._project(head)
        keep = sampler.select(projected) if sampler is not None else np.arange(len(head))
        self.bank = np.ascontiguousarray(projected[keep])  # (M, C or k)
        self.owner = np.repeat(np.arange(first), per)[keep]  # (M,) each patch's image
        # The bank's full features while it is exact and still fitting its projection, so
        # that an extension that stays under the cap refits it exactly as a fresh build.
        self._full: np.ndarray | None = head if sampler is None and cap is not None else None
        self.n_good = first
        self.bank.setflags(write=False)
        if first < n:
            self._admit(flat[first * per:].reshape(n - first, per, c))

    def _project(self, flat: np.ndarray) -> np.ndarray:
        return flat if self.projection is None else flat @ self.projection

    def extend(self, more: np.ndarray) -> PatchMemory:
        """A new memory with the good images `more` (n, h, w, C) after this one's: what a
        fresh build of all of them gives, at the cost of the new images alone (while the
        bank is exact and under its cap, the cost of refitting its projection)."""
        n, h, w, c = more.shape
        if (h, w) != self.grid:
            raise ValueError(f"patch grid {(h, w)} is not the memory's {self.grid}")
        per = h * w
        if self._full is not None:  # exact so far: exactly a fresh build
            old = self._full.reshape(self.n_good, h, w, c)
            return PatchMemory(np.concatenate([old, np.asarray(more, np.float32)]),
                               top_fraction=self.top_fraction, chunk=self.chunk,
                               dims=self.dims, cap=self.cap)
        if self.cap is None:
            raise ValueError("only a memory with a cap can be extended")
        new = copy.copy(self)
        new._admit(np.ascontiguousarray(more, np.float32).reshape(n, per, c))
        return new

    def _admit(self, images: np.ndarray) -> None:
        """Take (n, h*w, C) images in order: each patch farther than `radius` from every
        bank patch (and from those of its image admitted before it) joins; an overflow
        thins the bank."""
        assert self.cap is not None
        self._full = None
        bank, owner = self.bank, self.owner
        for img in images:
            q = self._project(img)
            if self.radius == 0.0 and len(bank) + len(q) <= self.cap:
                take = np.arange(len(q))
            else:
                near = np.max(q @ bank.T, axis=1) if len(bank) else np.full(len(q), -1.0)
                take = greedy_net(q, self.radius, order=np.flatnonzero(
                    1.0 - near > self.radius))
            bank = np.concatenate([bank, q[take]])
            owner = np.concatenate([owner, np.full(len(take), self.n_good)])
            self.n_good += 1
            if len(bank) > self.cap:
                bank, owner = self._thin(bank, owner)
        self.bank = np.ascontiguousarray(bank, np.float32)
        self.bank.setflags(write=False)
        self.owner = owner

    def _thin(self, bank: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The smallest radius found (by bisection, never below the current one) whose
        `radius`-net of the bank, in order, holds at most THIN_TO[1] of the cap, stopping
        once it holds at least THIN_TO[0]; the bank becomes that net."""
        assert self.cap is not None
        low, high = (int(f * self.cap) for f in THIN_TO)
        lo = self.radius  # a net at `lo` keeps too many
        if lo == 0.0:  # where most patches have a neighbour: a first guess from below
            nn = nearest_other(bank, self.chunk)
            lo = float(np.quantile(nn, 1.0 - high / len(bank))) / 2
        hi = max(2.0 * lo, 1e-3)
        while len(greedy_net(bank, hi)) > high:  # find a radius that keeps few enough
            lo, hi = hi, 2.0 * hi
        keep = greedy_net(bank, hi)
        for _ in range(12):
            if len(keep) >= low:
                break
            mid = (lo + hi) / 2
            trial = greedy_net(bank, mid)
            if len(trial) > high:
                lo = mid
            else:
                hi, keep = mid, trial
        self.radius = hi
        return bank[keep], owner[keep]

    @property
    def nbytes(self) -> int:
        extra = 0 if self.projection is None else self.projection.nbytes
        return int(self.bank.nbytes + self.owner.nbytes + extra)

    def distances(self, patches: np.ndarray, exclude: int | None = None) -> np.ndarray:
        """(N, h, w, C) -> (N, h, w) cosine distance of each patch to its nearest bank
        patch; `exclude` leaves one good image's own patches out (leave-one-out)."""
        n, h, w, c = patches.shape
        q = np.ascontiguousarray(patches, dtype=np.float32).reshape(-1, c)
        if self.projection is not None:
            q = q @ self.projection
        bank = self.bank if exclude is None else self.bank[self.owner != exclude]
        best = np.empty(len(q), np.float32)
        pool = _search_pool if _spread.get() else None
        parts = (np.array_split(bank, pool._max_workers + 1)  # type: ignore[attr-defined]
                 if pool is not None and len(bank) >= SPLIT_MIN_PATCHES else [bank])
        # A few hundred query patches at a time: the similarity block stays in cache for
        # the max that follows, where thousands at once would not. A large bank
        # is searched in slices on several cores at once (matrix products release the
        # GIL), so one request alone gets them all.
        for i in range(0, len(q), self.chunk):
            block = q[i:i + self.chunk]
            if len(parts) == 1:
                best[i:i + self.chunk] = (block @ bank.T).max(axis=1)
                continue
            assert pool is not None
            futures = [pool.submit(_best_match, block, part) for part in parts[1:]]
            top = _best_match(block, parts[0])
            for f in futures:
                np.maximum(top, f.result(), out=top)
            best[i:i + self.chunk] = top
        return np.clip(1.0 - best, 0.0, 2.0).reshape(n, h, w)

    def image_scores(self, dist: np.ndarray) -> np.ndarray:
        """(N, h, w) -> (N,) the mean of each map's highest patches."""
        flat = dist.reshape(len(dist), -1)
        k = max(1, math.ceil(self.top_fraction * flat.shape[1]))
        return np.sort(flat, axis=1)[:, -k:].mean(axis=1)

    def regions(self, patches: np.ndarray, dist: np.ndarray | None = None) -> np.ndarray:
        """(N, h, w, C) patches (and their distance maps, if already computed) -> (N, C)
        unit descriptors of where each image is least like any good part: the mean of
        the patch features the image score comes from (its top `top_fraction`). What a
        defect looks like, without the rest of the part around it."""
        if dist is None:
            dist = self.distances(patches)
        n, h, w, c = patches.shape
        k = max(1, math.ceil(self.top_fraction * h * w))
        top = np.argsort(dist.reshape(n, -1), axis=1)[:, -k:]
        flat = np.asarray(patches, np.float32).reshape(n, h * w, c)
        region = flat[np.arange(n)[:, None], top].mean(axis=1)
        return region / np.maximum(np.linalg.norm(region, axis=1, keepdims=True), 1e-12)

    def leave_region_out(self, image: np.ndarray, radius: int = SELF_RADIUS) -> float:
        """(h, w, C) one image's patches -> its score when each patch may match only the
        same image's patches farther than `radius` cells away (Chebyshev): leave-one-out
        within a single image, for a memory of one good image. Optimistic (a part's
        regions resemble each other more than another part's), so only ever one side of
        a balanced threshold."""
        return self.own_scores(image, radius=radius)[0]

    def region_scores(self, image: np.ndarray, parts: int = REGION_PARTS,
                      radius: int = SELF_RADIUS) -> np.ndarray:
        """(h, w, C) one image's patches -> (parts²,) the same leave-region-out distances
        scored block by block (a `parts` x `parts` split of the grid, each block's top
        `top_fraction`): samples of how good material scores against good material, whose
        spread a single good image can give where nothing else can."""
        return self.own_scores(image, parts, radius)[1]

    def own_scores(self, image: np.ndarray, parts: int = REGION_PARTS,
                   radius: int = SELF_RADIUS) -> tuple[float, np.ndarray]:
        """`leave_region_out` and `region_scores` of one image from one pass over it."""
        dist = self._self_distances(image, radius)
        rows = np.array_split(np.arange(dist.shape[0]), parts)
        cols = np.array_split(np.arange(dist.shape[1]), parts)
        blocks = np.array([self.image_scores(dist[np.ix_(r, c)][None])[0]
                           for r in rows for c in cols], np.float32)
        return float(self.image_scores(dist[None])[0]), blocks

    def _self_distances(self, image: np.ndarray, radius: int) -> np.ndarray:
        """(h, w, C) -> (h, w) each patch's cosine distance to the nearest patch of the
        same image farther than `radius` cells away."""
        h, w, c = image.shape
        q = np.ascontiguousarray(image, dtype=np.float32).reshape(h * w, c)
        if self.projection is not None:
            q = q @ self.projection
        sim = q @ q.T
        yy, xx = np.divmod(np.arange(h * w), w)
        near = (np.abs(yy[:, None] - yy[None]) <= radius) & \
            (np.abs(xx[:, None] - xx[None]) <= radius)
        sim[near] = -np.inf
        best = sim.max(axis=1)
        return np.clip(1.0 - np.where(np.isfinite(best), best, -1.0), 0.0, 2.0).reshape(h, w)

    def leave_one_out(self, good: np.ndarray, max_held_out: int | None = MAX_HELD_OUT
                      ) -> np.ndarray:
        """(n, h, w, C) the bank's own good images -> the scores of up to `max_held_out`
        of them (evenly spread), each against the bank without its own patches: honest
        samples of how a good part scores."""
        held = held_out(len(good), max_held_out)
        return self.scores_without(good[held], held)

    def scores_without(self, images: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """(k, h, w, C) good images of this memory, at these positions in its sequence ->
        each one's score against the bank without its own patches. In a capped bank,
        patches of other images that one of its patches stood in for are missing too, so
        the score errs high: the threshold errs towards fewer false alarms."""
        if self.n_good < 2:
            return np.zeros(0, np.float32)
        return np.array([self.image_scores(self.distances(img[None], exclude=int(i)))[0]
                         for img, i in zip(images, positions, strict=True)], np.float32)


def held_out(n: int, max_held_out: int | None = MAX_HELD_OUT) -> np.ndarray:
    """Which of n good images (positions in enrolment order) leave-one-out scores: all of
    them, or `max_held_out` spread evenly."""
    if max_held_out is None or n <= max_held_out:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_held_out).round().astype(int))


def calibrate_threshold(loo: np.ndarray, false_alarm_rate: float) -> tuple[float, str | None]:
    """The score above which a part is called anomalous, so that about `false_alarm_rate` of
    good parts would be: the (1 - rate) quantile of the leave-one-out scores (the next
    sample up, never interpolated below it). With n scores no rate below 1/(n + 1) can be
    told apart: the warning says so. No scores (one good image): MAX_DISTANCE, which no
    score exceeds (nothing is flagged), and a warning."""
    if len(loo) == 0:
        return MAX_DISTANCE, ("one good image cannot calibrate a threshold: nothing is "
                              "flagged until there are two; enrol more")
    thr = float(np.quantile(loo, 1.0 - false_alarm_rate, method="higher"))
    floor = 1.0 / (len(loo) + 1)
    warning = None
    if false_alarm_rate < floor:
        warning = (f"with {len(loo)} good images the false-alarm rate can only be set to about "
                   f"{floor:.0%}, not {false_alarm_rate:.0%}: enrol more good parts")
    return thr, warning


def balanced_threshold(loo: np.ndarray, defect_scores: np.ndarray) -> float | None:
    """Midway between the mean leave-one-out score of the good images and the mean score of
    enrolled defect images: the threshold that weighs a missed defect and a false alarm
    alike, when the good images are too few to place a false-alarm rate. None when there
    is nothing to weigh (no good or no defect scores) or when the defect images score no
    higher than good ones on average (they show nothing the good parts lack)."""
    if len(loo) == 0 or len(defect_scores) == 0:
        return None
    good, bad = float(np.mean(loo)), float(np.mean(defect_scores))
    if bad <= good:
        return None
    return (good + bad) / 2.0
