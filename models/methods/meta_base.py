"""The shared base of methods with meta-learned parameters over frozen embeddings.

Every such method is an `nn.Module` that, given one episode, produces query logits
(`episode_logits`); meta-training minimises their loss over many episodes
(`meta_step`, overridden by Reptile's interpolation rule). `fit` runs the same
adaptation once on a group's whole support set; `predict` then only scores queries,
so the service never adapts per request.
"""

from __future__ import annotations

import io
import warnings
from abc import abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.methods.base import WEIGHTS, FewShotMethod, MethodOutput


class MetaMethod(FewShotMethod, nn.Module):
    def __init__(self, dim: int = 256, pretrained: bool = True) -> None:
        nn.Module.__init__(self)
        self.dim = dim
        self.pretrained = pretrained
        self._support: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self._session: Any = None  # ONNX Runtime query scorer for the fitted support set

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
        # `dim` in the header lets a service tell whether these weights fit its embeddings
        # without loading torch (models.methods.registry.usable_methods).
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                  str(path), metadata={"dim": str(self.dim)})

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
        self._session = None
        self.adapt()
        return self

    def prepare(self, runtime: str) -> None:
        if runtime == "onnxruntime":
            self.compile_onnx()  # the per-query head runs in ONNX Runtime too

    def compile_onnx(self, threads: int = 1) -> None:
        """Export the fitted query scorer — (Q, D) -> (Q, C) logits, with the adapted
        weights and support set baked in — and run it with ONNX Runtime from now on."""
        import onnxruntime as ort

        if self._support is None:
            raise RuntimeError("fit() before compile_onnx()")
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes on the baked-in constants
            torch.onnx.export(_QueryScorer(self).eval(), (torch.zeros(2, self.dim),),
                              buf,  # type: ignore[arg-type]
                              input_names=["q"], output_names=["logits"],
                              dynamic_axes={"q": {0: "n"}, "logits": {0: "n"}},
                              opset_version=17, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self._session = ort.InferenceSession(buf.getvalue(), opts,
                                             providers=["CPUExecutionProvider"])

    def adapt(self) -> None:
        """Hook for methods that adapt parameters once per support set."""

    def predict(self, query: np.ndarray) -> MethodOutput:
        if self._support is None:
            raise RuntimeError("fit() before predict()")
        if self._session is not None:
            q = np.ascontiguousarray(query, np.float32)
            (lg,) = self._session.run(["logits"], {"q": q})
            z = lg - lg.max(axis=1, keepdims=True)
            e = np.exp(z)
            return MethodOutput(scores=e / e.sum(axis=1, keepdims=True), distances=-lg)
        with torch.no_grad():
            logits = self.query_logits(torch.from_numpy(np.ascontiguousarray(query,
                                                                              np.float32)))
            scores = torch.softmax(logits, dim=1)
        return MethodOutput(scores=scores.numpy(), distances=(-logits).numpy())

    def query_logits(self, qry: torch.Tensor) -> torch.Tensor:
        assert self._support is not None
        sup, sup_y, n = self._support
        return self.episode_logits(sup, sup_y, qry, n, False)


class _QueryScorer(nn.Module):
    """What runs per query once a method is fitted; traced for ONNX export."""

    def __init__(self, method: MetaMethod) -> None:
        super().__init__()
        self.method = method

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.method.query_logits(q)
