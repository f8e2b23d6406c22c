"""Local patch features from named blocks of the EfficientNet-Lite trunk, taken from the
served network's own forward pass (`tapped`), so the good-parts memory costs no second
run of the trunk.

Each named block's output is resized to the deepest block's grid and the blocks are
concatenated; each patch vector is then L2-normalised (distances are cosine distances).
No neighbourhood averaging (PatchCore's 3 x 3): at 1/16 scale every feature already sees
well beyond its cell, and averaging blurs small defects away (models/MODEL_CARD.md).
Shapes: block maps (N, C_i, h, w) -> (N, h, w, C) channels-last unit vectors,
C = the named blocks' channels (Lite0 blocks 5 and 10: 80 + 112 = 192, h = w = S/16).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from models.backbones import PATCH_POOL as POOL
from models.backbones import PATCH_RECIPE as RECIPE  # noqa: F401 - named with this code


def patch_features(maps: list[torch.Tensor], pool: int = POOL) -> torch.Tensor:
    """Block outputs, shallow to deep -> (N, h, w, C) unit patch vectors."""
    taken = maps if pool == 1 else [
        nn.functional.avg_pool2d(m, pool, stride=1, padding=pool // 2, count_include_pad=False)
        for m in maps]
    size = taken[-1].shape[-2:]
    feats = torch.cat([f if f.shape[-2:] == size else
                       nn.functional.interpolate(f, size=size, mode="bilinear",
                                                 align_corners=False) for f in taken], 1)
    return nn.functional.normalize(feats, dim=1).permute(0, 2, 3, 1).contiguous()


def find_trunk(net: nn.Module) -> Any:
    """The EfficientNet trunk inside a served network (the module with `_blocks`)."""
    for m in net.modules():
        if hasattr(m, "_blocks"):
            return m
    raise ValueError(f"{type(net).__name__} has no EfficientNet trunk to take patches from")


class Taps:
    def __init__(self, layers: tuple[int, ...]) -> None:
        self.layers = tuple(sorted(layers))
        self.maps: dict[int, torch.Tensor] = {}

    def patches(self) -> torch.Tensor:
        missing = [i for i in self.layers if i not in self.maps]
        if missing:
            raise RuntimeError(f"trunk blocks {missing} did not run")
        return patch_features([self.maps[i] for i in self.layers])


@contextlib.contextmanager
def tapped(net: nn.Module, layers: tuple[int, ...]) -> Iterator[Taps]:
    """Record the outputs of the trunk's named blocks while `net` runs (forward hooks,
    removed on exit; they trace into the ONNX export like any other op)."""
    trunk = find_trunk(net)
    taps = Taps(layers)
    handles = []
    for i in taps.layers:
        def hook(_m: nn.Module, _inp: Any, out: torch.Tensor, i: int = i) -> None:
            taps.maps[i] = out
        handles.append(trunk._blocks[i].register_forward_hook(hook))
    try:
        yield taps
    finally:
        for h in handles:
            h.remove()


class PatchFeatureExtractor(nn.Module):
    """The trunk alone, run only as far as its deepest named block:
    (N, 3, S, S) normalised images -> (N, h, w, C) unit patch vectors."""

    def __init__(self, trunk: nn.Module, layers: tuple[int, ...] = (5, 10)) -> None:
        super().__init__()
        self.trunk = trunk
        self.layers = tuple(sorted(layers))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t: Any = self.trunk
        h = t._swish(t._bn0(t._conv_stem(x)))
        taken = []
        for i, block in enumerate(t._blocks):
            h = block(h)
            if i in self.layers:
                taken.append(h)
            if i == self.layers[-1]:
                break
        return patch_features(taken)
