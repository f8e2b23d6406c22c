"""Meta-training and evaluation of the methods on frozen embeddings (`fsdi train
--method`, `fsdi evaluate methods`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import trange

from models import reporting
from models.data.episodes import EpisodeSampler
from models.methods.base import FewShotMethod
from models.methods.meta_base import MetaMethod
from models.methods.registry import create_method
from models.reporting import mean_ci


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def meta_train(method: MetaMethod, sources: list[tuple[np.ndarray, np.ndarray]],
               episodes: int, n_way: int = 5, k_shot: int = 5, q_query: int = 10,
               lr: float = 1e-3, seed: int = 0, log_path: Path | None = None,
               log_every: int = 50) -> list[float]:
    """Episodes alternate between the sources; returns the per-episode losses."""
    torch.manual_seed(seed)
    samplers = [EpisodeSampler(y, n_way, k_shot, q_query, seed + 7 * i)
                for i, (_, y) in enumerate(sources)]
    opt = torch.optim.Adam(method.parameters(), lr=lr)
    method.train()
    losses: list[float] = []
    log = open(log_path, "a") if log_path else None  # noqa: SIM115 - closed below
    try:
        bar = trange(episodes, desc=f"meta-train {method.name}", unit="episode")
        for step in bar:
            x, _ = sources[step % len(sources)]
            ep = samplers[step % len(sources)].sample()
            loss = method.meta_step(opt, t(x[ep.support]), t(ep.support_labels),
                                    t(x[ep.query]), t(ep.query_labels), n_way)
            losses.append(loss)
            if (step + 1) % log_every == 0:
                recent = float(np.mean(losses[-log_every:]))
                bar.set_postfix(loss=f"{recent:.3f}")
                if log:
                    log.write(json.dumps({"method": method.name, "episode": step + 1,
                                          "loss": recent}) + "\n")
    finally:
        if log:
            log.close()
    method.eval()
    return losses


def evaluate_methods(names: list[str], z: np.ndarray, labels: np.ndarray, shots: int,
                     episodes: int, n_way: int = 5, q_query: int = 15, seed: int = 0,
                     groups: np.ndarray | None = None, **kw: object
                     ) -> list[dict[str, object]]:
    """Every method on the *same* episodes: accuracy, 95% CI and seconds per task
    (fit on the support set + predict the queries)."""
    methods: dict[str, FewShotMethod] = {n: create_method(n, **kw) for n in names}
    accs = {n: np.empty(episodes) for n in names}
    secs = dict.fromkeys(names, 0.0)
    sampler = EpisodeSampler(labels, n_way, shots, q_query, seed + shots, groups=groups)
    for e in range(episodes):
        ep = sampler.sample()
        for n, m in methods.items():
            t0 = time.perf_counter()
            out = m.fit(z[ep.support], ep.support_labels).predict(z[ep.query])
            secs[n] += time.perf_counter() - t0
            accs[n][e] = (out.scores.argmax(1) == ep.query_labels).mean()
    rows = []
    for n in names:
        m_, ci = mean_ci(accs[n])
        rows.append({"method": n, "shots": shots, "accuracy": round(m_, 4),
                     "ci95": round(ci, 4), "ms_per_task": round(1000 * secs[n] / episodes, 2),
                     "episodes": episodes})
    return rows


def train_method(name: str, cfg: object, cache: Path, head: Path, episodes: int) -> Path:
    """Meta-train method `name` over the shipped head's embeddings of the meta-train
    splits; write models/weights/methods/<name>.safetensors."""
    from models.evaluate import head_embed
    from models.methods.meta_base import WEIGHTS
    from models.train import feature_sets

    data = feature_sets(cfg, cache)  # type: ignore[arg-type]
    embed = head_embed(head)
    sources = [(embed(data["synth_train_x"]), data["synth_train_y"]),
               (embed(data["fmnist_train_x"]), data["fmnist_train_y"])]
    method = create_method(name, pretrained=False, dim=sources[0][0].shape[1])
    if not isinstance(method, MetaMethod):
        raise ValueError(f"{name!r} has no meta-parameters of its own to train")
    out = WEIGHTS / f"{name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".log.jsonl").unlink(missing_ok=True)
    meta_train(method, sources, episodes, seed=getattr(cfg, "seed", 0),
               log_path=out.with_suffix(".log.jsonl"))
    method.save(out)
    return out


def evaluate_all(which: str, head: Path, cache: Path, out: Path, episodes: int,
                 shots: tuple[int, ...], seed: int) -> str:
    """The methods table: every method, the same episodes, on the held-out synthetic,
    Fashion-MNIST and OK-vs-defective benchmarks, and on the ELPV mono development set
    (2-way good vs defective, the served metric part) when its package is installed."""
    from models.evaluate import head_embed
    from models.methods.registry import available_methods
    from models.train import TrainConfig, feature_sets

    names = available_methods() if which == "all" else [which]
    data = feature_sets(TrainConfig(seed=seed), cache)
    embed = head_embed(head)
    rows = []
    benches = ("synth_eval", "fmnist_eval", "binary_eval")
    for bench in benches:
        z = embed(data[f"{bench}_x"])
        # binary_eval: OK vs defective, 2-way, each episode inside one surface.
        ways, groups = (2, data["binary_eval_g"]) if bench == "binary_eval" else (5, None)
        for k in shots:
            for r in evaluate_methods(names, z, data[f"{bench}_y"], k, episodes, n_way=ways,
                                      seed=seed + 1000, groups=groups):
                rows.append({"benchmark": bench, **r})
    from models.data import elpv

    if elpv.available():  # real images, evaluation only (../shared/DATA.md)
        from models.patchcore.evaluate import served_features

        images, labels = elpv.load_mono()
        f = served_features(images, cache_dir=cache / "onnx", desc="ELPV")
        z = np.ascontiguousarray(f.embeddings[:, :f.metric_dim])  # what the methods serve on
        for k in shots:
            for r in evaluate_methods(names, z, labels, k, episodes, n_way=2,
                                      seed=seed + 1000):
                rows.append({"benchmark": "elpv_mono", **r})
    md = reporting.write(out / "methods", rows, reporting.accuracy_table(
        rows, "benchmark", "method", extra=("ms per task", "ms_per_task")),
        plot=("benchmark", "method"))
    return md
