"""From a patch-distance grid to the served heatmap of the image: bilinear upsampling to
the output size, then a Gaussian blur (PatchCore uses sigma = 4 px at 224 px).
Shapes: (h, w) -> a PNG of (H, W)."""

from __future__ import annotations

import numpy as np

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
    from models.patchcore.memory import MAX_DISTANCE

    # uncalibrated (one good image): the map's own peak is white instead
    ref = threshold if 0 < threshold < MAX_DISTANCE else float(patch_map.max())
    grey = np.clip(patch_map / (2.0 * max(ref, 1e-6)), 0.0, 1.0).astype(np.float32)
    img = Image.fromarray(grey, mode="F").resize(size, Image.Resampling.BILINEAR)
    level = Image.fromarray(np.round(np.asarray(img) * 255.0).astype(np.uint8), mode="L")
    level = level.filter(ImageFilter.GaussianBlur(4.0 * side / 224.0))
    buf = io.BytesIO()
    level.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
