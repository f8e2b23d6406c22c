"""Episodic meta-training of the defect-aware head (`fsdi train`).

Recipe (P>M>F): ImageNet EfficientNet-Lite0 trunk, frozen; fixed multi-scale pooling
(models.meta); a linear head meta-trained with ProtoNet episodes on cached descriptors
of two sources with disjoint class splits: the synthetic defect types in
`synthetic.TRAIN_TYPES` and Fashion-MNIST classes 0-4. Task augmentation: each
synthetic class's polarity-inverted twin (dark <-> bright) is a new class.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import trange

from models.data import synthetic
from models.data.episodes import Episode, EpisodeSampler
from models.data.sources import FMNIST_EVAL, FMNIST_TRAIN, fashion_mnist
from models.features import descriptors
from models.meta import ProjectionHead


@dataclass
class TrainConfig:
    episodes: int = 1500
    n_way: int = 5
    k_shot: int = 5
    q_query: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    out_dim: int = 256
    seed: int = 0
    synth_per_class: int = 150
    fmnist_per_class: int = 200
    task_aug: str = "invert"  # or "none"
    augment_views: int = 0  # augmented copies of each meta-train image (measured: hurts)
    # Same-surface episodes (one part, several defect types), the factory's real task:
    # images per (surface, type); 0 leaves this source out.
    surface_per_class: int = 0  # measured: no gain (MODEL_CARD.md)
    # L2-SP (Li et al., ICML 2018): pull the head towards its initial, geometry-preserving
    # projection, so meta-training on a few defect types cannot forget the general features.
    l2sp: float = 0.3
    checkpoint_every: int = 250

    def data_key(self) -> str:
        d = (self.synth_per_class, self.fmnist_per_class, self.task_aug, self.seed,
             self.augment_views, self.surface_per_class)
        return hashlib.sha256(repr(d).encode()).hexdigest()[:12]


def imagenet_trunk() -> torch.nn.Module:
    from models.effnet import lite0_trunk

    return lite0_trunk()[0].eval()


def random_trunk(seed: int) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(seed)
    return EfficientNet.from_name("efficientnet-lite0").eval()


def augment(imgs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Label-preserving views a line camera produces: flips, quarter turns, gain, gamma,
    a small shift and sensor noise. (N, H, W) uint8 -> same."""
    out = np.empty_like(imgs)
    for i, a in enumerate(imgs):
        x = np.rot90(a, int(rng.integers(4)))
        if rng.random() < 0.5:
            x = x[:, ::-1]
        x = np.roll(x, tuple(int(v) for v in rng.integers(-8, 9, 2)), axis=(0, 1))
        f = (x.astype(np.float32) / 255) ** rng.uniform(0.8, 1.25) * rng.uniform(0.8, 1.2)
        f = f * 255 + rng.normal(0, rng.uniform(0, 4), f.shape)
        out[i] = np.clip(f, 0, 255).astype(np.uint8)
    return out


def _cached(path: Path, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if path.is_file():
        return dict(np.load(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    out = build()
    np.savez(path, **out)  # type: ignore[arg-type]
    return out


def _descriptors(trunk: torch.nn.Module, sets: dict[str, tuple[np.ndarray, np.ndarray]],
                 tag: str) -> dict[str, np.ndarray]:
    from models.backbones import PreprocessConfig

    out: dict[str, np.ndarray] = {}
    for name, (imgs, lab) in sets.items():
        out[f"{name}_x"] = descriptors(trunk, imgs, PreprocessConfig(), desc=f"{tag}:{name}")
        out[f"{name}_y"] = lab
    return out


def eval_images(cfg: TrainConfig) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]],
                                             dict[str, np.ndarray]]:
    """The held-out evaluation splits as (N, h, w) grey images and labels, and the
    surface of each OK-vs-defective image (its episodes stay inside one surface)."""
    bx, by, bg = synthetic.make_binary_set(synthetic.EVAL_TYPES, 30, cfg.seed + 4)
    # "ok" (0) and every held-out defect type (1..5) on every surface: open-set episodes.
    nx, ny, ng = synthetic.make_surface_set(("ok", *synthetic.EVAL_TYPES), 20, cfg.seed + 6)
    return {
        "synth_eval": synthetic.make_set(synthetic.EVAL_TYPES, cfg.synth_per_class,
                                         cfg.seed + 1)[:2],
        "fmnist_eval": fashion_mnist(FMNIST_EVAL, cfg.fmnist_per_class, cfg.seed + 3)[:2],
        "binary_eval": (bx, by),
        "novel_eval": (nx, ny),
    }, {"binary_eval": bg, "novel_eval": ng}


def feature_sets(cfg: TrainConfig, cache_dir: Path, random_init: bool = False
                 ) -> dict[str, np.ndarray]:
    """Descriptors and labels of the evaluation splits and (ImageNet trunk only) the
    meta-train splits, cached on disk by the settings each depends on."""
    from models.backbones import TRUNK_REVISION

    # The trunk's code revision is part of the name: a fixed trunk never reads old features.
    tag = f"{'random' if random_init else 'imagenet'}-{TRUNK_REVISION}"
    ekey = hashlib.sha256(repr((cfg.synth_per_class, cfg.fmnist_per_class, cfg.seed)
                               ).encode()).hexdigest()[:12]

    def eval_sets() -> dict[str, np.ndarray]:
        trunk = random_trunk(cfg.seed) if random_init else imagenet_trunk()
        sets, groups = eval_images(cfg)
        out = _descriptors(trunk, sets, tag)
        out |= {f"{name}_g": g for name, g in groups.items()}
        return out

    out = _cached(cache_dir / f"eval3-{tag}-{ekey}.npz", eval_sets)
    if random_init:
        return out

    def train_sets() -> dict[str, np.ndarray]:
        rng = np.random.default_rng(cfg.seed + 99)
        imgs, lab, _ = synthetic.make_set(synthetic.TRAIN_TYPES, cfg.synth_per_class, cfg.seed)
        if cfg.task_aug == "invert":  # each class's polarity twin is a new class
            imgs = np.concatenate([imgs, 255 - imgs])
            lab = np.concatenate([lab, lab + len(synthetic.TRAIN_TYPES)])
        fm, fl, _ = fashion_mnist(FMNIST_TRAIN, cfg.fmnist_per_class, cfg.seed + 2)
        fm = np.stack([np.asarray(Image.fromarray(a).resize((224, 224), Image.Resampling.BILINEAR))
                       for a in fm])
        sets = {"synth_train": (imgs, lab), "fmnist_train": (fm, fl)}
        for name, (x, y) in list(sets.items()):  # extra augmented views, same labels
            views = [x] + [augment(x, rng) for _ in range(cfg.augment_views)]
            sets[name] = (np.concatenate(views), np.tile(y, len(views)))
        groups = None
        if cfg.surface_per_class:
            sx, sy, groups = synthetic.make_surface_set(synthetic.TRAIN_TYPES,
                                                        cfg.surface_per_class, cfg.seed + 5)
            sets["surface_train"] = (sx, sy)
        out = _descriptors(imagenet_trunk(), sets, tag)
        if groups is not None:
            out["surface_train_g"] = groups
        return out

    return out | _cached(cache_dir / f"train-{TRUNK_REVISION}-{cfg.data_key()}.npz", train_sets)


def protonet_loss(head: ProjectionHead, log_t: torch.Tensor, feats: torch.Tensor,
                  ep: Episode, n_way: int) -> tuple[torch.Tensor, torch.Tensor]:
    sup = head(feats[torch.from_numpy(ep.support)])
    qry = head(feats[torch.from_numpy(ep.query)])
    protos = torch.stack([sup[torch.from_numpy(ep.support_labels == c)].mean(0)
                          for c in range(n_way)])
    logits = -torch.cdist(qry, protos).pow(2) / log_t.exp()
    target = torch.from_numpy(ep.query_labels).long()
    loss = torch.nn.functional.cross_entropy(logits, target)
    acc = (logits.argmax(1) == target).float().mean()
    return loss, acc


def train(cfg: TrainConfig, out: Path, cache_dir: Path, resume: bool = True,
          log_every: int = 50) -> Path:
    """Meta-train; write `out` (safetensors head) and `out`.log.jsonl. Resumable."""
    from safetensors.torch import save_file

    torch.manual_seed(cfg.seed)
    data = feature_sets(cfg, cache_dir)
    sources: list[tuple[torch.Tensor, np.ndarray, np.ndarray | None]] = [
        (torch.from_numpy(data["synth_train_x"]), data["synth_train_y"], None),
        (torch.from_numpy(data["fmnist_train_x"]), data["fmnist_train_y"], None)]
    if "surface_train_x" in data:
        sources.append((torch.from_numpy(data["surface_train_x"]), data["surface_train_y"],
                        data["surface_train_g"]))
    head = ProjectionHead(out_dim=cfg.out_dim)
    head.set_statistics(torch.cat([s[0] for s in sources]))
    w0 = head.proj.weight.detach().clone()
    log_t = torch.nn.Parameter(torch.tensor(np.log(0.1), dtype=torch.float32))
    opt = torch.optim.AdamW([*head.proj.parameters(), log_t], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    ckpt = out.with_suffix(".ckpt.pt")
    start = 0
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        head.load_state_dict(state["head"])
        w0 = state["w0"]
        log_t.data.copy_(state["log_t"])
        opt.load_state_dict(state["opt"])
        start = int(state["episode"])
    samplers = [EpisodeSampler(y, cfg.n_way, cfg.k_shot, cfg.q_query, cfg.seed + 10 * i + start,
                               groups=g) for i, (_, y, g) in enumerate(sources)]
    log_path = out.with_suffix(".log.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, run_loss, run_acc = time.time(), 0.0, 0.0
    bar = trange(start, cfg.episodes, desc="meta-train", unit="episode", initial=start,
                 total=cfg.episodes)
    with open(log_path, "a") as log:
        for step in bar:
            feats = sources[step % len(sources)][0]
            ep = samplers[step % len(sources)].sample()
            loss, acc = protonet_loss(head, log_t, feats, ep, cfg.n_way)
            reg = cfg.l2sp * (head.proj.weight - w0).pow(2).sum()
            opt.zero_grad()
            (loss + reg).backward()
            opt.step()
            run_loss += float(loss.detach())
            run_acc += float(acc)
            if (step + 1) % log_every == 0:
                rec = {"episode": step + 1, "loss": run_loss / log_every,
                       "acc": run_acc / log_every, "seconds": round(time.time() - t0, 1)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc']:.3f}")
                run_loss = run_acc = 0.0
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.episodes:
                torch.save({"head": head.state_dict(), "log_t": log_t.data, "w0": w0, "opt":
                            opt.state_dict(), "episode": step + 1}, ckpt)
    tensors = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, str(out), metadata={"config": json.dumps(asdict(cfg))})
    return out
