"""N-way K-shot evaluation on held-out classes (`fsdi evaluate`).

Every embedding is scored on the *same* episodes: the meta-trained head, the frozen
ImageNet global-pool baseline, and a random-init network's global pool. Nearest
prototype (ProtoNet rule) on unit vectors; mean accuracy and 95% CI over episodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from models import reporting
from models.backbones import Backbone
from models.data.episodes import Episode, EpisodeSampler
from models.inference import ServingConfig
from models.meta import ProjectionHead, global_pool
from models.methods.protonet import squared_distances
from models.patchcore.evaluate import Features
from models.progress import progress
from models.reporting import mean_ci

Embed = Callable[[np.ndarray], np.ndarray]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def episode_accuracy(z: np.ndarray, sampler: EpisodeSampler, episodes: int) -> np.ndarray:
    """Per-episode accuracy of nearest-prototype classification on embeddings z (N, D)."""
    accs = np.empty(episodes)
    for e in range(episodes):
        ep = sampler.sample()
        sup, qry = z[ep.support], z[ep.query]
        protos = np.stack([sup[ep.support_labels == c].mean(0) for c in range(sampler.n_way)])
        d = squared_distances(qry, protos)
        accs[e] = (d.argmin(1) == ep.query_labels).mean()
    return accs


def head_embed(path: Path) -> Embed:
    from models.serving import load_state_dict_safely

    state = load_state_dict_safely(path)
    head = ProjectionHead(in_dim=state["mean"].shape[0], out_dim=state["proj.weight"].shape[0])
    head.load_state_dict(state, strict=True)
    head.eval()

    def f(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.from_numpy(x)).numpy()

    return f


def evaluate(embeddings: dict[str, dict[str, np.ndarray]], labels: dict[str, np.ndarray],
             shots: tuple[int, ...], episodes: int, n_way: int, q_query: int, seed: int,
             setup: dict[str, tuple[int, np.ndarray | None]] | None = None,
             ) -> list[dict[str, object]]:
    """embeddings[bench][name] -> (N, D); returns one row per (bench, shots, name).
    `setup[bench]` = (n_way, groups) overrides the way count and draws each episode
    inside one group (e.g. one surface)."""
    rows = []
    for bench, by_name in embeddings.items():
        ways, groups = (setup or {}).get(bench, (n_way, None))
        for k in shots:
            for name, z in progress(by_name.items(), desc=f"{bench} {k}-shot", leave=False):
                # The same seed gives every embedding the same episodes.
                sampler = EpisodeSampler(labels[bench], ways, k, q_query, seed + k,
                                         groups=groups)
                m, ci = mean_ci(episode_accuracy(z, sampler, episodes))
                rows.append({"benchmark": bench, "shots": k, "embedding": name,
                             "accuracy": round(m, 4), "ci95": round(ci, 4),
                             "episodes": episodes, "n_way": ways})
    return rows


def write_reports(rows: list[dict[str, object]], out_dir: Path) -> None:
    """evaluation.{json,md,png}: accuracy vs shots per benchmark and embedding."""
    reporting.write(out_dir / "evaluation", rows,
                    reporting.accuracy_table(rows, "benchmark", "embedding"),
                    plot=("benchmark", "embedding"))


REJECTION_SETUP = {  # home benchmark -> (n_way, the unrelated set its foreign images come from)
    "synth_eval": (5, "fmnist_eval"),
    "fmnist_eval": (5, "synth_eval"),
    "binary_eval": (2, "fmnist_eval"),
}


def rejection_report(data: dict[str, np.ndarray], embed: Embed, config: ServingConfig,
                     shots: tuple[int, ...], episodes: int, seed: int, out_dir: Path) -> str:
    """Unknown rejection on held-out classes, groups built as the service builds them
    (`config`: its settings): how many genuine images are accepted with the right class
    or falsely rejected, and how many images of an unrelated set are rejected. Writes
    rejection.{json,md} and novelty.{json,md}."""
    parts = {b: (embed(data[f"{b}_x"]), unit(global_pool(data[f"{b}_x"])))
             for b in (*REJECTION_SETUP, "novel_eval")}
    rows = rejection_rows({"": parts}, data, config, shots, episodes, seed)
    md = write_rejection(rows, out_dir / "rejection")
    from models.openset import novelty_rates

    novel = [{"shots": k, "known": "ok + 2 defect types", "novel": "the other 3",
              "episodes": episodes} | {m: round(v, 4) for m, v in novelty_rates(
                  *parts["novel_eval"], data["novel_eval_y"], data["novel_eval_g"],
                  config, k, 2, episodes, seed + 500 + k).items()}
             for k in shots]
    table = reporting.write(out_dir / "novelty", novel, reporting.markdown(
        ["shots", "known classes accepted, right class", "known falsely rejected",
         "unseen defect types rejected"],
        [[str(r["shots"]), *(reporting.pct(r, m) for m in
                             ("accepted_correct", "falsely_rejected", "novel_rejected"))]
         for r in novel]))
    return md + "\nUnseen defect types on one surface (enrolled: ok + 2 held-out types):\n" + table


def rejection_rows(parts: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
                   labels: dict[str, np.ndarray], config: ServingConfig,
                   shots: tuple[int, ...], episodes: int, seed: int
                   ) -> list[dict[str, object]]:
    """parts[name][bench] = (metric, appearance) embeddings; `labels` holds `<bench>_y`
    and, where episodes stay inside a group, `<bench>_g`. Same episodes for every name."""
    from models.openset import rejection_rates

    rows: list[dict[str, object]] = []
    for bench, (ways, foreign) in REJECTION_SETUP.items():
        for k in shots:
            for name, by_bench in parts.items():
                r = rejection_rates(*by_bench[bench], labels[f"{bench}_y"], by_bench[foreign],
                                    config, k, ways, episodes, seed + k,
                                    groups=labels.get(f"{bench}_g"))
                rows.append({"benchmark": bench, "foreign": foreign, "shots": k,
                             "n_way": ways, "episodes": episodes}
                            | ({"embedding": name} if name else {})
                            | {m: round(v, 4) for m, v in r.items()})
    return rows


def write_rejection(rows: list[dict[str, object]], stem: Path) -> str:
    """`stem`.json and a Markdown table `stem`.md; returns the table."""
    named = any("embedding" in r for r in rows)
    header = ["benchmark (foreign set)", *(["embedding"] if named else []), "shots",
              "accepted, right class", "falsely rejected", "foreign rejected"]
    body = [[f"{r['benchmark']} ({r['foreign']})", *([str(r["embedding"])] if named else []),
             str(r["shots"]), *(reporting.pct(r, m) for m in
                                ("accepted_correct", "falsely_rejected", "foreign_rejected"))]
            for r in rows]
    return reporting.write(stem, rows, reporting.markdown(header, body))


def served_embeddings(backbone: Backbone, precisions: tuple[str, ...],
                      images: dict[str, tuple[np.ndarray, np.ndarray]], cache_dir: Path,
                      threads: int = 2) -> dict[str, dict[str, np.ndarray]]:
    """Embed each set with the network exactly as served (ONNX Runtime, each precision):
    out[precision][set] = (N, D) full served embeddings."""
    from models.embedder import OrtEmbedder
    from models.features import served_input

    out: dict[str, dict[str, np.ndarray]] = {}
    for p in precisions:
        bb = replace(backbone, precision=p)  # same network, served at precision p
        emb = OrtEmbedder(bb, cache_dir, threads)
        out[p] = {}
        for name, (imgs, _) in images.items():
            x = served_input(imgs, bb.preprocess)
            out[p][name] = np.concatenate([emb.embed(x[i:i + 32])
                                           for i in progress(range(0, len(x), 32),
                                                         desc=f"{p}:{name}", leave=False)])
    return out


def precision_report(backbone_name: str, precision: str, images: dict[str, tuple[np.ndarray,
                     np.ndarray]], groups: dict[str, np.ndarray], config: ServingConfig,
                     shots: tuple[int, ...], episodes: int, seed: int, cache_dir: Path,
                     out_dir: Path) -> str:
    """fp32 vs `precision`, both served by ONNX Runtime, on the same episodes: few-shot
    accuracy of the metric part and unknown rejection of the whole embedding. Writes
    precision.{json,md} and precision_rejection.{json,md}."""
    from models.zoo import create_backbone

    backbone = create_backbone(backbone_name)
    metric_dim = backbone.metric_dim
    images = {b: images[b] for b in REJECTION_SETUP}
    groups = {b: g for b, g in groups.items() if b in images}
    served = served_embeddings(backbone, ("fp32", precision), images, cache_dir)
    labels = {f"{b}_y": y for b, (_, y) in images.items()} | {
        f"{b}_g": g for b, g in groups.items()}
    emb = {b: {p: unit(served[p][b][:, :metric_dim]) for p in served} for b in images}
    rows = evaluate(emb, {b: y for b, (_, y) in images.items()}, shots, episodes, 5, 15,
                    seed + 1000, setup={b: (REJECTION_SETUP[b][0], g) for b, g in groups.items()})
    md = reporting.write(out_dir / "precision", rows,
                         reporting.accuracy_table(rows, "benchmark", "embedding"))
    parts = {p: {b: (unit(e[:, :metric_dim]), unit(e[:, metric_dim:]) if e.shape[1] > metric_dim
                     else unit(e)) for b, e in by_set.items()} for p, by_set in served.items()}
    rej = rejection_rows(parts, labels, config, shots, episodes // 2, seed + 2000)
    return md + "\n" + write_rejection(rej, out_dir / "precision_rejection")


def real_report(out: Path, backbone: str = "fsdi_lite0_meta", shots: tuple[int, ...] = (1, 5, 10),
                episodes: int = 300, q_query: int = 15, seed: int = 0,
                cache_dir: Path = Path("runs/cache/onnx"), rank_by: str = "appearance") -> str:
    """Real images: the ELPV mono development set (evaluation only; ../shared/DATA.md),
    2-way good vs defective, K-shot, both classes enrolled as ordinary classes. The
    served decision (`GroupIndex.decide` on the served network's stored vectors, as
    /classify answers) against the frozen ImageNet global pool (nearest mean, the
    appearance part of the same vectors) on the same episodes. Writes real.{json,md,png}."""
    from models.calibration import expected_calibration_error
    from models.data import elpv
    from models.inference import THRESHOLD_RULES
    from models.patchcore.evaluate import served_features

    if not elpv.available():
        raise RuntimeError("the ELPV development set is not installed: pip install "
                           "elpv-dataset (evaluation only, never a runtime dependency)")
    images, labels = elpv.load_mono()
    f = served_features(images, backbone, cache_dir, desc="ELPV")
    two_parts = f.metric_dim < f.embeddings.shape[1]
    configs = {r: replace(ServingConfig(), rank_by=r)
               for r in (("appearance", "metric") if two_parts else ("metric",))}
    rows: list[dict[str, object]] = []
    for k in shots:
        served = {r: np.empty(episodes) for r in configs}
        base = np.empty(episodes)
        good = {rule: np.empty(episodes) for rule in THRESHOLD_RULES}
        # the verdict path's scores against "the answer is right" (verdict right and a
        # label given), for their expected calibration error
        claims: dict[str, tuple[list[float], list[bool]]] = {r: ([], []) for r in good}
        sampler = EpisodeSampler(labels, 2, k, q_query, seed + k)
        for e in progress(range(episodes), desc=f"ELPV {k}-shot", leave=False):
            one = _real_episode(sampler.sample(), f, labels, configs)
            for r, acc in one.served.items():
                served[r][e] = acc
            for rule, (acc, scores, right) in one.verdicts.items():
                good[rule][e] = acc
                claims[rule][0].extend(scores)
                claims[rule][1].extend(right)
            base[e] = one.baseline
        named = [(f"served, both as defect classes, ProtoNet ranked by the {r} part"
                  + (" (FSDI_RANK_BY default)" if r == rank_by else ""), accs)
                 for r, accs in served.items()]
        ece = {r: round(expected_calibration_error(np.asarray(c), np.asarray(ok)), 3)
               for r, (c, ok) in claims.items()}
        verdicts = [("served, the good images as a good class (verdict, threshold rule "
                     "auto: the defect images place it while good ones are few)",
                     good["auto"], ece["auto"]),
                    ("served, the good images as a good class (verdict, threshold rule "
                     "false_alarm_rate: from the good images alone)",
                     good["false_alarm_rate"], ece["false_alarm_rate"])]
        for name, accs, err in (*((n, a, "–") for n, a in named), *verdicts,
                                ("frozen ImageNet global pool (baseline)", base, "–")):
            m, ci = mean_ci(accs)
            rows.append({"benchmark": "ELPV mono, good vs defective", "shots": k,
                         "embedding": name, "accuracy": round(m, 4), "ci95": round(ci, 4),
                         "episodes": episodes, "n_way": 2, "ece": err})
    table = reporting.accuracy_table(rows, "benchmark", "embedding",
                                     ("ECE of the score (verdict path; 1/5/10-shot)", "ece"))
    return reporting.write(out / "real", rows, table, plot=("benchmark", "embedding"))


@dataclass(frozen=True)
class RealEpisode:
    served: dict[str, float]  # ranked by each part: accuracy, both as defect classes
    verdicts: dict[str, tuple[float, list[float], list[bool]]]  # per threshold rule:
    # accuracy of the verdict, the scores, and whether each answer was right
    baseline: float  # the frozen global pool's nearest mean


def _real_episode(ep: Episode, f: Features, labels: np.ndarray,
                  configs: dict[str, ServingConfig]) -> RealEpisode:
    """One ELPV episode: the served decision with both classes as defect classes (ranked
    by each part), the good images as a good class (the verdict, per threshold rule), and
    the baseline, all on the same support and queries."""
    from models.inference import THRESHOLD_RULES, EnrolledClass, build_served_group
    from models.openset import episode_index, served_decisions

    full, app = f.embeddings, unit(f.appearance)
    served = {}
    for r, cfg in configs.items():
        index = episode_index(full[ep.support], ep.support_labels, 2, cfg, f.metric_dim)
        served[r] = float((served_decisions(index, full[ep.query])[0] == ep.query_labels).mean())
    # The same support, the good images enrolled as a good class (kind "good"): the good
    # parts decide OK/NG, as /classify answers in such a group.
    ids = ep.support
    is_good = labels[ids] == 0
    classes = [EnrolledClass(0, "ok", "good", tuple(int(i) for i in ids[is_good]),
                             full[ids[is_good]], f.patches[ids[is_good]]),
               EnrolledClass(1, "defect", "defect", tuple(int(i) for i in ids[~is_good]),
                             full[ids[~is_good]], f.patches[ids[~is_good]])]
    truth = labels[ep.query] == 1
    verdicts = {}
    for rule in THRESHOLD_RULES:
        group = build_served_group("eval", classes, f.metric_dim,
                                   replace(ServingConfig(), threshold_rule=rule))
        got = group.inspect(full[ep.query], f.patches[ep.query], top_k=1)
        said = np.array([i.verdict == "defect" for i in got])
        verdicts[rule] = (float((said == truth).mean()), [i.score for i in got],
                          [bool(s == t) and not i.unknown
                           for i, s, t in zip(got, said, truth, strict=True)])
    protos = np.stack([app[ep.support][ep.support_labels == c].mean(0) for c in (0, 1)])
    base = float((squared_distances(app[ep.query], protos).argmin(1) == ep.query_labels).mean())
    return RealEpisode(served, verdicts, base)


def _score_sets(seed: int, synth_per_class: int, fmnist_per_class: int
                ) -> list[tuple[str, np.ndarray, np.ndarray, int, np.ndarray | None]]:
    """(name, images, labels, n_way, surfaces) of the held-out sets that are installed."""
    from models.data import elpv, synthetic
    from models.data.sources import FMNIST_DIR, fashion_mnist
    from models.train import FMNIST_EVAL

    sets: list[tuple[str, np.ndarray, np.ndarray, int, np.ndarray | None]] = []
    x, y, g = synthetic.make_surface_set(("ok", *synthetic.EVAL_TYPES), synth_per_class,
                                         seed + 6)
    sets.append(("synthetic defect types, one surface (5-way)", x, y, 5, g))
    if (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        fx, fy, _ = fashion_mnist(FMNIST_EVAL, fmnist_per_class, seed + 3)
        sets.append(("Fashion-MNIST held-out classes (5-way)", fx, fy, 5, None))
    if elpv.available():
        ex, ey = elpv.load_mono()
        sets.append(("ELPV mono, good vs defective (2-way)", ex, ey, 2, None))
    return sets


def _scores_episode(ep: Episode, f: Features, n_way: int, config: ServingConfig
                    ) -> dict[str, list[tuple[float, bool]]]:
    """One episode's (top score, right?) per query, per way of setting the temperature:
    fixed, fitted per group without the prior, fitted against it (served)."""
    from models.inference import GroupIndex
    from models.openset import episode_index

    fitted = episode_index(f.embeddings[ep.support], ep.support_labels, n_way, config,
                           f.metric_dim)
    fixed = GroupIndex.build("eval", fitted.entries, f.metric_dim, rank_by=config.rank_by,
                             calibrate=False)
    no_prior = GroupIndex.build("eval", fitted.entries, f.metric_dim,
                                rank_by=config.rank_by, prior=False)
    out: dict[str, list[tuple[float, bool]]] = {}
    for mode, index in (("fixed temperature 0.05", fixed),
                        ("fitted per group, maximum likelihood (no prior)", no_prior),
                        ("fitted per group against the prior (served)", fitted)):
        out[mode] = [(d.best.score, bool(d.best.index == truth)) for d, truth in zip(
            index.decide(f.embeddings[ep.query], top_k=1), ep.query_labels, strict=True)]
    return out


def _prior_episode(ep: Episode, f: Features, log_t: np.ndarray
                   ) -> tuple[np.ndarray, float, np.ndarray] | None:
    """One 5-way episode of a training source: its support images' held-out negative
    log-likelihood at each grid temperature, the prior's length scale for its
    prototypes, and its queries' negative log-likelihood at each (None: no scale)."""
    from models.calibration import _nll, held_out_distances, prior_temperature
    from models.openset import episode_index

    index = episode_index(f.embeddings[ep.support], ep.support_labels, 5, ServingConfig(),
                          f.metric_dim)
    protos = index.app_prototypes
    assert protos is not None
    scale = prior_temperature(protos, scale=1.0)
    held = [e.app_probes for e in index.entries if e.app_probes is not None]
    if scale is None or len(held) != len(index.entries):
        return None
    d2, own = held_out_distances(held, protos, None)
    support_nll = np.zeros_like(log_t)
    if len(own):
        support_nll = np.array([len(own) * _nll(d2, own, float(np.exp(t))) for t in log_t])
    q = f.embeddings[ep.query][:, f.metric_dim:]
    dq = squared_distances(q, protos)
    query_nll = np.array([len(q) * _nll(dq, ep.query_labels.astype(np.int64),
                                        float(np.exp(t))) for t in log_t])
    return support_nll, scale, query_nll


def fit_score_prior(backbone: str = "fsdi_lite0_meta", shots: tuple[int, ...] = (1, 5, 10),
                    episodes: int = 150, q_query: int = 15, seed: int = 100,
                    cache_dir: Path = Path("runs/cache/onnx"),
                    scales: tuple[float, ...] = tuple(np.exp(np.linspace(np.log(0.05),
                                                                         np.log(2.0), 25))),
                    widths: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0),
                    synth_per_class: int = 25, fmnist_per_class: int = 100
                    ) -> tuple[float, float]:
    """How `models.calibration.PRIOR_SCALE` and `PRIOR_SIGMA` were chosen, on the
    meta-training sources only (synthetic training defect types within one surface, and
    Fashion-MNIST classes 0-4 when installed; 5-way): for each (scale, width) on the grid,
    every episode's group takes its maximum a posteriori temperature (its held-out support
    images against the prior, as served, on a fine grid of temperatures), and the pair
    whose temperatures give the held-out queries the highest likelihood wins."""
    from models.calibration import TEMPERATURE_RANGE
    from models.data import synthetic
    from models.data.sources import FMNIST_DIR, FMNIST_TRAIN, fashion_mnist
    from models.patchcore.evaluate import served_features

    sets: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    x, y, g = synthetic.make_surface_set(synthetic.TRAIN_TYPES, synth_per_class, seed)
    sets.append((x, y, g))
    if (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        fx, fy, _ = fashion_mnist(FMNIST_TRAIN, fmnist_per_class, seed + 2)
        sets.append((fx, fy, None))
    log_t = np.linspace(np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1]), 240)
    curves: list[tuple[np.ndarray, float, np.ndarray]] = []
    for images, labels, groups in sets:
        f = served_features(images, backbone, cache_dir, desc="training source")
        for k in shots:
            sampler = EpisodeSampler(labels, 5, k, q_query, seed + k, groups)
            for _ in progress(range(episodes), desc=f"prior fit {k}-shot", leave=False):
                curve = _prior_episode(sampler.sample(), f, log_t)
                if curve is not None:
                    curves.append(curve)

    def total(c: float, w: float) -> float:
        out = 0.0
        for support_nll, scale, query_nll in curves:
            post = support_nll + (log_t - np.log(c * scale)) ** 2 / (2.0 * w ** 2)
            out += float(query_nll[int(np.argmin(post))])
        return out
    best = min(((c, w) for c in scales for w in widths), key=lambda cw: total(*cw))
    return round(float(best[0]), 2), float(best[1])


def scores_report(out: Path, backbone: str = "fsdi_lite0_meta", shots: tuple[int, ...] = (1, 5, 10),
                  episodes: int = 200, q_query: int = 15, seed: int = 0,
                  cache_dir: Path = Path("runs/cache/onnx"), rank_by: str = "appearance",
                  synth_per_class: int = 25, fmnist_per_class: int = 100) -> str:
    """Are the served scores probabilities? The served decision (`GroupIndex.decide`, as
    /classify answers) on held-out episodes, the score's temperature fixed (0.05) or fitted
    per group on its support set (models.calibration): accuracy, mean top score and the
    expected calibration error (15 bins), on synthetic defect types within one surface,
    Fashion-MNIST (if the Debian data is installed) and the ELPV mono development set (if
    its package is). Writes scores.{json,md,png}; the PNG is the reliability plot at 5
    shots (or the middle shot count)."""
    from models.calibration import expected_calibration_error, reliability
    from models.patchcore.evaluate import served_features

    sets = _score_sets(seed, synth_per_class, fmnist_per_class)
    rows: list[dict[str, object]] = []
    curves: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    plot_k = shots[len(shots) // 2] if 5 not in shots else 5
    for name, images, labels, n_way, groups in sets:
        f = served_features(images, backbone, cache_dir, desc=name.split(",")[0])
        config = replace(ServingConfig(), rank_by=rank_by)
        for k in shots:
            sampler = EpisodeSampler(labels, n_way, k, q_query, seed + k, groups)
            got: dict[str, tuple[list[float], list[bool]]] = {
                "fixed temperature 0.05": ([], []),
                "fitted per group, maximum likelihood (no prior)": ([], []),
                "fitted per group against the prior (served)": ([], [])}
            for _ in progress(range(episodes), desc=f"{name.split(',')[0]} {k}-shot",
                          leave=False):
                for mode, answers in _scores_episode(sampler.sample(), f, n_way,
                                                     config).items():
                    got[mode][0].extend(score for score, _ in answers)
                    got[mode][1].extend(right for _, right in answers)
            for mode, (conf, right) in got.items():
                c, r = np.asarray(conf), np.asarray(right)
                rows.append({"set": name, "shots": k, "scores": mode,
                             "accuracy": round(float(r.mean()), 4),
                             "mean_score": round(float(c.mean()), 4),
                             "ece": round(expected_calibration_error(c, r), 4),
                             "episodes": episodes})
                if k == plot_k:
                    curves[(name, mode)] = reliability(c, r)
    table = reporting.markdown(
        ["set", "shots", "scores", "accuracy", "mean score", "ECE (15 bins)"],
        [[str(r["set"]), str(r["shots"]), str(r["scores"]), reporting.pct(r, "accuracy"),
          reporting.pct(r, "mean_score"), f"{r['ece']:.3f}"] for r in rows])
    from models.calibration import PRIOR_SCALE, PRIOR_SIGMA

    scale, width = fit_score_prior(backbone, cache_dir=cache_dir)
    table += (f"\nThe temperature's prior, fitted again on the meta-training sources: scale "
              f"{scale}, width {width} (served: {PRIOR_SCALE}, {PRIOR_SIGMA}).\n")
    reporting.write(out / "scores", rows, table)
    reporting.reliability_plot(curves, out / "scores.png", f"{plot_k}-shot")
    return table
