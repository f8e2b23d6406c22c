"""A synthetic industrial defect generator: grey-scale surfaces with one defect each.

Surfaces: three CC0 skimage textures (brick, grass, gravel) and four procedural ones
(brushed metal, woven fabric, cast plate, wood grain). Defects vary in scale, contrast,
position and orientation; the illumination gets a random gradient and gain, as on a
real line. Everything is drawn from one `numpy.random.Generator`, so a seed fixes it.

The class is the *defect type*, never the surface: a good embedding must ignore the
background and see the defect.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Rng = np.random.Generator
SIZE = 224

# Fixed, disjoint class splits: meta-train types are never evaluated.
TRAIN_TYPES = ("ok", "scratch", "stain", "pitting", "burn", "dent", "spot", "smear")
EVAL_TYPES = ("crack", "hole", "missing_print", "bright_blob", "scratch_cluster")


@lru_cache
def _cc0(name: str) -> np.ndarray:
    import skimage.data as d

    return np.asarray(getattr(d, name)(), dtype=np.float32)


def _crop(name: str, rng: Rng) -> np.ndarray:
    t = _cc0(name)
    s = int(rng.integers(160, 400))
    y, x = rng.integers(0, t.shape[0] - s, 2)
    im = Image.fromarray(t[y:y + s, x:x + s].astype(np.uint8)).resize((SIZE, SIZE))
    return np.asarray(im, np.float32)


def _noise(rng: Rng, sigma: float, smooth: float) -> np.ndarray:
    n = Image.fromarray((rng.normal(0.5, 0.15, (SIZE, SIZE)) * 255).clip(0, 255).astype(np.uint8))
    return (np.asarray(n.filter(ImageFilter.GaussianBlur(smooth)), np.float32) - 128) * sigma


def _brushed(rng: Rng) -> np.ndarray:
    row = rng.normal(0, 1, SIZE).cumsum()
    a = np.tile(row[None, :], (SIZE, 1)) * 2 + 150 + _noise(rng, 0.4, 0.5)
    return np.asarray(Image.fromarray(a.clip(0, 255).astype(np.uint8)).rotate(
        float(rng.uniform(0, 180)), resample=Image.Resampling.BILINEAR, fillcolor=150), np.float32)


def _fabric(rng: Rng) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    p = rng.uniform(4, 9)
    return 128 + 40 * np.sin(x / p) * np.sin(y / p) + _noise(rng, 0.5, 1.0)


def _plate(rng: Rng) -> np.ndarray:
    return 110 + rng.uniform(-30, 30) + _noise(rng, 1.5, 2.0)


def _wood(rng: Rng) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    r = np.sqrt((x - rng.uniform(-200, 400)) ** 2 + (y + rng.uniform(100, 400)) ** 2)
    return 120 + 35 * np.sin(r / rng.uniform(3, 7) + _noise(rng, 0.05, 4)) + _noise(rng, 0.3, 1)


SURFACES: dict[str, Callable[[Rng], np.ndarray]] = {
    "brick": lambda r: _crop("brick", r), "grass": lambda r: _crop("grass", r),
    "gravel": lambda r: _crop("gravel", r), "brushed": _brushed, "fabric": _fabric,
    "plate": _plate, "wood": _wood,
}


def _pt(rng: Rng, margin: int = 30) -> tuple[int, int]:
    return int(rng.integers(margin, SIZE - margin)), int(rng.integers(margin, SIZE - margin))


def _tone(base: np.ndarray, rng: Rng, bright: bool) -> int:
    m = float(base.mean())
    c = rng.uniform(50, 110)
    return int(np.clip(m + c if bright else m - c, 0, 255))


def _draw(base: np.ndarray, kind: str, rng: Rng) -> np.ndarray:
    """Draw one defect of `kind` on a float (S, S) surface; return the new surface."""
    if kind == "ok":
        return base
    layer = Image.new("L", (SIZE, SIZE), 0)
    d = ImageDraw.Draw(layer)
    cx, cy = _pt(rng)
    bright = bool(rng.random() < 0.5)
    if kind == "scratch":
        ang, ln = rng.uniform(0, np.pi), rng.uniform(40, 140)
        dx, dy = np.cos(ang) * ln / 2, np.sin(ang) * ln / 2
        d.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=int(rng.integers(1, 4)))
    elif kind == "scratch_cluster":
        ang = rng.uniform(0, np.pi)
        for _ in range(int(rng.integers(3, 6))):
            ox, oy = rng.normal(0, 10, 2)
            ln = rng.uniform(20, 60)
            a = ang + rng.normal(0, 0.15)
            dx, dy = np.cos(a) * ln / 2, np.sin(a) * ln / 2
            d.line([(cx + ox - dx, cy + oy - dy), (cx + ox + dx, cy + oy + dy)], fill=255, width=1)
    elif kind == "crack":
        pts = [(cx, cy)]
        a = rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(6, 14))):
            a += rng.normal(0, 0.6)
            step = rng.uniform(6, 14)
            pts.append((pts[-1][0] + np.cos(a) * step, pts[-1][1] + np.sin(a) * step))
        d.line(pts, fill=255, width=int(rng.integers(1, 3)))
        bright = False
    elif kind in ("stain", "smear"):
        r = rng.uniform(12, 40)
        sx = r * (rng.uniform(2, 3.5) if kind == "smear" else rng.uniform(0.8, 1.2))
        d.ellipse([cx - sx, cy - r, cx + sx, cy + r], fill=int(rng.integers(120, 200)))
        layer = layer.rotate(float(rng.uniform(0, 180)), center=(cx, cy))
        layer = layer.filter(ImageFilter.GaussianBlur(float(rng.uniform(4, 9))))
    elif kind == "pitting":
        for _ in range(int(rng.integers(8, 25))):
            px, py = cx + rng.normal(0, 18), cy + rng.normal(0, 18)
            r = rng.uniform(1, 3)
            d.ellipse([px - r, py - r, px + r, py + r], fill=255)
        bright = False
    elif kind == "burn":
        r = rng.uniform(15, 35)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        layer = layer.filter(ImageFilter.GaussianBlur(float(r / 2)))
        bright = False
    elif kind == "dent":
        r = rng.uniform(12, 30)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        shade = (xx - cx) * g / r * rng.uniform(40, 80)  # a lit slope: bright one side
        return np.asarray(base + shade, np.float32)
    elif kind == "spot":
        r = rng.uniform(3, 7)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        bright = False
    elif kind == "bright_blob":
        r = rng.uniform(8, 20)
        d.ellipse([cx - r, cy - r * 0.7, cx + r, cy + r * 0.7], fill=255)
        layer = layer.filter(ImageFilter.GaussianBlur(2))
        bright = True
    elif kind == "hole":
        r = rng.uniform(6, 16)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        target = np.full_like(base, float(rng.uniform(0, 25)))
        m = np.asarray(layer, np.float32) / 255
        return base * (1 - m) + target * m
    elif kind == "missing_print":
        # A printed mark (a row of dark blocks) with one block missing.
        w, h = rng.uniform(8, 14), rng.uniform(10, 18)
        n = int(rng.integers(4, 7))
        gap = int(rng.integers(0, n))
        x0 = max(5.0, min(cx - n * w, SIZE - 2 * n * w - 5))
        for i in range(n):
            if i != gap:
                d.rectangle([x0 + 2 * i * w, cy - h / 2, x0 + 2 * i * w + w, cy + h / 2], fill=255)
        bright = False
    else:
        raise KeyError(f"unknown defect type {kind!r}")
    m = np.asarray(layer, np.float32) / 255
    return base * (1 - m) + _tone(base, rng, bright) * m


def render(kind: str, rng: Rng, surface: str | None = None) -> np.ndarray:
    """One (S, S) uint8 grey image of defect `kind` on a random (or given) surface."""
    return render_with_mask(kind, rng, surface)[0]


# A pixel belongs to the defect where drawing it moved the grey level by more than this.
MASK_LEVEL = 12.0


def render_with_mask(kind: str, rng: Rng, surface: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """`render`, and the defect's (S, S) bool mask (empty for "ok"): the pixels the
    defect changed, before lighting and noise."""
    name = surface or str(rng.choice(list(SURFACES)))
    base = SURFACES[name](rng)
    drawn = _draw(base, kind, rng)
    return _light(drawn, rng), np.abs(drawn - base) > MASK_LEVEL


def _light(img: np.ndarray, rng: Rng) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    light = 1 + rng.uniform(-0.25, 0.25) * (x - 0.5) + rng.uniform(-0.25, 0.25) * (y - 0.5)
    img = img * light * rng.uniform(0.8, 1.2) + rng.normal(0, rng.uniform(1, 5), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_surface_set(types: tuple[str, ...], per_class: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every type on every surface: (N, S, S) images, (N,) type labels, (N,) surface ids.
    Episodes drawn inside one surface are the factory's real task: one part, a few
    defect classes that differ only in the defect."""
    rng = np.random.default_rng(seed)
    imgs, labels, surfaces = [], [], []
    for si, surface in enumerate(SURFACES):
        for ti, t in enumerate(types):
            for _ in range(per_class):
                imgs.append(render(t, rng, surface))
                labels.append(ti)
                surfaces.append(si)
    return np.stack(imgs), np.asarray(labels), np.asarray(surfaces)


def make_binary_set(defect_types: tuple[str, ...], per_class: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OK (0) vs defective (1, any of `defect_types`) on each surface, surface ids."""
    rng = np.random.default_rng(seed)
    imgs, labels, surfaces = [], [], []
    for si, surface in enumerate(SURFACES):
        for _ in range(per_class):
            imgs.append(render("ok", rng, surface))
            labels.append(0)
            surfaces.append(si)
        for _ in range(per_class):
            imgs.append(render(str(rng.choice(list(defect_types))), rng, surface))
            labels.append(1)
            surfaces.append(si)
    return np.stack(imgs), np.asarray(labels), np.asarray(surfaces)


def make_set(types: tuple[str, ...], per_class: int, seed: int
             ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, S, S) uint8 images, (N,) labels into `types`, and the class names."""
    rng = np.random.default_rng(seed)
    imgs = [render(t, rng) for t in types for _ in range(per_class)]
    labels = np.repeat(np.arange(len(types)), per_class)
    return np.stack(imgs), labels, list(types)
