"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017, arXiv:1703.05175).

A class is the mean of its support embeddings; a query scores softmax(-d^2 / T) over
its squared Euclidean distances d^2 to the prototypes.
Shapes: support (N, D), labels (N,), query (Q, D) -> scores and distances (Q, C).
"""

from __future__ import annotations

import numpy as np

from models.methods.base import FewShotMethod, MethodOutput, register_method, softmax


def prototypes(support: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, D), (N,) -> (C, D) class means."""
    protos = np.zeros((n_classes, support.shape[1]), dtype=np.float32)
    np.add.at(protos, labels, support)
    counts = np.bincount(labels, minlength=n_classes).astype(np.float32)
    return protos / np.maximum(counts, 1.0)[:, None]


# The softmax temperature of ProtoNet's scores where none is fitted (FSDI_TEMPERATURE).
DEFAULT_TEMPERATURE = 0.05


def squared_distances(query: np.ndarray, protos: np.ndarray, p2: np.ndarray | None = None
                      ) -> np.ndarray:
    """(Q, D), (C, D) -> (Q, C) squared Euclidean distances, via one matrix product.
    `p2` (C,), the prototypes' squared norms, may be precomputed once per support set."""
    q2 = np.einsum("qd,qd->q", query, query)[:, None]
    if p2 is None:
        p2 = np.einsum("cd,cd->c", protos, protos)
    return np.maximum(q2 + p2[None, :] - 2.0 * (query @ protos.T), 0.0)


def euclidean(query: np.ndarray, protos: np.ndarray, p2: np.ndarray | None = None
              ) -> np.ndarray:
    """(Q, D), (C, D) -> (Q, C) Euclidean distances (`squared_distances`' root)."""
    return np.sqrt(squared_distances(query, protos, p2), dtype=np.float32)


def score_from_distances(dist: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(-(dist.astype(np.float64) ** 2) / temperature).astype(np.float32)


@register_method
class ProtoNet(FewShotMethod):
    name = "protonet"

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, dim: int = 0,
                 pretrained: bool = True) -> None:
        # Nothing to load: ProtoNet's learning lives in the backbone's meta-trained head.
        self.temperature = temperature
        self.protos: np.ndarray | None = None
        self.proto_sq: np.ndarray | None = None

    def fit(self, support: np.ndarray, labels: np.ndarray) -> ProtoNet:
        return self.use_prototypes(prototypes(support, labels, int(labels.max()) + 1))

    def use_prototypes(self, protos: np.ndarray, proto_sq: np.ndarray | None = None
                       ) -> ProtoNet:
        """Class means computed elsewhere (C, D), and optionally their squared norms (C,)."""
        self.protos = protos
        self.proto_sq = (proto_sq if proto_sq is not None
                         else np.einsum("cd,cd->c", protos, protos))
        return self

    def predict(self, query: np.ndarray) -> MethodOutput:
        if self.protos is None:
            raise RuntimeError("fit() before predict()")
        dist = euclidean(query, self.protos, self.proto_sq)
        return MethodOutput(scores=score_from_distances(dist, self.temperature), distances=dist)
