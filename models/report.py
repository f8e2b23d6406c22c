"""Enrolment report: can the classes of a group be told apart from their own support sets?

Each support image is held out in turn and ranked as the service ranks it (ProtoNet, in
the part it ranks by): against its own class's prototype without it and every other
class's full prototype (leave-one-out). A 1-shot class cannot be held out against
itself; its image is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.inference import GroupIndex
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
    """The report of plain vectors (N, D) with their classes (N,): every image held out."""
    n_cls = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=n_cls)
    sums = np.zeros((n_cls, support.shape[1]), np.float64)
    np.add.at(sums, labels, support)
    return _report([support[labels == c] for c in range(n_cls)], sums / counts[:, None],
                   counts)


def served_report(index: GroupIndex) -> GroupReport:
    """The report of a served group, ranked as the service ranks it: in the part ProtoNet
    ranks by (`rank_by`). On the appearance part the entry keeps a few evenly spread
    support vectors per class (its probes), and those are the images held out."""
    counts = np.asarray([len(e.image_ids) for e in index.entries])
    if index.rank_by == "appearance" and index.app_prototypes is not None:
        held = [np.asarray(e.app_probes[0], np.float32) if e.app_probes is not None
                else np.zeros((0, index.app_prototypes.shape[1]), np.float32)
                for e in index.entries]
        return _report(held, index.app_prototypes.astype(np.float64), counts)
    return _report([e.support for e in index.entries],
                   index.prototypes.astype(np.float64), counts)


def _report(held: list[np.ndarray], protos: np.ndarray, counts: np.ndarray) -> GroupReport:
    """Each class's vectors in `held` (a subset of its support, or all of it) held out in
    turn: its class's prototype becomes the mean of the other `counts[c] - 1` images
    (exact, from the full prototype), every other prototype stays, and the nearest wins
    (ProtoNet's ranking)."""
    n_cls = len(held)
    confusion = np.zeros((n_cls, n_cls), np.int64)
    spreads: list[float | None] = []
    for c in range(n_cls):
        n = int(counts[c])
        if n < 2 or not len(held[c]):
            spreads.append(None)
            continue
        x = held[c].astype(np.float64)
        others = (n * protos[c][None] - x) / (n - 1)  # the class's prototype without x
        spreads.append(float(np.linalg.norm(x - others, axis=1).mean()))
        for xi, own in zip(x, others, strict=True):
            p = protos.copy()
            p[c] = own
            confusion[c, int(np.argmin(np.linalg.norm(p - xi, axis=1)))] += 1
    pd = euclidean(protos, protos).astype(np.float64)
    np.fill_diagonal(pd, np.inf)
    classes = []
    for c in range(n_cls):
        ev = int(confusion[c].sum())
        recall = float(confusion[c, c] / ev) if ev else None
        other = int(np.argmin(pd[c])) if n_cls > 1 else None
        dist = float(pd[c, other]) if other is not None else None
        spread = spreads[c]
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
