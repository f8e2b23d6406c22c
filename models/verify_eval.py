"""Verification off the serving path: the global calibration's fit (meta-training
sources only) and `fsdi evaluate verify` (held-out sets, the ELPV mono cells where
installed), both through the served code (models.verify, models.inference)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np

from models import reporting
from models.calibration import expected_calibration_error
from models.data.episodes import Episode, EpisodeSampler
from models.inference import EnrolledClass, ServingConfig, build_served_group
from models.patchcore.evaluate import Features
from models.progress import progress
from models.reporting import mean_ci
from models.verify import (
    Calibration,
    PairModel,
    fit,
    group_calibration,
    load_global,
    same_probability,
    save_global,
    seen,
)

# (name, n_way) of the sets each side uses; the images come from `_sets`.
FIT_SETS = (("synthetic training defect types, one surface", 5),
            ("Fashion-MNIST training classes", 5))
EVAL_SETS = (("synthetic held-out defect types, one surface", 5),
             ("Fashion-MNIST held-out classes", 5),
             ("ELPV mono, good vs defective", 2))


Set = tuple[str, int, np.ndarray, np.ndarray, np.ndarray | None, int | None]


def _sets(names: tuple[tuple[str, int], ...], per_class: int, seed: int) -> list[Set]:
    """(name, n_way, images, labels, surfaces or None, the label of good parts or None)
    for each set that is installed. A class of good parts is enrolled as one (kind
    "good"), as a line enrols its good parts."""
    from models.data import elpv, synthetic
    from models.data.sources import FMNIST_EVAL, FMNIST_TRAIN, fashion_mnist

    out: list[Set] = []
    for name, n_way in names:
        if _how_to_install(name) is not None:
            continue
        if name.startswith("synthetic training"):
            x, y, g = synthetic.make_surface_set(synthetic.TRAIN_TYPES, per_class, seed)
            out.append((name, n_way, x, y, g, synthetic.TRAIN_TYPES.index("ok")))
        elif name.startswith("synthetic held-out"):
            x, y, g = synthetic.make_surface_set(("ok", *synthetic.EVAL_TYPES), per_class,
                                                 seed + 6)
            out.append((name, n_way, x, y, g, 0))
        elif name.startswith("Fashion-MNIST"):
            classes = FMNIST_TRAIN if "training" in name else FMNIST_EVAL
            fx, fy, _ = fashion_mnist(classes, per_class, seed + 2)
            out.append((name, n_way, fx, fy, None, None))
        elif name.startswith("ELPV"):
            ex, ey = elpv.load_mono()
            out.append((name, n_way, ex, ey, None, 0))  # 0: a good cell
    return out


def _how_to_install(name: str) -> str | None:
    """How to install the set `name`, or None where it is installed here."""
    from models.data import elpv
    from models.data.sources import FMNIST_DIR

    if name.startswith("Fashion-MNIST") and \
            not (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        return "apt-get install dataset-fashion-mnist"
    if name.startswith("ELPV") and not elpv.available():
        return "pip install elpv-dataset; evaluation only"
    return None


def _missing(names: tuple[tuple[str, int], ...]) -> list[str]:
    """The sets of `names` that are not installed here, each with how to install it."""
    return [f"{name} ({how})" for name, _ in names
            if (how := _how_to_install(name)) is not None]


def fit_global(backbone: str = "fsdi_lite0_meta", per_class: int = 60, episodes: int = 200,
               seed: int = 0, cache_dir: Path = Path("runs/cache/onnx")) -> Calibration:
    """The Siamese pair logit's calibration from the meta-training sources alone (every
    pair inside episodes of 5 classes x 10 images), written to the shipped file."""
    from models.patchcore.evaluate import served_features

    pm = PairModel()
    logits, same = [], []
    for name, n_way, x, y, g, _ in _sets(FIT_SETS, per_class, seed):
        f = served_features(x, backbone, cache_dir, desc=name.split(",")[0])
        sampler = EpisodeSampler(y, n_way, 10, 0, seed + 11, g)
        for _ in range(episodes):
            ep = sampler.sample()
            v = f.embeddings[ep.support, :f.metric_dim]
            z = pm.logits(v, v)
            a, b = np.triu_indices(len(v), k=1)
            logits.append(z[a, b])
            same.append(ep.support_labels[a] == ep.support_labels[b])
    cal = fit(np.concatenate(logits), np.concatenate(same), "global")
    save_global(cal, "; ".join(n for n, _ in FIT_SETS) + f" (seed {seed}, {episodes} "
                "episodes each of 5 classes x 10 images, every pair)")
    return cal


def _verify_episode(ep: Episode, f: Features, n_way: int, pm: PairModel, glob: Calibration,
                    config: ServingConfig, kinds: list[str]
                    ) -> tuple[dict[str, np.ndarray], np.ndarray, Calibration | None]:
    """One episode's held-out pairs: p(same) by mode (the group's own calibration as
    served, or the global one where the group is too small; where the episode has good
    parts, the same images with the good parts enrolled as a defect class, as served to
    a line without good parts, and the classes alone on the whole frame, without patch
    features: what /verify served before either; the global one; the Siamese
    probability uncalibrated), whether each pair is the same class, and the group's
    calibration. `kinds`: each episode class's kind ("good" | "defect")."""
    classes = [EnrolledClass(c, f"class{c}", kinds[c],
                             tuple(int(i) for i in ep.support[ep.support_labels == c]),
                             f.embeddings[ep.support[ep.support_labels == c]],
                             f.patches[ep.support[ep.support_labels == c]])
               for c in range(n_way)]
    q = f.embeddings[ep.query]
    a, b = np.triu_indices(len(q), k=1)
    siamese = pm.logits(q[:, :f.metric_dim], q[:, :f.metric_dim])[a, b]
    out = {"global": glob.probability(siamese),
           "none": Calibration(1.0, 0.0, "none").probability(siamese)}
    def patches_of(ids: list[int]) -> dict[int, np.ndarray]:
        return {i: f.patches[i] for i in ids}

    served = build_served_group("eval", classes, f.metric_dim, config)
    own = group_calibration(classes, f.metric_dim, config, served=served,
                            patches_of=patches_of)
    modes = [("group", served, own)]
    if "good" in kinds:
        # the same images, the good parts enrolled as one more defect class: as served
        # to a line that enrolled no good parts
        lone = [replace(c, kind="defect") for c in classes]
        lone_served = build_served_group("eval", lone, f.metric_dim, config)
        modes.append(("group, no good parts", lone_served, group_calibration(
            lone, f.metric_dim, config, served=lone_served, patches_of=patches_of)))
        plain = [replace(c, kind="defect", patches=None) for c in classes]
        modes.append(("group, classes only", served,
                      group_calibration(plain, f.metric_dim, config)))
    for mode, grp, cal in modes:
        if cal is None:
            out[mode] = out["global"]
            continue
        post, looks = seen(grp, cal, q, f.patches[ep.query], f.metric_dim)
        out[mode] = same_probability(cal, post, looks, a, b)
    order = ("group", "group, no good parts", "group, classes only", "global", "none")
    return ({m: out[m] for m in order if m in out}, ep.query_labels[a] == ep.query_labels[b],
            own)


def verify_report(out: Path, backbone: str = "fsdi_lite0_meta",
                  shots: tuple[int, ...] = (1, 5, 10), episodes: int = 100,
                  q_query: int = 10, seed: int = 0, per_class: int = 60,
                  cache_dir: Path = Path("runs/cache/onnx")) -> str:
    """Same or different on held-out pairs (every pair of an episode's held-out images),
    group against global calibration, and the Siamese probability uncalibrated ("none"),
    on the same episodes: balanced accuracy (mean and 95% CI over episodes) and ECE
    (pooled; all same pairs with as many different ones drawn at random). Writes
    verify.{json,md}."""
    from models.patchcore.evaluate import served_features

    pm, glob, config = PairModel(), load_global(), ServingConfig()
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for name, n_way, x, y, g, good in _sets(EVAL_SETS, per_class, seed):
        f = served_features(x, backbone, cache_dir, desc=name.split(",")[0])
        for k in shots:
            sampler = EpisodeSampler(y, n_way, k, q_query, seed + k, g)
            got: dict[str, tuple[list[float], list[np.ndarray], list[np.ndarray]]] = {}
            fell_back = 0
            for _ in progress(range(episodes), desc=f"{name.split(',')[0]} {k}-shot",
                              leave=False):
                ep = sampler.sample()
                # an episode class is good parts when its images are the set's good label
                kinds = ["good" if good is not None and
                         y[ep.support[ep.support_labels == c][0]] == good else "defect"
                         for c in range(n_way)]
                probs, same, own = _verify_episode(ep, f, n_way, pm, glob, config, kinds)
                fell_back += own is None
                if "good" in kinds and n_way > 2:  # the group score where good parts are
                    probs["group, episodes with good parts"] = probs["group"]
                # the pairs ECE pools: every same pair and as many different ones, drawn
                # once per episode, so every mode is judged on the same pairs
                pick = np.concatenate([np.flatnonzero(same), rng.choice(
                    np.flatnonzero(~same), same.sum(), replace=False)])
                for mode, p in probs.items():
                    got.setdefault(mode, ([], [], []))
                    said = p >= 0.5
                    got[mode][0].append(float(said[same].mean() + (~said[~same]).mean()) / 2)
                    got[mode][1].append(np.maximum(p[pick], 1 - p[pick]))
                    got[mode][2].append(said[pick] == same[pick])
            for mode, (ba, conf, right) in got.items():
                m, ci = mean_ci(np.asarray(ba))
                rows.append({"set": name, "shots": k, "calibration": mode,
                             "balanced_accuracy": round(m, 4), "ci95": round(ci, 4),
                             "ece": round(expected_calibration_error(
                                 np.concatenate(conf), np.concatenate(right)), 4),
                             "episodes": episodes,
                             "fell_back_to_global": fell_back if mode == "group" else 0})
    table = reporting.markdown(
        ["set", "shots", "calibration", "balanced accuracy", "ECE", "group fell back"],
        [[str(r["set"]), str(r["shots"]), str(r["calibration"]),
          f"{100 * cast(float, r['balanced_accuracy']):.1f} ± "
          f"{100 * cast(float, r['ci95']):.1f}", f"{cast(float, r['ece']):.3f}",
          f"{r['fell_back_to_global']}/{episodes}" if r["calibration"] == "group" else ""]
         for r in rows])
    missing = _missing(EVAL_SETS)
    if missing:  # said in the report, not left for a reader to notice
        table += "\nNot measured, not installed here: " + "; ".join(missing) + ".\n"
    return reporting.write(out / "verify", rows, table)
