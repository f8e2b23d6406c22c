"""Good vs defective from good parts alone, through the served code, on the same episodes
for every detector: image AUROC; balanced accuracy and false-alarm rate at the threshold
the service calibrates from the good images (leave-one-out); how many defective parts are
flagged at <= 5% false alarms; and, where the defects have masks, the heatmap's pixel AUROC.

Detectors: the service (`ServedGroup.inspect` on the served network's embeddings and patch
features, `heatmap_png` for the maps) and the baseline a global embedding gives (distance
of the ImageNet global pool to the good images' mean, thresholded by the same rule).
Sets: held-out synthetic defect types on each synthetic surface (with masks), and the
ELPV mono development set when its package is installed (evaluation only).
Shapes: images (N, H, W) uint8 grey, labels (N,) 0 good / 1 defective.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.patchcore.anomaly_map import heatmap_png
from models.patchcore.memory import MEMORY_PATCHES, calibrate_threshold
from models.progress import progress
from models.reporting import mean_ci


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, tied ranks averaged), vectorised."""
    scores = np.asarray(scores, np.float64).ravel()
    pos = np.asarray(labels).ravel() == 1
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    ranks = (upper - (counts - 1) / 2.0)[inverse]  # 1-based average rank of each value
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, max_fpr: float = 0.05) -> float:
    """The share of defective parts flagged at the strictest threshold that flags at most
    `max_fpr` of the good ones."""
    good = np.sort(scores[labels == 0])
    allowed = int(np.floor(max_fpr * len(good)))
    thr = good[len(good) - 1 - allowed]  # flag strictly above this
    return float((scores[labels == 1] > thr).mean())


@dataclass(frozen=True)
class Features:
    embeddings: np.ndarray  # (N, D) the served embedding
    patches: np.ndarray  # (N, h, w, C) the served patch features
    appearance: np.ndarray  # (N, 1280) unit ImageNet global pool (the baseline's)
    metric_dim: int


def served_features(images: np.ndarray, backbone: str = "fsdi_lite0_meta",
                    cache_dir: Path = Path("runs/cache/onnx"), threads: int | None = None,
                    batch: int = 32, desc: str = "features") -> Features:
    """Each image as an upload: PNG bytes, decoded and resized by the service's own
    preprocessing, run through the served ONNX network (embedding + patch features)."""
    from models.embedder import make_embedder, unpack
    from models.preprocess import load_for_backbone
    from models.zoo import create_backbone

    bb = create_backbone(backbone)
    emb = make_embedder(bb, "onnxruntime", cache_dir, threads or min(4, os.cpu_count() or 1))
    rows = []
    for i in progress(range(0, len(images), batch), desc=desc, unit="batch", leave=False):
        x = np.stack([load_for_backbone(_png(im), bb.preprocess, 10**9)
                      for im in images[i:i + batch]])
        rows.append(emb.embed_packed(x))
    e, p = unpack(np.concatenate(rows), bb)
    app = e[:, bb.metric_dim:] if bb.metric_dim < bb.dim else e
    return Features(e, p, app, bb.metric_dim)


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@dataclass(frozen=True)
class Outcome:
    scores: np.ndarray  # (Q,) higher: more anomalous
    flagged: np.ndarray  # (Q,) bool, at the detector's own calibrated threshold
    maps: np.ndarray | None = None  # (Q, S, S) heatmaps as served (grey levels), if any


# (good indices, query indices, defect indices the group may hold, heatmaps?) -> Outcome
Detector = Callable[[np.ndarray, np.ndarray, np.ndarray, bool], Outcome]
DEFECT_EXAMPLES = 5  # defect images enrolled beside the good ones, for detectors using them
MAX_FALSE_ALARMS = 0.05  # the false-alarm rate of the "flagged at" column


def served_detector(f: Features, false_alarm_rate: float = 0.02,
                    with_defects: bool = False,
                    memory_patches: int | None = MEMORY_PATCHES) -> Detector:
    """What the service answers: a group with one good class holding the good images (and,
    `with_defects`, a defect class holding the episode's defect images, which can place
    the threshold: models.inference.GoodParts), asked about each query; its patch memory
    capped at `memory_patches` as served (None: every patch)."""
    from dataclasses import replace

    from models.inference import EnrolledClass, ServingConfig, build_served_group

    config = replace(ServingConfig(), false_alarm_rate=false_alarm_rate,
                     memory_patches=memory_patches)

    def run(good: np.ndarray, query: np.ndarray, defects: np.ndarray, heatmaps: bool
            ) -> Outcome:
        classes = [EnrolledClass(1, "ok", "good", tuple(int(i) for i in good),
                                 f.embeddings[good], f.patches[good])]
        if with_defects and len(defects):
            classes.append(EnrolledClass(2, "defect", "defect",
                                         tuple(int(i) for i in defects),
                                         f.embeddings[defects], f.patches[defects]))
        served = build_served_group("eval", classes, f.metric_dim, config)
        got = served.inspect(f.embeddings[query], f.patches[query], top_k=1)
        anomalies = [i.anomaly for i in got if i.anomaly is not None]
        maps = None
        if heatmaps:
            maps = np.stack([np.asarray(Image.open(io.BytesIO(
                heatmap_png(a.patch_map, a.threshold, 224, 224)))) for a in anomalies])
        return Outcome(np.array([a.score for a in anomalies]),
                       np.array([a.anomalous for a in anomalies]), maps)
    return run


def global_detector(f: Features, false_alarm_rate: float = 0.02) -> Detector:
    """The frozen ImageNet global pool: distance to the good images' mean, thresholded at
    the same leave-one-out quantile."""
    def run(good: np.ndarray, query: np.ndarray, _defects: np.ndarray, heatmaps: bool
            ) -> Outcome:
        g = f.appearance[good]
        mean = g.mean(axis=0)
        loo = np.array([np.linalg.norm(g[i] - np.delete(g, i, axis=0).mean(axis=0))
                        for i in range(len(g))]) if len(g) > 1 else np.zeros(0)
        thr, _ = calibrate_threshold(loo, false_alarm_rate)
        scores = np.linalg.norm(f.appearance[query] - mean, axis=1)
        return Outcome(scores, scores > thr)
    return run


def episodes(labels: np.ndarray, n_good: int, n_query: int, count: int, seed: int,
             pool: np.ndarray | None = None, n_defect: int = DEFECT_EXAMPLES,
             n_spare: int = 0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """`count` draws of n_good good images to enrol, n_query good + n_query defective
    held-out queries, n_defect other defective images a group may enrol, and up to
    n_spare further good images (the next ones of the same shuffle, so nothing else
    changes with it), all from `pool` (indices; default everything). The defect images
    come from a generator of their own: the good images and queries do not depend on
    n_defect."""
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng([seed, 1])
    idx = np.arange(len(labels)) if pool is None else pool
    good, bad = idx[labels[idx] == 0], idx[labels[idx] == 1]
    out = []
    for _ in range(count):
        g = rng.permutation(good)
        asked = rng.choice(bad, n_query, replace=False)
        rest = np.setdiff1d(bad, asked)
        out.append((g[:n_good], np.concatenate([g[n_good:n_good + n_query], asked]),
                    extra.choice(rest, min(n_defect, len(rest)), replace=False),
                    g[n_good + n_query:n_good + n_query + n_spare]))
    return out


def _ci(values: list[float]) -> float:
    return round(mean_ci(values)[1], 4)


def evaluate(labels: np.ndarray, detectors: dict[str, Detector], goods: tuple[int, ...],
             n_query: int = 15, count: int = 30, seed: int = 0,
             masks: np.ndarray | None = None, pools: list[np.ndarray] | None = None
             ) -> list[dict[str, Any]]:
    """Every detector on the same episodes (`count` per pool and good count). `pools`:
    index sets episodes stay within (one product each); `masks` (N, S, S): defect pixels,
    for the pixel AUROC of detectors that return heatmaps."""
    rows: list[dict[str, Any]] = []
    # "flagged at <= 5% false alarms" needs at least 20 good queries to allow one false
    # alarm at all (with 15, it would mean none): spare good images make up the count.
    spare = max(0, math.ceil(1 / MAX_FALSE_ALARMS) - n_query)
    for n in goods:
        eps = [e for k, p in enumerate(pools or [None])  # type: ignore[list-item]
               for e in episodes(labels, n, n_query, count, seed + 1000 * k + n, p,
                                 n_spare=spare)]
        for name, det in detectors.items():
            aucs, bals, fars, tprs, pix = [], [], [], [], []
            for good, query, defects, extra in progress(eps, desc=f"{name}@{n}", leave=False):
                asked = np.concatenate([query, extra])
                out = det(good, asked, defects, masks is not None)
                q = len(query)  # the spare good images count only towards the 5% column
                y = labels[query]
                scores, flagged = out.scores[:q], out.flagged[:q]
                aucs.append(auroc(scores, y))
                tpr, fpr = flagged[y == 1].mean(), flagged[y == 0].mean()
                bals.append((tpr + 1 - fpr) / 2)
                fars.append(fpr)
                tprs.append(tpr_at_fpr(out.scores, labels[asked], MAX_FALSE_ALARMS))
                if masks is not None and out.maps is not None:
                    bad = y == 1
                    pix.append(auroc(out.maps[:q][bad].astype(np.float32),
                                     masks[query[bad]].astype(np.int64)))
            row = {"good_images": n, "detector": name, "episodes": len(eps),
                   "auroc": round(float(np.mean(aucs)), 4), "auroc_ci95": _ci(aucs),
                   "balanced_accuracy": round(float(np.mean(bals)), 4),
                   "balanced_accuracy_ci95": _ci(bals),
                   "false_alarm_rate": round(float(np.mean(fars)), 4),
                   "flagged_at_5pct_false_alarms": round(float(np.mean(tprs)), 4)}
            if pix:
                row["pixel_auroc"] = round(float(np.mean(pix)), 4)
            rows.append(row)
    return rows


def synthetic_set(per_surface_good: int = 80, per_surface_bad: int = 30, seed: int = 7
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Held-out synthetic defect types (never meta-trained on) on every synthetic surface:
    images, labels, masks, and one index pool per surface."""
    from models.data.synthetic import EVAL_TYPES, SURFACES, render_with_mask

    rng = np.random.default_rng(seed)
    imgs: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    labels: list[int] = []
    pools: list[np.ndarray] = []
    for surface in SURFACES:
        start = len(imgs)
        for k in range(per_surface_good + per_surface_bad):
            kind = "ok" if k < per_surface_good else str(rng.choice(list(EVAL_TYPES)))
            im, m = render_with_mask(kind, rng, surface)
            imgs.append(im)
            masks.append(m)
            labels.append(int(kind != "ok"))
        pools.append(np.arange(start, len(imgs)))
    return np.stack(imgs), np.asarray(labels), np.stack(masks), pools


def report(out_dir: Path, goods: tuple[int, ...] = (1, 5, 20, 50), count: int = 30,
           seed: int = 0, false_alarm_rate: float = 0.02, backbone: str = "fsdi_lite0_meta",
           cache_dir: Path = Path("runs/cache/onnx"), synthetic: bool = True,
           elpv: bool = True, synthetic_count: int = 6) -> str:
    """The served good-parts detector against the global-pool baseline on the same
    episodes: held-out synthetic defect types (all surfaces, with pixel AUROC), and the
    ELPV mono development set when installed. Writes anomaly.{json,md,png}."""
    from models import reporting
    from models.data import elpv as elpv_set

    rows: list[dict[str, Any]] = []

    def run(set_name: str, images: np.ndarray, labels: np.ndarray, n: int,
            masks: np.ndarray | None = None, pools: list[np.ndarray] | None = None) -> None:
        f = served_features(images, backbone, cache_dir, desc=set_name)
        detectors = {"service (good-parts patch memory)": served_detector(f, false_alarm_rate),
                     f"service, {DEFECT_EXAMPLES} defect images enrolled too":
                     served_detector(f, false_alarm_rate, with_defects=True),
                     "baseline: ImageNet global pool, distance to good mean":
                     global_detector(f, false_alarm_rate)}
        per_image = f.patches.shape[1] * f.patches.shape[2]
        if max(goods) * per_image > MEMORY_PATCHES:  # the cap is reached: beside it, exact
            detectors["service with every patch kept (no memory cap)"] = served_detector(
                f, false_alarm_rate, memory_patches=None)
        got = evaluate(labels, detectors, goods, count=n, seed=seed, masks=masks, pools=pools)
        rows.extend({"set": set_name, **r} for r in got)

    if synthetic:
        images, labels, masks, pools = synthetic_set()
        run("synthetic, held-out defect types", images, labels, synthetic_count, masks, pools)
    if elpv and elpv_set.available():
        images, labels = elpv_set.load_mono()
        run("ELPV mono (good vs defective)", images, labels, count)
    if not rows:
        raise RuntimeError("nothing to evaluate: no synthetic set asked for and the ELPV "
                           "development set is not installed (pip install elpv-dataset; "
                           "evaluation only, never a runtime dependency)")
    table = reporting.markdown(
        ["set", "good images", "detector", "image AUROC", "balanced accuracy",
         "false alarms", "flagged at ≤5% false alarms", "pixel AUROC"],
        [[str(r["set"]), str(r["good_images"]), str(r["detector"]),
          f"{float(r['auroc']):.3f} ± {float(r['auroc_ci95']):.3f}",
          f"{float(r['balanced_accuracy']):.3f} ± {float(r['balanced_accuracy_ci95']):.3f}",
          f"{float(r['false_alarm_rate']):.3f}",
          f"{float(r['flagged_at_5pct_false_alarms']):.3f}",
          f"{float(r['pixel_auroc']):.3f}" if "pixel_auroc" in r else "–"]
         for r in rows])
    return reporting.write(out_dir / "anomaly", rows, table, plot=("set", "detector"),
                           axes=("good_images", "auroc", "auroc_ci95"))


def defect_type_episodes(labels: np.ndarray, surfaces: np.ndarray, task: str, shots: int,
                         n_good: int, n_query: int, count: int, seed: int
                         ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                         np.ndarray]]:
    """Groups with good parts and several defect classes, drawn from a set of defect types
    (label 0 good) on surfaces (one product each): (good images, support, support class,
    query, query class) per episode, queries up to `n_query` defective images per class.
    - "types": one surface, every defect type a class (which defect);
    - "products": one defect type on two surfaces, each surface's good images a good
      class and its defects a class (which product the defect is on)."""
    rng = np.random.default_rng(seed)
    kinds = np.unique(labels[labels > 0])
    out = []
    for e in range(count):
        if task == "types":
            chosen = [int(np.unique(surfaces)[e % len(np.unique(surfaces))])]
            classes = [(chosen[0], int(t)) for t in kinds]
        else:
            chosen = [int(s) for s in rng.choice(np.unique(surfaces), 2, replace=False)]
            t = int(rng.choice(kinds))
            classes = [(s, t) for s in chosen]
        good = np.concatenate([rng.permutation(np.flatnonzero(
            (surfaces == s) & (labels == 0)))[:n_good] for s in chosen])
        sup, sup_c, qry, qry_c = [], [], [], []
        for c, (s, t) in enumerate(classes):
            ix = rng.permutation(np.flatnonzero((surfaces == s) & (labels == t)))
            sup.append(ix[:shots])
            sup_c.append(np.full(shots, c))
            qry.append(ix[shots:shots + n_query])
            qry_c.append(np.full(len(qry[-1]), c))
        out.append((good, np.concatenate(sup), np.concatenate(sup_c), np.concatenate(qry),
                    np.concatenate(qry_c)))
    return out


def _defect_type_episode(f: Features, surfaces: np.ndarray, task: str, good: np.ndarray,
                         sup: np.ndarray, sup_c: np.ndarray, qry: np.ndarray,
                         truth: np.ndarray) -> tuple[dict[str, float], float]:
    """One episode built by the served builder (the good images as good classes, one per
    product; the defect images as their classes, with patches): the share of defective
    queries flagged *and* given their class, with the defect classes ranked on their
    stored vectors or region-fused as served; and the share flagged."""
    from models.inference import EnrolledClass, ServedGroup, ServingConfig, build_served_group

    goods = ([good] if task == "types" else
             [good[surfaces[good] == s] for s in np.unique(surfaces[good])])
    classes = [EnrolledClass(100 + j, f"ok{j}", "good", tuple(int(i) for i in g),
                             f.embeddings[g], f.patches[g]) for j, g in enumerate(goods)]
    classes += [EnrolledClass(int(c), f"defect{c}", "defect",
                              tuple(int(i) for i in sup[sup_c == c]),
                              f.embeddings[sup[sup_c == c]], f.patches[sup[sup_c == c]])
                for c in np.unique(sup_c)]
    served = build_served_group("eval", classes, f.metric_dim, ServingConfig())
    assert served.good_parts is not None
    right: dict[str, float] = {}
    caught = 0.0
    for mode, group in (("stored vectors (global look)",
                         ServedGroup.build(served.index, served.good_parts)),
                        ("region-fused (served)", served)):
        said = group.inspect(f.embeddings[qry], f.patches[qry], top_k=1)
        right[mode] = float(np.mean([i.verdict == "defect" and i.entry is not None
                                     and i.entry.class_id == int(t)
                                     for i, t in zip(said, truth, strict=True)]))
        if group is served:
            caught = float(np.mean([i.verdict == "defect" for i in said]))
    return right, caught


def defect_type_report(out_dir: Path, shots: tuple[int, ...] = (1, 5), n_good: int = 10,
                       count: int = 70, seed: int = 0, backbone: str = "fsdi_lite0_meta",
                       cache_dir: Path = Path("runs/cache/onnx"), per_class: int = 25,
                       features: tuple[Features, np.ndarray, np.ndarray] | None = None
                       ) -> str:
    """Which defect, in a group with good parts, through the served code
    (`ServedGroup.inspect`): held-out synthetic defect types within one surface, and one
    type on two products; the defect classes ranked on their stored vectors as they are,
    or on region-fused vectors (`models.inference.region_entries`, as served). A
    defective query counts as right when its verdict is "defect" and its label its class.
    ELPV has no defect types, so this is synthetic only. Writes defect_types.{json,md}."""
    from models import reporting
    from models.data import synthetic

    if features is None:
        images, labels, surfaces = synthetic.make_surface_set(
            ("ok", *synthetic.EVAL_TYPES), per_class, seed + 6)
        features = (served_features(images, backbone, cache_dir, desc="defect types"),
                    labels, surfaces)
    f, labels, surfaces = features
    rows: list[dict[str, Any]] = []
    for task, name in (("types", "defect types within one product (5-way)"),
                       ("products", "one defect type on two products (2-way)")):
        for k in shots:
            got: dict[str, list[float]] = {"stored vectors (global look)": [],
                                           "region-fused (served)": []}
            flagged: list[float] = []
            for episode in progress(defect_type_episodes(
                    labels, surfaces, task, k, n_good, 10, count, seed + k),
                    desc=f"{task} {k}-shot", leave=False):
                right, caught = _defect_type_episode(f, surfaces, task, *episode)
                for mode, acc in right.items():
                    got[mode].append(acc)
                flagged.append(caught)
            for mode, accs in got.items():
                rows.append({"benchmark": name, "shots": k, "embedding": mode,
                             "accuracy": round(float(np.mean(accs)), 4), "ci95": _ci(accs),
                             "flagged": round(float(np.mean(flagged)), 4),
                             "episodes": count, "good_images": n_good})
    table = reporting.accuracy_table(rows, "benchmark", "embedding",
                                     ("defective parts flagged", "flagged"))
    return reporting.write(out_dir / "defect_types", rows, table)
