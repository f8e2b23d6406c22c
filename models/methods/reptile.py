"""Reptile (Nichol, Achiam & Schulman, arXiv:1803.02999, 2018).

MAML's model and adaptation (with the Proto-MAML head initialisation), but meta-trained
without differentiating through it: take `steps` SGD steps on the task's labelled
images, then move the initialisation a fraction `epsilon` of the way towards the adapted
weights, theta <- theta + epsilon * (theta' - theta), and pull A towards the identity as
MAML's L2-SP does. The head starts at each task's prototypes, so only A is a
meta-parameter. Same shapes as `maml`.
"""

from __future__ import annotations

import torch

from models.methods.base import register_method
from models.methods.maml import L2_SP, MAML


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
            # MAML's L2-SP pull towards the identity (models.methods.maml), as a step of
            # the meta learning rate on its gradient: Reptile's update has no loss to add
            # it to.
            lr = float(opt.param_groups[0]["lr"])
            self.A.sub_(lr * 2.0 * L2_SP * (self.A - torch.eye(self.dim, dtype=self.A.dtype)))
        return report
