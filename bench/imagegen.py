"""Deterministic test images made in code: CC0 skimage textures and procedural surfaces
with drawn defects. Nothing is downloaded."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

SURFACES = ("brick", "grass", "gravel")


@lru_cache
def _texture(name: str) -> np.ndarray:
    import skimage.data as d

    return np.asarray(getattr(d, name)(), dtype=np.uint8)


def surface(name: str, rng: np.random.Generator, size: int = 160) -> Image.Image:
    """A random crop of a 512x512 CC0 texture, jittered in brightness."""
    t = _texture(name)
    y, x = rng.integers(0, t.shape[0] - size, 2)
    crop = t[y:y + size, x:x + size].astype(np.float32) * rng.uniform(0.85, 1.15)
    return Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).convert("RGB")


def draw_defect(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    img = img.copy()
    d = ImageDraw.Draw(img)
    w, h = img.size
    cx, cy = (int(v) for v in rng.integers(w // 4, 3 * w // 4, 2))
    if kind == "scratch":
        dx, dy = rng.integers(-w // 2, w // 2, 2)
        d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=(250, 250, 250), width=3)
    elif kind == "stain":
        r = int(rng.integers(w // 8, w // 5))
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(40, 25, 10))
    elif kind == "hole":
        r = int(rng.integers(w // 12, w // 8))
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=(0, 0, 0))
    return img


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def sample(surface_name: str, defect: str | None, seed: int, size: int = 160) -> bytes:
    rng = np.random.default_rng(seed)
    img = surface(surface_name, rng, size)
    if defect:
        img = draw_defect(img, defect, rng)
    return png_bytes(img)


def flat(colour: tuple[int, int, int] = (128, 128, 128), size: int = 160) -> bytes:
    return png_bytes(Image.new("RGB", (size, size), colour))


# Three enrolment classes that differ in both surface and defect.
CLASSES = {"brick-scratch": ("brick", "scratch"), "grass-stain": ("grass", "stain"),
           "gravel-hole": ("gravel", "hole")}
