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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
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
    # L2-SP (Li et al., ICML 2018): pull the head towards its initial, geometry-preserving
    # projection, so meta-training on a few defect types cannot forget the general features.
    l2sp: float = 0.1
    checkpoint_every: int = 250

    def data_key(self) -> str:
        d = (self.synth_per_class, self.fmnist_per_class, self.task_aug, self.seed)
        return hashlib.sha256(repr(d).encode()).hexdigest()[:12]


def imagenet_trunk() -> torch.nn.Module:
    from models.effnet import lite0_trunk

    return lite0_trunk()[0].eval()


def random_trunk(seed: int) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(seed)
    net = EfficientNet.from_name("efficientnet-lite0")
    net.set_swish(memory_efficient=False)
    return net.eval()


def feature_sets(cfg: TrainConfig, cache_dir: Path, random_init: bool = False
                 ) -> dict[str, np.ndarray]:
    """Descriptors and labels of every split, cached on disk by the data settings."""
    from models.backbones import PreprocessConfig

    tag = "random" if random_init else "imagenet"
    path = cache_dir / f"features-{tag}-{cfg.data_key()}.npz"
    if path.is_file():
        return dict(np.load(path))
    cache_dir.mkdir(parents=True, exist_ok=True)
    pre = PreprocessConfig()
    trunk = random_trunk(cfg.seed) if random_init else imagenet_trunk()
    out: dict[str, np.ndarray] = {}
    sets = {
        "synth_eval": synthetic.make_set(synthetic.EVAL_TYPES, cfg.synth_per_class,
                                         cfg.seed + 1),
        "fmnist_eval": fashion_mnist(FMNIST_EVAL, cfg.fmnist_per_class, cfg.seed + 3)[:2] + ([],),
    }
    if not random_init:
        imgs, lab, _ = synthetic.make_set(synthetic.TRAIN_TYPES, cfg.synth_per_class, cfg.seed)
        if cfg.task_aug == "invert":
            imgs = np.concatenate([imgs, 255 - imgs])
            lab = np.concatenate([lab, lab + len(synthetic.TRAIN_TYPES)])
        sets["synth_train"] = (imgs, lab, [])
        sets["fmnist_train"] = fashion_mnist(FMNIST_TRAIN, cfg.fmnist_per_class, cfg.seed + 2
                                             )[:2] + ([],)
    for name, (imgs, lab, _) in sets.items():
        out[f"{name}_x"] = descriptors(trunk, imgs, pre, desc=f"{tag}:{name}")
        out[f"{name}_y"] = lab
    np.savez(path, **out)  # type: ignore[arg-type]
    return out


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
    sources = [(torch.from_numpy(data["synth_train_x"]), data["synth_train_y"]),
               (torch.from_numpy(data["fmnist_train_x"]), data["fmnist_train_y"])]
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
    samplers = [EpisodeSampler(y, cfg.n_way, cfg.k_shot, cfg.q_query, cfg.seed + 10 * i + start)
                for i, (_, y) in enumerate(sources)]
    log_path = out.with_suffix(".log.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, run_loss, run_acc = time.time(), 0.0, 0.0
    bar = trange(start, cfg.episodes, desc="meta-train", unit="episode", initial=start,
                 total=cfg.episodes)
    with open(log_path, "a") as log:
        for step in bar:
            feats, _ = sources[step % len(sources)]
            ep = samplers[step % len(sources)].sample()
            loss, acc = protonet_loss(head, log_t, feats, ep, cfg.n_way)
            reg = cfg.l2sp * (head.proj.weight - w0).pow(2).sum()
            opt.zero_grad()
            (loss + reg).backward()
            opt.step()
            run_loss += float(loss)
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
