"""Build a registered backbone by name (the registry lives in models.backbones; importing
the built-in modules here registers them)."""

from __future__ import annotations

import torch

from models import effnet  # noqa: F401 - registers the EfficientNet-Lite backbones
from models.backbones import _REGISTRY, PRECISIONS, Backbone, files_sha256


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def create_backbone(name: str, precision: str = "fp32") -> Backbone:
    """Build a registered backbone; raise KeyError naming the valid ones otherwise."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use {' or '.join(PRECISIONS)}")
    bb = _REGISTRY[name]()
    bb.precision = precision
    bb.net.eval()
    bb.weights_sha256 = files_sha256(bb.weight_files)
    with torch.no_grad():
        size = bb.preprocess.input_size
        bb.dim = int(bb.net(torch.zeros(1, 3, size, size)).shape[1])
        if bb.patch_layers:
            _, patches = bb.serving(patches=True)(
                torch.zeros(1, size, size, bb.preprocess.channels, dtype=torch.uint8))
            bb.patch_shape = tuple(int(v) for v in patches.shape[1:])  # type: ignore[assignment]
    bb.metric_dim = bb.metric_dim or bb.dim
    return bb


