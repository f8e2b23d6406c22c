"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017, arXiv:1703.03400).

The adapted model is a small classifier over the frozen embedding: features
h = A z (A: H x D), logits = s * (W h + b). Its *initialisation* is meta-learned: A, and
one row w0 / bias b0 that every class's row starts from, so any number of classes can be
adapted. At enrolment time the whole model (A, W, b) takes `steps` SGD steps on the
group's support set; meta-training back-propagates through those steps (second order).
Shapes: support (S, D), query (Q, D) -> logits (Q, N).
"""

from __future__ import annotations

import torch
from torch import nn

from models.methods.base import register_method
from models.methods.meta_base import MetaMethod

Params = list[torch.Tensor]
SCALE = 10.0


@register_method
class MAML(MetaMethod):
    name = "maml"
    first_order = False

    def __init__(self, dim: int = 256, pretrained: bool = True, hidden: int = 64,
                 steps: int = 5, inner_lr: float = 0.1) -> None:
        super().__init__(dim, pretrained)
        self.steps = steps
        self.inner_lr = inner_lr
        self.A = nn.Parameter(torch.empty(hidden, dim))
        nn.init.orthogonal_(self.A)
        self.w0 = nn.Parameter(torch.zeros(hidden))
        self.b0 = nn.Parameter(torch.zeros(()))
        self.extra_init()
        self._adapted: Params | None = None
        if pretrained:
            self.load_shipped()

    def extra_init(self) -> None:
        """Hook for subclasses' additional meta-parameters."""

    def init_params(self, n_way: int) -> Params:
        return [self.A, self.w0[None].expand(n_way, -1), self.b0[None].expand(n_way)]

    @staticmethod
    def forward_with(params: Params, x: torch.Tensor) -> torch.Tensor:
        A, W, b = params
        return SCALE * ((x @ A.T) @ W.T + b)

    def step_sizes(self) -> list[torch.Tensor | float]:
        return [self.inner_lr] * 3

    def inner_loop(self, sup: torch.Tensor, sup_y: torch.Tensor, n_way: int,
                   create_graph: bool) -> Params:
        with torch.enable_grad():  # adaptation needs gradients even at inference time
            params = self.init_params(n_way)
            for _ in range(self.steps):
                loss = nn.functional.cross_entropy(self.forward_with(params, sup), sup_y)
                grads = torch.autograd.grad(loss, params, create_graph=create_graph)
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
