"""Good vs defective from good parts alone, on the same episodes for every detector:
image AUROC, and balanced accuracy and false-alarm rate at the threshold the detector
calibrates from its own good images (leave-one-out, `calibrate_threshold`).

Detectors: the patch memory (`PatchMemory`, cosine, top-1% mean) and the baseline a
global embedding gives (distance of the ImageNet global pool to the good images' mean).
Shapes: images (N, H, W) uint8 grey, labels (N,) 0 good / 1 defective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.backbones import PreprocessConfig
from models.patchcore.feature_extractor import PatchFeatureExtractor
from models.patchcore.sampler import KCenterGreedy
from models.patchcore.torch_model import PatchMemory, calibrate_threshold
from models.preprocess import normalise


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    s = scores[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class Features:
    patches: np.ndarray  # (N, C, h, w) unit vectors
    global_pool: np.ndarray  # (N, 1280) unit vectors (the baseline's embedding)


def extract(images: np.ndarray, input_size: int = 224, layers: tuple[int, ...] = (5, 10),
            batch: int = 16) -> Features:
    """The served trunk (ImageNet EfficientNet-Lite0) on grey images squash-resized to
    `input_size`, normalised as the backbone's config says."""
    from models.effnet import lite0_trunk

    trunk, _ = lite0_trunk()
    trunk.eval()
    extractor = PatchFeatureExtractor(trunk, layers).eval()
    cfg = PreprocessConfig(input_size=input_size, grey=True)
    patches, pools = [], []
    for i in tqdm(range(0, len(images), batch), desc=f"features@{input_size}", leave=False):
        x = np.stack([np.asarray(_resize(im, input_size)) for im in images[i:i + batch]])
        t = torch.from_numpy(normalise(x[..., None], cfg))
        with torch.no_grad():
            patches.append(extractor(t).numpy())
            head = trunk.extract_features(t)  # type: ignore[operator]
            pools.append(nn.functional.normalize(head.mean(dim=(2, 3)), dim=1).numpy())
    return Features(np.concatenate(patches), np.concatenate(pools))


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


Detector = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def patch_detector(f: Features, coreset: float | None = 0.1) -> Detector:
    """(good indices, query indices) -> (query scores, good leave-one-out scores)."""
    def run(good: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sampler = KCenterGreedy(coreset) if coreset else None
        mem = PatchMemory(f.patches[good], sampler)
        return (mem.image_scores(mem.distances(f.patches[query])),
                mem.leave_one_out(f.patches[good]))
    return run


def global_detector(f: Features) -> Detector:
    def run(good: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = f.global_pool[good]
        mean = g.mean(axis=0)
        loo = np.array([np.linalg.norm(g[i] - np.delete(g, i, axis=0).mean(axis=0))
                        for i in range(len(g))]) if len(g) > 1 else np.zeros(0)
        return np.linalg.norm(f.global_pool[query] - mean, axis=1), loo
    return run


def episodes(labels: np.ndarray, n_good: int, n_query: int, count: int, seed: int
             ) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` draws of n_good good images to enrol, and n_query good + n_query defective
    held-out queries."""
    rng = np.random.default_rng(seed)
    good, bad = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    out = []
    for _ in range(count):
        g = rng.permutation(good)
        out.append((g[:n_good], np.concatenate([g[n_good:n_good + n_query],
                                                rng.choice(bad, n_query, replace=False)])))
    return out


def evaluate(labels: np.ndarray, detectors: dict[str, Detector], goods: tuple[int, ...],
             n_query: int = 15, count: int = 30, seed: int = 0, false_alarm_rate: float = 0.02
             ) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for n in goods:
        eps = episodes(labels, n, n_query, count, seed + n)
        for name, det in detectors.items():
            aucs, bals, fars = [], [], []
            for good, query in tqdm(eps, desc=f"{name}@{n}", leave=False):
                scores, loo = det(good, query)
                y = labels[query]
                aucs.append(auroc(scores, y))
                thr, _ = calibrate_threshold(loo, false_alarm_rate)
                flag = scores > thr
                tpr, fpr = flag[y == 1].mean(), flag[y == 0].mean()
                bals.append((tpr + 1 - fpr) / 2)
                fars.append(fpr)
            rows.append({"good_images": n, "detector": name, "episodes": count,
                         "auroc": round(float(np.mean(aucs)), 4),
                         "auroc_ci95": round(float(1.96 * np.std(aucs) / np.sqrt(count)), 4),
                         "balanced_accuracy": round(float(np.mean(bals)), 4),
                         "false_alarm_rate": round(float(np.mean(fars)), 4)})
    return rows


def report(out_dir: Path, goods: tuple[int, ...] = (1, 5, 20, 50), count: int = 30,
           seed: int = 0, false_alarm_rate: float = 0.02, input_size: int = 224) -> str:
    """The ELPV mono development set (evaluation only; ../shared/DATA.md): the patch memory
    against the global-pool baseline on the same episodes. Writes anomaly.{json,md,png}."""
    from models import reporting
    from models.data import elpv

    if not elpv.available():
        raise RuntimeError("the ELPV development set is not installed: pip install "
                           "elpv-dataset (evaluation only, never a runtime dependency)")
    images, labels = elpv.load_mono()
    f = extract(images, input_size)
    rows = evaluate(labels, {"patch memory (cosine, coreset 10%)": patch_detector(f, 0.1),
                             "global pool, distance to good mean": global_detector(f)},
                    goods, count=count, seed=seed, false_alarm_rate=false_alarm_rate)
    for r in rows:
        r["set"] = "ELPV mono (good vs defective)"
    table = reporting.markdown(
        ["good images", "detector", "image AUROC", "balanced accuracy", "false alarms"],
        [[str(r["good_images"]), str(r["detector"]),
          f"{float(r['auroc']):.3f} ± {float(r['auroc_ci95']):.3f}",
          f"{float(r['balanced_accuracy']):.3f}", f"{float(r['false_alarm_rate']):.3f}"]
         for r in rows])
    return reporting.write(out_dir / "anomaly", rows, table, plot=("set", "detector"),
                           axes=("good_images", "auroc", "auroc_ci95"))
