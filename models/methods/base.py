"""The method base: support embeddings + labels in -> a classifier for query embeddings."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class MethodOutput:
    """scores: (Q, C) in [0, 1], rows sum to 1. distances: (Q, C), smaller is closer."""

    scores: np.ndarray
    distances: np.ndarray


class FewShotMethod(ABC):
    """Fit once per support set (the service caches the fitted method), predict per query.

    support: (N, D) float32 unit-norm embeddings; labels: (N,) ints in [0, C), every class
    present at least once.
    """

    name: ClassVar[str]

    @abstractmethod
    def fit(self, support: np.ndarray, labels: np.ndarray) -> FewShotMethod: ...

    @abstractmethod
    def predict(self, query: np.ndarray) -> MethodOutput: ...

    def prepare(self, runtime: str) -> None:  # noqa: B027 - optional hook, no-op by default
        """After `fit`: get ready to serve on `runtime` ("onnxruntime" or "torch")."""


_REGISTRY: dict[str, Callable[..., FewShotMethod]] = {}
# The shipped weights of methods that learn parameters, one safetensors file each.
WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "methods"


def register_method(cls: type[FewShotMethod]) -> type[FewShotMethod]:
    if cls.name in _REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
