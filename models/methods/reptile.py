"""Reptile (Nichol, Achiam & Schulman, arXiv:1803.02999, 2018).

MAML's model and adaptation (with the Proto-MAML head initialisation), but meta-trained
without differentiating through it: take `steps` SGD steps on the task's labelled
images, then move the initialisation a fraction `epsilon` of the way towards the adapted
weights, theta <- theta + epsilon * (theta' - theta). The head starts at each task's
prototypes, so only A is a meta-parameter. Same shapes as `maml`.
"""

from __future__ import annotations

import torch

from models.methods.base import register_method
from models.methods.maml import MAML


@register_method
class Reptile(MAML):
    name = "reptile"
    first_order = True
    epsilon = 0.1

    def meta_step(self, opt: torch.optim.Optimizer, sup: torch.Tensor, sup_y: torch.Tensor,
                  qry: torch.Tensor, qry_y: torch.Tensor, n_way: int) -> float:
        # Reported loss: the query loss after adapting on the support set, as at test time.
        with torch.no_grad():
            report = float(torch.nn.functional.cross_entropy(
                self.episode_logits(sup, sup_y, qry, n_way, train=False), qry_y))
        x, y = torch.cat([sup, qry]), torch.cat([sup_y, qry_y])
        A, _, _ = self.inner_loop(x, y, n_way, create_graph=False)
        with torch.no_grad():
            self.A.add_(self.epsilon * (A - self.A))
        return report
