"""Episodic data, a small real meta-training run, and evaluation on toy sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.data import synthetic
from models.data.episodes import EpisodeSampler
from models.data.sources import FMNIST_EVAL, FMNIST_TRAIN, fashion_mnist
from models.evaluate import episode_accuracy, evaluate, head_embed, write_reports
from models.reporting import mean_ci


def test_class_splits_are_disjoint() -> None:
    assert not set(synthetic.TRAIN_TYPES) & set(synthetic.EVAL_TYPES)
    assert not set(FMNIST_TRAIN) & set(FMNIST_EVAL)
    assert len(synthetic.EVAL_TYPES) >= 5 and len(FMNIST_EVAL) >= 5


def test_sampler_draws_disjoint_support_and_query() -> None:
    labels = np.repeat(np.arange(7), 20)
    s = EpisodeSampler(labels, n_way=5, k_shot=3, q_query=4, seed=1)
    for _ in range(50):
        ep = s.sample()
        assert not set(ep.support) & set(ep.query)
        assert len(set(labels[ep.support])) == 5
        for c in range(5):  # episode labels map consistently to one source class
            assert len(set(labels[ep.support[ep.support_labels == c]])) == 1
            src = labels[ep.support[ep.support_labels == c]][0]
            assert (labels[ep.query[ep.query_labels == c]] == src).all()
    with pytest.raises(ValueError):
        EpisodeSampler(labels, n_way=8, k_shot=1, q_query=1, seed=0)


def test_generator_is_seeded_and_varied() -> None:
    a, la, names = synthetic.make_set(("scratch", "hole"), 3, seed=5)
    b, _, _ = synthetic.make_set(("scratch", "hole"), 3, seed=5)
    assert a.shape == (6, 224, 224) and a.dtype == np.uint8 and names == ["scratch", "hole"]
    assert np.array_equal(a, b) and list(la) == [0, 0, 0, 1, 1, 1]
    assert not np.array_equal(a[0], a[1])
    for kind in synthetic.TRAIN_TYPES + synthetic.EVAL_TYPES:
        synthetic.render(kind, np.random.default_rng(0))


def test_fashion_mnist_from_debian_package() -> None:
    x, y, names = fashion_mnist(FMNIST_EVAL, 4, seed=0)
    assert x.shape == (20, 28, 28) and sorted(set(y)) == [0, 1, 2, 3, 4]
    assert names[0] == "sandal"


def test_evaluation_gives_known_accuracy_on_toy_sets() -> None:
    labels = np.repeat(np.arange(5), 20)
    separable = np.eye(5, dtype=np.float32)[labels]
    s = EpisodeSampler(labels, 5, 2, 5, seed=0)
    assert episode_accuracy(separable, s, 30).mean() == 1.0
    same = np.ones((100, 4), np.float32)  # every prototype ties: argmin picks class 0
    tie = episode_accuracy(same, EpisodeSampler(labels, 5, 2, 5, seed=0), 30)
    assert tie.mean() == pytest.approx(0.2)
    m, ci = mean_ci(np.array([0.5, 0.7, 0.6, 0.6]))
    assert m == pytest.approx(0.6) and ci == pytest.approx(1.96 * 0.08165 / 2, rel=1e-3)
    assert mean_ci([0.75]) == (0.75, 0.0)  # one episode: no spread to give a CI


@pytest.mark.slow
def test_small_real_meta_training_lowers_loss_and_resumes(tmp_path: Path) -> None:
    from models.train import TrainConfig, train

    cfg = TrainConfig(episodes=120, k_shot=2, q_query=3, synth_per_class=10,
                      fmnist_per_class=10, checkpoint_every=60, lr=3e-3)
    out = tmp_path / "head.safetensors"
    train(TrainConfig(**{**cfg.__dict__, "episodes": 60}), out, tmp_path / "cache",
          log_every=10)
    train(cfg, out, tmp_path / "cache", log_every=10)  # resumes at episode 60
    log = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in log] == list(range(10, 121, 10))
    first = np.mean([r["loss"] for r in log[:3]])
    last = np.mean([r["loss"] for r in log[-3:]])
    assert last < first, (first, last)
    embed = head_embed(out)
    z = embed(np.random.default_rng(0).normal(size=(4, 2784)).astype(np.float32))
    assert z.shape == (4, 256) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    rows = evaluate({"toy": {"head": z.repeat(5, 0)}}, {"toy": np.repeat(np.arange(4), 5)},
                    (1,), 5, 2, 2, 0)
    write_reports(rows, tmp_path / "eval")
    assert (tmp_path / "eval" / "evaluation.png").stat().st_size > 1000
    assert "| toy | head |" in (tmp_path / "eval" / "evaluation.md").read_text()


def test_image_folder_source(tmp_path: Path) -> None:
    from PIL import Image

    from models.data.sources import image_folder

    for cls, shade in (("dent", 40), ("scratch", 200)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (50, 30), (shade + i, 0, 0)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "scratch" / "notes.txt").write_text("not an image")
    x, y, names = image_folder(tmp_path, size=32)
    assert names == ["dent", "scratch"] and x.shape == (6, 32, 32) and list(y) == [0] * 3 + [1] * 3
    s = EpisodeSampler(y, 2, 1, 2, seed=0)
    ep = s.sample()
    assert len(ep.support) == 2 and len(ep.query) == 4


def test_grouped_episodes_stay_inside_one_group() -> None:
    labels = np.tile(np.repeat(np.arange(4), 6), 3)  # 4 types on each of 3 surfaces
    groups = np.repeat(np.arange(3), 24)
    s = EpisodeSampler(labels, n_way=3, k_shot=2, q_query=2, seed=0, groups=groups)
    seen = set()
    for _ in range(40):
        ep = s.sample()
        g = set(groups[np.concatenate([ep.support, ep.query])])
        assert len(g) == 1
        seen |= g
        assert len(set(labels[ep.support])) == 3
    assert seen == {0, 1, 2}
    with pytest.raises(ValueError, match="every group"):
        EpisodeSampler(labels, n_way=5, k_shot=1, q_query=1, seed=0, groups=groups)


def test_binary_and_surface_sets() -> None:
    x, y, g = synthetic.make_binary_set(("crack", "hole"), 2, seed=0)
    assert x.shape[0] == 2 * 2 * len(synthetic.SURFACES) and set(y) == {0, 1}
    assert len(set(g)) == len(synthetic.SURFACES)
    sx, sy, sg = synthetic.make_surface_set(("ok", "scratch"), 1, seed=0)
    assert sx.shape[0] == 2 * len(synthetic.SURFACES) and list(sy[:2]) == [0, 1]
