"""The defect-aware embedding: multi-scale, background-relative pooling + a meta-trained
projection.

A frozen ImageNet network with global average pooling encodes mostly the surface; a
small defect barely moves the mean. Here every feature map X (C, H, W) is pooled twice:

    g     = mean_p X_p                                  (the global look)
    local = mean of the top-k over p of (X_p - g)       (what stands out from the part's
                                                         own background, per channel)

at two scales (block 10, 112 x 14 x 14, for fine detail; the head conv, 1280 x 7 x 7).
The pooled descriptor (2 x 1280 + 2 x 112 = 2784) is standardised and projected to a
256-d unit vector by a linear head meta-trained with ProtoNet episodes (P>M>F recipe:
ImageNet trunk, then meta-training; arXiv:2204.07305). The pooling is fixed, so
meta-training runs on cached descriptors and finishes on a 2-core CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

MID_BLOCK = 10
TOPK_FRACTION = 0.1


def local_pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W) -> global mean (N, C) and top-k background-relative mean (N, C)."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    g = flat.mean(dim=2)
    k = max(1, int(TOPK_FRACTION * int(h) * int(w) + 0.5))  # fixed by the input size
    local = torch.topk(flat - g[:, :, None], k, dim=2).values.mean(dim=2)
    return g, local


class DescriptorTrunk(nn.Module):
    """(N, 3, S, S) normalised images -> (N, 2784) pooled multi-scale descriptor."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t: Any = self.trunk
        # `_swish` is the package's name for the activation: for Lite0 it is ReLU6.
        h = t._swish(t._bn0(t._conv_stem(x)))
        mid = h
        for i, block in enumerate(t._blocks):
            h = block(h)
            if i == MID_BLOCK:
                mid = h
        final = t._swish(t._bn1(t._conv_head(h)))
        gf, lf = local_pool(final)
        gm, lm = local_pool(mid)
        return torch.cat([gf, lf, gm, lm], dim=1)


GLOBAL_POOL_DIM = 1280  # the descriptor starts with the head conv's global pool
DESCRIPTOR_DIM = 2 * GLOBAL_POOL_DIM + 2 * 112


def global_pool(descriptor: np.ndarray) -> np.ndarray:
    """(N, DESCRIPTOR_DIM) descriptors -> (N, 1280) ImageNet global pools (not normalised)."""
    return descriptor[:, :GLOBAL_POOL_DIM]


class ProjectionHead(nn.Module):
    """(N, 2784) -> (N, out_dim) unit vectors: standardise with fixed statistics, project."""

    def __init__(self, in_dim: int = DESCRIPTOR_DIM, out_dim: int = 256) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.proj = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.orthogonal_(self.proj.weight)

    def set_statistics(self, feats: torch.Tensor) -> None:
        self.get_buffer("mean").copy_(feats.mean(0))
        self.get_buffer("std").copy_(feats.std(0).clamp_min(1e-3))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        z = (f - self.get_buffer("mean")) / self.get_buffer("std")
        return nn.functional.normalize(self.proj(z), dim=1)


class DefectAwareEmbedder(nn.Module):
    """(N, 3, S, S) -> (N, out_dim + 1280): the meta-trained defect-aware unit vector,
    then the unit-normalised ImageNet global pool (the part's overall look), which the
    service uses only to reject images unlike anything enrolled."""

    def __init__(self, trunk: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.descriptor = DescriptorTrunk(trunk)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.descriptor(x)
        look = nn.functional.normalize(d[:, :GLOBAL_POOL_DIM], dim=1)
        return torch.cat([self.head(d), look], dim=1)
