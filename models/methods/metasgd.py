"""Meta-SGD (Li, Zhou, Chen & Li, arXiv:1707.09835, 2017).

MAML's model (with the Proto-MAML head initialisation), but the parameters also have
meta-learned step sizes, adaptation being theta - alpha * grad with alpha learned with
theta: one per entry of A, one per feature column of the head's rows (shared by the
classes, whose rows are not meta-parameters), one for the biases. Same shapes as `maml`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.methods.base import register_method
from models.methods.maml import MAML


@register_method
class MetaSGD(MAML):
    name = "metasgd"

    def extra_init(self) -> None:
        lr = math.log(self.inner_lr)
        self.log_alpha_A = nn.Parameter(torch.full_like(self.A, lr))
        self.log_alpha_w = nn.Parameter(torch.full((self.dim,), lr))
        self.log_alpha_b = nn.Parameter(torch.full((), lr))

    def step_sizes(self) -> list[torch.Tensor | float]:
        return [self.log_alpha_A.exp(), self.log_alpha_w.exp()[None],
                self.log_alpha_b.exp()[None]]
