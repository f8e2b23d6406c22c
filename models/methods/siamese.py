"""Siamese networks (Koch, Zemel & Salakhutdinov, ICML-W 2015).

A learned pairwise similarity p(same | a, b) = sigmoid(g([|a - b|, a * b])), trained on
same/different pairs drawn from episodes. A query's class logit is the mean pair logit
over that class's support images.
Shapes: pair_logits (A, D), (B, D) -> (A, B); episode_logits -> (Q, N).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.methods.base import register_method
from models.methods.meta_base import MetaMethod


@register_method
class Siamese(MetaMethod):
    name = "siamese"

    def __init__(self, dim: int = 256, pretrained: bool = True, hidden: int = 128) -> None:
        super().__init__(dim, pretrained)
        self.g = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        if pretrained:
            self.load_shipped()

    def pair_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([(a[:, None] - b[None]).abs(), a[:, None] * b[None]], dim=-1)
        return self.g(x).squeeze(-1)  # type: ignore[no-any-return]

    def episode_logits(self, sup: torch.Tensor, sup_y: torch.Tensor, qry: torch.Tensor,
                       n_way: int, train: bool) -> torch.Tensor:
        pair = self.pair_logits(qry, sup)  # (Q, S)
        onehot = nn.functional.one_hot(sup_y, n_way).to(pair.dtype)  # (S, N)
        return (pair @ onehot) / onehot.sum(0).clamp_min(1)

    def episode_loss(self, logits: torch.Tensor, qry_y: torch.Tensor) -> torch.Tensor:
        # Pairs: the class-mean logits are trained as same/different pair decisions,
        # with the N - 1 negatives weighted to balance the one positive.
        target = nn.functional.one_hot(qry_y, logits.shape[1]).to(logits.dtype)
        pos_weight = torch.tensor(float(logits.shape[1] - 1))
        return nn.functional.binary_cross_entropy_with_logits(logits, target,
                                                              pos_weight=pos_weight)

    def same_probability(self, a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray
                         ) -> float:
        """p(same) for two embeddings (D,), as tensors or arrays."""
        ta, tb = (torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x,
                                  dtype=torch.float32) for x in (a, b))
        with torch.no_grad():
            return float(torch.sigmoid(self.pair_logits(ta[None], tb[None]))[0, 0])
