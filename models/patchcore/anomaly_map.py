"""From a patch-distance grid to a heatmap of the image: bilinear upsampling to the output
size, then a Gaussian blur (PatchCore uses sigma = 4 px at 224 px).
Shapes: (N, h, w) -> (N, H, W)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class AnomalyMapGenerator:
    def __init__(self, sigma: float = 4.0) -> None:
        self.sigma = sigma

    def _kernel(self) -> torch.Tensor:
        r = max(1, int(4 * self.sigma + 0.5))
        x = torch.arange(-r, r + 1, dtype=torch.float32)
        g = torch.exp(-(x ** 2) / (2 * self.sigma ** 2))
        return g / g.sum()

    def __call__(self, patch_scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(patch_scores, dtype=np.float32))[:, None]
        x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if self.sigma > 0:
            k = self._kernel()
            pad = k.numel() // 2
            x = nn.functional.pad(x, (pad, pad, 0, 0), mode="replicate")
            x = nn.functional.conv2d(x, k.view(1, 1, 1, -1))
            x = nn.functional.pad(x, (0, 0, pad, pad), mode="replicate")
            x = nn.functional.conv2d(x, k.view(1, 1, -1, 1))
        return x[:, 0].numpy()
