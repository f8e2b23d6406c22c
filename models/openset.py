"""Open-set evaluation through the served decision: enrol an episode's classes as the
service does (models.inference), then measure what is accepted, rejected and caught."""

from __future__ import annotations

import numpy as np

from models.inference import EnrolledClass, GroupIndex, ServingConfig, build_served_group


def rejection_rates(metric: np.ndarray, appearance: np.ndarray, labels: np.ndarray,
                    foreign: tuple[np.ndarray, np.ndarray], config: ServingConfig,
                    k_shot: int, n_way: int, episodes: int, seed: int,
                    groups: np.ndarray | None = None, q_query: int = 10,
                    foreign_per_episode: int = 30) -> dict[str, float]:
    """Enrol n_way classes from k_shot images each, built as the service builds them
    (`config`: its settings), then
    judge q_query held-out images of each class and foreign_per_episode images of an
    unrelated set. Returns the fractions: accepted with the right class, falsely
    rejected (a genuine member called unknown), and foreign rejected."""
    from models.data.episodes import EpisodeSampler

    sampler = EpisodeSampler(labels, n_way, k_shot, q_query, seed, groups=groups)
    rng = np.random.default_rng(seed + 1)
    full, foreign_full = _joined(metric, appearance), _joined(*foreign)
    right = false_reject = foreign_reject = 0
    for _ in range(episodes):
        ep = sampler.sample()
        index = episode_index(full[ep.support], ep.support_labels, n_way, config,
                              metric.shape[1])
        best, unk = served_decisions(index, full[ep.query])
        right += int(((best == ep.query_labels) & ~unk).sum())
        false_reject += int(unk.sum())
        f = rng.choice(len(foreign_full), foreign_per_episode, replace=False)
        foreign_reject += int(served_decisions(index, foreign_full[f])[1].sum())
    nq, nf = episodes * n_way * q_query, episodes * foreign_per_episode
    return {"accepted_correct": right / nq, "falsely_rejected": false_reject / nq,
            "foreign_rejected": foreign_reject / nf}


def novelty_rates(metric: np.ndarray, appearance: np.ndarray, labels: np.ndarray,
                  groups: np.ndarray, config: ServingConfig, k_shot: int,
                  known_defects: int, episodes: int, seed: int, q_query: int = 10
                  ) -> dict[str, float]:
    """Open set on one part: inside one group (surface), enrol label 0 ("ok") and
    `known_defects` random other labels from k_shot images each; then judge held-out
    images of those classes and images of the labels left out (defect types nobody
    enrolled). Returns: known accepted with the right class, known falsely rejected, and
    novel rejected (what an honest "unknown" should catch)."""
    rng = np.random.default_rng(seed)
    full = _joined(metric, appearance)
    right = false_reject = novel_reject = n_known = n_novel = 0
    defects = [int(c) for c in np.unique(labels) if c != 0]
    for _ in range(episodes):
        g = rng.choice(np.unique(groups))
        known = [0, *(int(c) for c in rng.choice(defects, known_defects, replace=False))]
        sups, sup_lab, queries, qlab = [], [], [], []
        for i, c in enumerate(known):
            idx = rng.permutation(np.flatnonzero((labels == c) & (groups == g)))
            sups.append(idx[:k_shot])
            sup_lab.append(np.full(len(idx[:k_shot]), i))
            queries.append(idx[k_shot:k_shot + q_query])
            qlab.append(np.full(len(queries[-1]), i))
        index = episode_index(full[np.concatenate(sups)], np.concatenate(sup_lab), len(known),
                              config, metric.shape[1])
        q, ql = np.concatenate(queries), np.concatenate(qlab)
        best, unk = served_decisions(index, full[q])
        right += int(((best == ql) & ~unk).sum())
        false_reject += int(unk.sum())
        n_known += len(q)
        novel = np.flatnonzero(~np.isin(labels, known) & (groups == g))
        nq = rng.choice(novel, min(len(novel), q_query * 3), replace=False)
        novel_reject += int(served_decisions(index, full[nq])[1].sum())
        n_novel += len(nq)
    return {"accepted_correct": right / n_known, "falsely_rejected": false_reject / n_known,
            "novel_rejected": novel_reject / n_novel}


def _joined(metric: np.ndarray, appearance: np.ndarray) -> np.ndarray:
    """Stored-vector form: [metric | appearance] per row."""
    return np.concatenate([metric, appearance], axis=1).astype(np.float32)


def episode_index(support: np.ndarray, labels: np.ndarray, n_way: int, config: ServingConfig,
                  metric_dim: int) -> GroupIndex:
    """An episode's classes (stored vectors, `metric_dim` of them ranking) through the
    served builder (models.inference.build_served_group): the index /classify decides by."""
    classes = [EnrolledClass(c, f"class{c}", "defect",
                             tuple(int(i) for i in np.flatnonzero(labels == c)),
                             support[labels == c]) for c in range(n_way)]
    return build_served_group("eval", classes, metric_dim, config).index


def served_decisions(index: GroupIndex, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The service's decision (models.inference.GroupIndex.decide) -> (winner, unknown)."""
    decisions = index.decide(queries, top_k=1)
    return (np.array([d.best.index for d in decisions], dtype=np.int64),
            np.array([d.unknown for d in decisions], dtype=bool))
