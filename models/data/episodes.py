"""N-way K-shot Q-query episodes over any labelled set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Episode:
    support: np.ndarray  # (N*K,) indices into the data set
    support_labels: np.ndarray  # (N*K,) in [0, N)
    query: np.ndarray  # (N*Q,)
    query_labels: np.ndarray  # (N*Q,)


class EpisodeSampler:
    """Draws episodes from the classes present in `labels`; a seed fixes the sequence."""

    def __init__(self, labels: np.ndarray, n_way: int, k_shot: int, q_query: int,
                 seed: int, groups: np.ndarray | None = None) -> None:
        """With `groups` (e.g. the surface of each image), an episode first draws one
        group, then its classes among that group's images only."""
        if groups is not None:  # a class is a (group, label) pair
            labels = groups.astype(np.int64) * (int(labels.max()) + 1) + labels
        self.by_class = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
        self.group_of = ({int(c): int(groups[ix[0]]) for c, ix in self.by_class.items()}
                         if groups is not None else None)
        if n_way > len(self.by_class):
            raise ValueError(f"{n_way}-way needs {n_way} classes; the set has "
                             f"{len(self.by_class)}")
        if self.group_of is not None:
            per_group = np.bincount(np.asarray(list(self.group_of.values())))
            if n_way > per_group[per_group > 0].min():
                raise ValueError(f"{n_way}-way needs {n_way} classes in every group")
        short = [c for c, ix in self.by_class.items() if len(ix) < k_shot + q_query]
        if short:
            raise ValueError(f"classes {short} have fewer than {k_shot + q_query} images")
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, q_query
        self.rng = np.random.default_rng(seed)

    def sample(self) -> Episode:
        pool = sorted(self.by_class)
        if self.group_of is not None:
            g = self.rng.choice(sorted(set(self.group_of.values())))
            pool = [c for c in pool if self.group_of[c] == g]
        classes = self.rng.choice(pool, self.n_way, replace=False)
        sup, sup_l, qry, qry_l = [], [], [], []
        for new, c in enumerate(classes):
            pick = self.rng.choice(self.by_class[int(c)], self.k_shot + self.q_query,
                                   replace=False)
            sup.append(pick[: self.k_shot])
            qry.append(pick[self.k_shot:])
            sup_l.append(np.full(self.k_shot, new))
            qry_l.append(np.full(self.q_query, new))
        return Episode(np.concatenate(sup), np.concatenate(sup_l), np.concatenate(qry),
                       np.concatenate(qry_l))
