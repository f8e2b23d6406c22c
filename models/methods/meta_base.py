"""The shared base of methods with meta-learned parameters over frozen embeddings.

Every such method is an `nn.Module` that, given one episode, produces query logits
(`episode_logits`); meta-training minimises their loss over many episodes
(`meta_step`, overridden by Reptile's interpolation rule). `fit` runs the same
adaptation once on a group's whole support set; `predict` then only scores queries,
so the service never adapts per request.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.methods.base import FewShotMethod, MethodOutput

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "methods"


class MetaMethod(FewShotMethod, nn.Module):
    def __init__(self, dim: int = 256, pretrained: bool = True) -> None:
        nn.Module.__init__(self)
        self.dim = dim
        self.pretrained = pretrained
        self._support: tuple[torch.Tensor, torch.Tensor, int] | None = None

    def load_shipped(self) -> None:
        """Load this method's shipped safetensors; raise if it was never trained."""
        from safetensors.torch import load_file

        path = WEIGHTS / f"{self.name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no trained weights for {self.name!r} at {path}; "
                                    f"run `fsdi train --method {self.name}`")
        self.load_state_dict(load_file(str(path)), strict=True)
        self.eval()

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                  str(path))

    @abstractmethod
    def episode_logits(self, sup: torch.Tensor, sup_y: torch.Tensor, qry: torch.Tensor,
                       n_way: int, train: bool) -> torch.Tensor:
        """(S, D), (S,), (Q, D) -> (Q, n_way) logits."""

    def episode_loss(self, logits: torch.Tensor, qry_y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, qry_y)

    def meta_step(self, opt: torch.optim.Optimizer, sup: torch.Tensor, sup_y: torch.Tensor,
                  qry: torch.Tensor, qry_y: torch.Tensor, n_way: int) -> float:
        loss = self.episode_loss(self.episode_logits(sup, sup_y, qry, n_way, True), qry_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    def fit(self, support: np.ndarray, labels: np.ndarray) -> MetaMethod:
        self._support = (torch.from_numpy(np.ascontiguousarray(support, np.float32)),
                         torch.from_numpy(labels.astype(np.int64)), int(labels.max()) + 1)
        self.adapt()
        return self

    def adapt(self) -> None:
        """Hook for methods that adapt parameters once per support set."""

    def predict(self, query: np.ndarray) -> MethodOutput:
        if self._support is None:
            raise RuntimeError("fit() before predict()")
        sup, sup_y, n = self._support
        with torch.no_grad():
            logits = self.query_logits(torch.from_numpy(np.ascontiguousarray(query,
                                                                              np.float32)))
            scores = torch.softmax(logits, dim=1)
        return MethodOutput(scores=scores.numpy(), distances=(-logits).numpy())

    def query_logits(self, qry: torch.Tensor) -> torch.Tensor:
        assert self._support is not None
        sup, sup_y, n = self._support
        return self.episode_logits(sup, sup_y, qry, n, False)
