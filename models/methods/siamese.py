"""Siamese networks (Koch, Zemel & Salakhutdinov, ICML-W 2015), as a learned correction on
top of the embedding distance.

p(same | a, b) = sigmoid(bias - SCALE * ||a - b||^2 + gate * g([|a - b|, a * b])): the
distance term says what the embedding already knows, the comparator g (an MLP) learns what
it misses, and the `gate` (starting at 0, its size penalised) keeps the comparator from
replacing the distance with one that suits only the meta-training sources; a comparator
learned from scratch trailed ProtoNet by 22 points on Fashion-MNIST. Trained on
same/different pairs drawn from episodes. A query's class logit puts the distance to the
class prototype in the distance term and averages the comparator over the class's support
images: with the gate at 0 it is ProtoNet's ranking, and with one image per class it is
the pair logit.
Shapes: pair_logits (A, D), (B, D) -> (A, B); episode_logits -> (Q, N).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.methods.base import register_method
from models.methods.meta_base import MetaMethod

SCALE = 10.0
GATE_PENALTY = 1.0


@register_method
class Siamese(MetaMethod):
    name = "siamese"

    def __init__(self, dim: int = 256, pretrained: bool = True, hidden: int = 128) -> None:
        super().__init__(dim, pretrained)
        self.g = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.gate = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(()))
        if pretrained:
            self.load_shipped()

    def correction(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(A, D), (B, D) -> (A, B): the comparator's learned term."""
        x = torch.cat([(a[:, None] - b[None]).abs(), a[:, None] * b[None]], dim=-1)
        return self.g(x).squeeze(-1)  # type: ignore[no-any-return]

    def pair_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = a[:, None] - b[None]
        return self.bias - SCALE * (diff * diff).sum(-1) + self.gate * self.correction(a, b)

    def episode_logits(self, sup: torch.Tensor, sup_y: torch.Tensor, qry: torch.Tensor,
                       n_way: int, train: bool) -> torch.Tensor:
        # The distance to the class prototype, and the comparator's term averaged over the
        # class's support images (for one image per class: exactly the pair logit).
        onehot = nn.functional.one_hot(sup_y, n_way).to(sup.dtype)  # (S, N)
        counts = onehot.sum(0).clamp_min(1)
        protos = (onehot.T @ sup) / counts[:, None]  # (N, D)
        diff = qry[:, None] - protos[None]
        pair = self.correction(qry, sup)  # (Q, S)
        return self.bias - SCALE * (diff * diff).sum(-1) \
            + self.gate * (pair @ onehot) / counts

    def episode_loss(self, logits: torch.Tensor, qry_y: torch.Tensor) -> torch.Tensor:
        # Pairs: the class-mean logits are trained as same/different pair decisions,
        # with the N - 1 negatives weighted to balance the one positive.
        target = nn.functional.one_hot(qry_y, logits.shape[1]).to(logits.dtype)
        pos_weight = torch.tensor(float(logits.shape[1] - 1))
        return nn.functional.binary_cross_entropy_with_logits(
            logits, target, pos_weight=pos_weight) + GATE_PENALTY * self.gate ** 2

    def same_probability(self, a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray
                         ) -> float:
        """p(same) for two embeddings (D,), as tensors or arrays."""
        ta, tb = (torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x,
                                  dtype=torch.float32) for x in (a, b))
        with torch.no_grad():
            return float(torch.sigmoid(self.pair_logits(ta[None], tb[None]))[0, 0])
