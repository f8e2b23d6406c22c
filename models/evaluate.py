"""N-way K-shot evaluation on held-out classes (`fsdi evaluate`).

Every embedding is scored on the *same* episodes: the meta-trained head, the frozen
ImageNet global-pool baseline, and a random-init network's global pool. Nearest
prototype (ProtoNet rule) on unit vectors; mean accuracy and 95% CI over episodes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.backbones import Backbone
from models.calibration import CalibrationConfig
from models.data.episodes import EpisodeSampler
from models.meta import ProjectionHead

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
        d = ((qry[:, None, :] - protos[None]) ** 2).sum(-1)
        accs[e] = (d.argmin(1) == ep.query_labels).mean()
    return accs


def mean_ci(accs: np.ndarray) -> tuple[float, float]:
    return float(accs.mean()), float(1.96 * accs.std(ddof=1) / np.sqrt(len(accs)))


def head_embed(path: Path) -> Embed:
    from models.backbones import load_state_dict_safely

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
            for name, z in tqdm(by_name.items(), desc=f"{bench} {k}-shot", leave=False):
                # The same seed gives every embedding the same episodes.
                sampler = EpisodeSampler(labels[bench], ways, k, q_query, seed + k,
                                         groups=groups)
                m, ci = mean_ci(episode_accuracy(z, sampler, episodes))
                rows.append({"benchmark": bench, "shots": k, "embedding": name,
                             "accuracy": round(m, 4), "ci95": round(ci, 4),
                             "episodes": episodes, "n_way": ways})
    return rows


def write_reports(rows: list[dict[str, object]], out_dir: Path) -> None:
    """JSON, a Markdown table and a PNG plot of accuracy vs shots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(rows, indent=2))
    lines = ["| benchmark | embedding | " + " | ".join(
        f"{k}-shot" for k in sorted({int(r['shots']) for r in rows})) + " |"]  # type: ignore[call-overload]
    lines.append("|" + "---|" * (len(lines[0].split("|")) - 2))
    keys = sorted({(str(r["benchmark"]), str(r["embedding"])) for r in rows})
    for b, e in keys:
        cells = [f"{100 * float(r['accuracy']):.1f} ± {100 * float(r['ci95']):.1f}"  # type: ignore[arg-type]
                 for r in rows if r["benchmark"] == b and r["embedding"] == e]
        lines.append(f"| {b} | {e} | " + " | ".join(cells) + " |")
    (out_dir / "evaluation.md").write_text("\n".join(lines) + "\n")
    benches = sorted({str(r["benchmark"]) for r in rows})
    fig, axes = plt.subplots(1, len(benches), figsize=(5 * len(benches), 4), squeeze=False)
    for ax, b in zip(axes[0], benches, strict=True):
        for e in sorted({str(r["embedding"]) for r in rows if r["benchmark"] == b}):
            pts = sorted((int(r["shots"]), float(r["accuracy"]), float(r["ci95"]))  # type: ignore[call-overload, arg-type]
                         for r in rows if r["benchmark"] == b and r["embedding"] == e)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        marker="o", capsize=3, label=e)
        ax.set_title(b)
        ax.set_xlabel("shots")
        ax.set_ylabel("accuracy")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "evaluation.png", dpi=100)
    plt.close(fig)


REJECTION_SETUP = {  # home benchmark -> (n_way, the unrelated set its foreign images come from)
    "synth_eval": (5, "fmnist_eval"),
    "fmnist_eval": (5, "synth_eval"),
    "binary_eval": (2, "fmnist_eval"),
}


def rejection_report(data: dict[str, np.ndarray], embed: Embed, metric_cfg: CalibrationConfig,
                     app_cfg: CalibrationConfig, shots: tuple[int, ...], episodes: int,
                     seed: int, out_dir: Path) -> str:
    """Unknown rejection with the service's calibration on held-out classes: how many
    genuine images are accepted with the right class or falsely rejected, and how many
    images of an unrelated set are rejected. Writes rejection.{json,md}."""
    parts = {b: (embed(data[f"{b}_x"]), unit(data[f"{b}_x"][:, :1280]))
             for b in (*REJECTION_SETUP, "novel_eval")}
    rows = rejection_rows({"": parts}, data, metric_cfg, app_cfg, shots, episodes, seed)
    md = write_rejection(rows, out_dir / "rejection")
    from models.openset import novelty_rates

    novel = [{"shots": k, "known": "ok + 2 defect types", "novel": "the other 3",
              "episodes": episodes} | {m: round(v, 4) for m, v in novelty_rates(
                  *parts["novel_eval"], data["novel_eval_y"], data["novel_eval_g"],
                  metric_cfg, app_cfg, k, 2, episodes, seed + 500 + k).items()}
             for k in shots]
    (out_dir / "novelty.json").write_text(json.dumps(novel, indent=2))
    lines = ["| shots | known classes accepted, right class | known falsely rejected "
             "| unseen defect types rejected |", "|---|---|---|---|"]
    lines += [f"| {r['shots']} | {100 * float(r['accepted_correct']):.1f} | "  # type: ignore[arg-type]
              f"{100 * float(r['falsely_rejected']):.1f} | "  # type: ignore[arg-type]
              f"{100 * float(r['novel_rejected']):.1f} |" for r in novel]  # type: ignore[arg-type]
    table = "\n".join(lines) + "\n"
    (out_dir / "novelty.md").write_text(table)
    return md + "\nUnseen defect types on one surface (enrolled: ok + 2 held-out types):\n" + table


def rejection_rows(parts: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
                   labels: dict[str, np.ndarray], metric_cfg: CalibrationConfig,
                   app_cfg: CalibrationConfig, shots: tuple[int, ...], episodes: int,
                   seed: int) -> list[dict[str, object]]:
    """parts[name][bench] = (metric, appearance) embeddings; `labels` holds `<bench>_y`
    and, where episodes stay inside a group, `<bench>_g`. Same episodes for every name."""
    from models.openset import rejection_rates

    rows: list[dict[str, object]] = []
    for bench, (ways, foreign) in REJECTION_SETUP.items():
        for k in shots:
            for name, by_bench in parts.items():
                r = rejection_rates(*by_bench[bench], labels[f"{bench}_y"], by_bench[foreign],
                                    metric_cfg, app_cfg, k, ways, episodes, seed + k,
                                    groups=labels.get(f"{bench}_g"))
                rows.append({"benchmark": bench, "foreign": foreign, "shots": k,
                             "n_way": ways, "episodes": episodes}
                            | ({"embedding": name} if name else {})
                            | {m: round(v, 4) for m, v in r.items()})
    return rows


def write_rejection(rows: list[dict[str, object]], stem: Path) -> str:
    """`stem`.json and a Markdown table `stem`.md; returns the table."""
    named = any("embedding" in r for r in rows)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    lines = ["| benchmark (foreign set) | " + ("embedding | " if named else "") +
             "shots | accepted, right class | falsely rejected | foreign rejected |",
             "|---|---|---|---|---|" + ("---|" if named else "")]
    for r in rows:
        cells = [f"{r['benchmark']} ({r['foreign']})"] + (
            [str(r["embedding"])] if named else []) + [str(r["shots"])] + [
            f"{100 * float(r[m]):.1f}"  # type: ignore[arg-type]
            for m in ("accepted_correct", "falsely_rejected", "foreign_rejected")]
        lines.append("| " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    stem.with_suffix(".md").write_text(md)
    return md


def served_embeddings(backbone: Backbone, precisions: tuple[str, ...],
                      images: dict[str, tuple[np.ndarray, np.ndarray]], cache_dir: Path,
                      threads: int = 2) -> dict[str, dict[str, np.ndarray]]:
    """Embed each set with the network exactly as served (ONNX Runtime, each precision):
    out[precision][set] = (N, D) full served embeddings."""
    from dataclasses import replace

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
                                           for i in tqdm(range(0, len(x), 32),
                                                         desc=f"{p}:{name}", leave=False)])
    return out


def precision_report(backbone_name: str, precision: str, images: dict[str, tuple[np.ndarray,
                     np.ndarray]], groups: dict[str, np.ndarray], metric_cfg: CalibrationConfig,
                     app_cfg: CalibrationConfig, shots: tuple[int, ...], episodes: int,
                     seed: int, cache_dir: Path, out_dir: Path) -> str:
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
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "precision.json").write_text(json.dumps(rows, indent=2))
    lines = ["| benchmark | precision | " + " | ".join(f"{k}-shot" for k in shots) + " |",
             "|---|---|" + "---|" * len(shots)]
    for b in images:
        for p in served:
            cells = [f"{100 * float(r['accuracy']):.1f} ± {100 * float(r['ci95']):.1f}"  # type: ignore[arg-type]
                     for r in rows if r["benchmark"] == b and r["embedding"] == p]
            lines.append(f"| {b} | {p} | " + " | ".join(cells) + " |")
    md = "\n".join(lines) + "\n"
    (out_dir / "precision.md").write_text(md)
    parts = {p: {b: (unit(e[:, :metric_dim]), unit(e[:, metric_dim:]) if e.shape[1] > metric_dim
                     else unit(e)) for b, e in by_set.items()} for p, by_set in served.items()}
    rej = rejection_rows(parts, labels, metric_cfg, app_cfg, shots, episodes // 2, seed + 2000)
    return md + "\n" + write_rejection(rej, out_dir / "precision_rejection")
