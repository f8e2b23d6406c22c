"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017, arXiv:1703.03400), with
the Proto-MAML head initialisation (Triantafillou et al., Meta-Dataset, ICLR 2020).

The adapted model is a small classifier over the frozen embedding: features h = A z
(A: D x D, meta-learned, starting from the identity), logits = s * (W h + b). The head is
not a meta-learned constant row but starts *at the prototypes* of the support set in h
space: W_k = 2 c_k, b_k = -||c_k||^2, so before any step the logits are
s * (||h||^2 - ||h - c_k||^2) and the decision is ProtoNet's (on the embedding as A maps
it). The whole model (A, W, b) then takes `steps` SGD steps on the group's support set;
meta-training back-propagates through those steps (second order) and through the
prototype initialisation into A. A head that starts where ProtoNet is can only be tuned
from there: a linear head started from one shared row underfits a new task (it trailed
ProtoNet by 19-42 points on Fashion-MNIST).
Shapes: support (S, D), query (Q, D) -> logits (Q, N).
"""

from __future__ import annotations

import torch
from torch import nn

from models.methods.base import register_method
from models.methods.meta_base import MetaMethod

Params = list[torch.Tensor]
L2_SP = 1.0
SCALE = 10.0  # logits = -SCALE * squared distance at the start: softmax at T = 0.1


@register_method
class MAML(MetaMethod):
    name = "maml"
    first_order = False

    def __init__(self, dim: int = 256, pretrained: bool = True, steps: int = 5,
                 inner_lr: float = 0.03) -> None:
        super().__init__(dim, pretrained)
        self.steps = steps
        self.inner_lr = inner_lr
        self.A = nn.Parameter(torch.eye(dim))
        self.extra_init()
        self._adapted: Params | None = None
        if pretrained:
            self.load_shipped()

    def extra_init(self) -> None:
        """Hook for subclasses' additional meta-parameters."""

    def init_params(self, sup: torch.Tensor, sup_y: torch.Tensor, n_way: int) -> Params:
        """[A, W, b]: the meta-learned A, and the head at the support set's prototypes in
        h space (differentiable in A)."""
        h = sup @ self.A.T
        onehot = nn.functional.one_hot(sup_y, n_way).to(h.dtype)  # (S, N)
        protos = (onehot.T @ h) / onehot.sum(0).clamp_min(1)[:, None]  # (N, D)
        return [self.A, 2.0 * protos, -(protos * protos).sum(1)]

    def episode_loss(self, logits: torch.Tensor, qry_y: torch.Tensor) -> torch.Tensor:
        # L2-SP (Li et al., 2018): A is pulled towards where it started, the identity, so
        # meta-training tunes the embedding rather than replacing it with one that suits
        # only the meta-training sources.
        drift = self.A - torch.eye(self.dim, dtype=self.A.dtype)
        return nn.functional.cross_entropy(logits, qry_y) + L2_SP * (drift * drift).sum()

    @staticmethod
    def forward_with(params: Params, x: torch.Tensor) -> torch.Tensor:
        A, W, b = params
        return SCALE * ((x @ A.T) @ W.T + b)

    def step_sizes(self) -> list[torch.Tensor | float]:
        return [self.inner_lr] * 3

    def inner_loop(self, sup: torch.Tensor, sup_y: torch.Tensor, n_way: int,
                   create_graph: bool) -> Params:
        with torch.enable_grad():  # adaptation needs gradients even at inference time
            params = self.init_params(sup, sup_y, n_way)
            for _ in range(self.steps):
                loss = nn.functional.cross_entropy(self.forward_with(params, sup), sup_y)
                # The graph is kept: the head's start depends on A, and every step's
                # parameters still lead back to it.
                grads = torch.autograd.grad(loss, params, create_graph=create_graph,
                                            retain_graph=True)
                params = [p - lr * g for p, g, lr in zip(params, grads, self.step_sizes(),
                                                         strict=True)]
        return params

    def episode_logits(self, sup: torch.Tensor, sup_y: torch.Tensor, qry: torch.Tensor,
                       n_way: int, train: bool) -> torch.Tensor:
        second_order = train and not self.first_order
        params = self.inner_loop(sup, sup_y, n_way, create_graph=second_order)
        if not train:
            params = [p.detach() for p in params]
        return self.forward_with(params, qry)

    def adapt(self) -> None:
        assert self._support is not None
        sup, sup_y, n = self._support
        self._adapted = [p.detach() for p in self.inner_loop(sup, sup_y, n, False)]

    def query_logits(self, qry: torch.Tensor) -> torch.Tensor:
        assert self._adapted is not None
        return self.forward_with(self._adapted, qry)
