"""The ELPV development set: electroluminescence images of mono-crystalline solar cells
(PyPI `elpv-dataset`, CC BY-NC-SA 4.0; ../shared/DATA.md). Evaluation only: never a
runtime dependency, never training data, never copied into the repository.

Only the mono cells are ever opened (the poly cells are kept for independent checks);
p = 0 is good, p = 1 defective, and the uncertain 1/3 and 2/3 cells are left out.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def available() -> bool:
    try:
        import elpv_dataset  # noqa: F401
    except ImportError:
        return False
    return True


def load_mono() -> tuple[np.ndarray, np.ndarray]:
    """-> images (N, 300, 300) uint8 grey, labels (N,) 0 good / 1 defective."""
    import elpv_dataset

    data = Path(elpv_dataset.__file__).parent / "data"
    images, labels = [], []
    with open(data / "labels.csv", newline="") as f:
        for row in csv.reader(f, delimiter=" ", skipinitialspace=True):
            path, proba, kind = row[0], float(row[1]), row[2]
            if kind != "mono" or proba not in (0.0, 1.0):
                continue  # poly cells are never opened
            with Image.open(data / path) as im:
                images.append(np.asarray(im.convert("L")))
            labels.append(int(proba == 1.0))
    return np.stack(images), np.asarray(labels, np.int64)
