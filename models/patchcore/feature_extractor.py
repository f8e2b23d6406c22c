"""Local patch features from named layers of the EfficientNet-Lite trunk.

Shapes: (N, 3, S, S) normalised images -> (N, C, S/16, S/16) unit-norm patch features,
C = the named blocks' channels (Lite0 blocks 5 and 10: 80 + 112 = 192).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class PatchFeatureExtractor(nn.Module):
    """Runs the trunk only as far as its deepest named block. Each named block's output is
    averaged over a `pool` x `pool` neighbourhood (a patch sees a little context, as in
    PatchCore), resized to the deepest block's grid, and the blocks are concatenated;
    each patch vector is then L2-normalised (distances are cosine distances)."""

    def __init__(self, trunk: nn.Module, layers: tuple[int, ...] = (5, 10), pool: int = 3
                 ) -> None:
        super().__init__()
        self.trunk = trunk
        self.layers = tuple(sorted(layers))
        self.pool = nn.AvgPool2d(pool, stride=1, padding=pool // 2, count_include_pad=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t: Any = self.trunk
        h = t._swish(t._bn0(t._conv_stem(x)))
        taken = []
        for i, block in enumerate(t._blocks):
            h = block(h)
            if i in self.layers:
                taken.append(self.pool(h))
            if i == self.layers[-1]:
                break
        size = taken[-1].shape[-2:]
        feats = torch.cat([f if f.shape[-2:] == size else
                           nn.functional.interpolate(f, size=size, mode="bilinear",
                                                     align_corners=False) for f in taken], 1)
        return nn.functional.normalize(feats, dim=1)
