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


HEATMAP_SHORT_SIDE = 224


def heatmap_png(patch_map: np.ndarray, threshold: float, width: int, height: int,
                short_side: int = HEATMAP_SHORT_SIDE) -> bytes:
    """A patch map (h, w) -> a grey-scale PNG with the input's aspect ratio (short side
    `short_side`, or the input's when smaller, never under 28 px), brighter where more
    anomalous. Grey levels are absolute, not stretched per image: the group's threshold
    sits at mid-grey (128), so a calm part stays dark and two heatmaps compare. Bilinear
    upsampling, then a Gaussian blur (sigma 4 px at 224 px, as PatchCore)."""
    import io

    from PIL import Image, ImageFilter

    side = max(28, min(short_side, width, height))
    scale = side / min(width, height)
    size = (max(side, round(width * scale)), max(side, round(height * scale)))
    from models.patchcore.torch_model import MAX_DISTANCE

    # uncalibrated (one good image): the map's own peak is white instead
    ref = threshold if 0 < threshold < MAX_DISTANCE else float(patch_map.max())
    grey = np.clip(patch_map / (2.0 * max(ref, 1e-6)), 0.0, 1.0).astype(np.float32)
    img = Image.fromarray(grey, mode="F").resize(size, Image.Resampling.BILINEAR)
    level = Image.fromarray(np.round(np.asarray(img) * 255.0).astype(np.uint8), mode="L")
    level = level.filter(ImageFilter.GaussianBlur(4.0 * side / 224.0))
    buf = io.BytesIO()
    level.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
