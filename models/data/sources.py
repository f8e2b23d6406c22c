"""Labelled sources: Fashion-MNIST from the Debian package, and any image folder."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                "sneaker", "bag", "boot")
# Fixed, disjoint splits: meta-train on 0-4, evaluate on 5-9.
FMNIST_TRAIN = (0, 1, 2, 3, 4)
FMNIST_EVAL = (5, 6, 7, 8, 9)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(classes: tuple[int, ...], per_class: int, seed: int,
                  root: Path = FMNIST_DIR) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N, 28, 28) uint8, (N,) labels re-indexed into `classes`, class names."""
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        raise FileNotFoundError(f"Fashion-MNIST not found in {root}; "
                                "apt-get install dataset-fashion-mnist")
    imgs = _idx(root / "train-images-idx3-ubyte.gz")
    labels = _idx(root / "train-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    out_i, out_l = [], []
    for new, c in enumerate(classes):
        idx = rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
        out_i.append(imgs[idx])
        out_l.append(np.full(per_class, new))
    return np.concatenate(out_i), np.concatenate(out_l), [FMNIST_NAMES[c] for c in classes]


def image_folder(root: Path, size: int = 224) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`root/<class>/<image>` -> (N, S, S) grey uint8 images, labels, class names."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    imgs, labels = [], []
    for i, n in enumerate(names):
        for f in sorted((root / n).iterdir()):
            try:
                with Image.open(f) as im:
                    imgs.append(np.asarray(im.convert("L").resize((size, size))))
            except OSError:
                continue
            labels.append(i)
    return np.stack(imgs), np.asarray(labels), names
