"""Enrolment report: can the classes of a group be told apart from their own support sets?

Each support image is held out in turn and classified by nearest prototype against its
own class's prototype without it and every other class's full prototype (leave-one-out).
A 1-shot class cannot be held out against itself; its image is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.calibration import loo_distances, loo_means
from models.methods.protonet import euclidean


@dataclass(frozen=True)
class ClassReport:
    index: int
    evaluated: int
    recall: float | None
    nearest_other: int | None
    nearest_other_distance: float | None
    spread: float | None  # mean leave-one-out distance to its own prototype
    warning: str | None


@dataclass(frozen=True)
class GroupReport:
    evaluated: int
    accuracy: float | None
    classes: list[ClassReport]
    confusable: tuple[int, int, int] | None  # (true, predicted, count), most frequent
    closest_pair: tuple[int, int, float] | None


def group_report(support: np.ndarray, labels: np.ndarray) -> GroupReport:
    n_cls = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=n_cls)
    sums = np.zeros((n_cls, support.shape[1]), np.float64)
    np.add.at(sums, labels, support)
    protos = sums / counts[:, None]
    confusion = np.zeros((n_cls, n_cls), np.int64)
    for c in range(n_cls):
        if counts[c] < 2:
            continue
        members = support[labels == c]
        for x, held_out in zip(members, loo_means(members, np.float64), strict=True):
            p = protos.copy()
            p[c] = held_out
            confusion[c, int(np.argmin(np.linalg.norm(p - x, axis=1)))] += 1
    pd = euclidean(protos, protos).astype(np.float64)
    np.fill_diagonal(pd, np.inf)
    classes = []
    for c in range(n_cls):
        ev = int(confusion[c].sum())
        recall = float(confusion[c, c] / ev) if ev else None
        other = int(np.argmin(pd[c])) if n_cls > 1 else None
        dist = float(pd[c, other]) if other is not None else None
        spread = (float(loo_distances(support[labels == c].astype(np.float32)).mean())
                  if counts[c] >= 2 else None)
        warning = None
        if recall is not None and recall < 0.5 and other is not None:
            warning = "most of its images are nearer another class: it cannot be told apart"
        elif spread is not None and dist is not None and dist < spread:
            warning = "its prototype is nearer another class than its own images are to it"
        classes.append(ClassReport(c, ev, recall, other, dist, spread, warning))
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    confusable = None
    if off.max() > 0:
        t, q = (int(v) for v in np.unravel_index(int(np.argmax(off)), off.shape))
        confusable = (t, q, int(off[t, q]))
    closest = None
    if n_cls > 1:
        a, b = np.unravel_index(int(np.argmin(pd)), pd.shape)
        closest = (int(min(a, b)), int(max(a, b)), float(pd[a, b]))
    total = int(confusion.sum())
    acc = float(np.trace(confusion) / total) if total else None
    return GroupReport(total, acc, classes, confusable, closest)
