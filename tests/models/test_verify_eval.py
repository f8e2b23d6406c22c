"""`fsdi evaluate verify`'s episode, through the served network and builder: in a set
with good parts the served group score carries the verdict, and the classes-only score
(the baseline) is reported beside it on the same pairs; without them, defect classes on
one surface are ranked by where their images differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.data.episodes import EpisodeSampler
from models.inference import ServingConfig
from models.patchcore.evaluate import served_features
from models.verify import PairModel, load_global
from models.verify_eval import EVAL_SETS, _missing, _sets, _verify_episode


def test_an_episode_with_good_parts_is_judged_with_the_verdict(model_cache: Path) -> None:
    name, n_way, x, y, g, good = _sets(EVAL_SETS[:1], per_class=8, seed=0)[0]
    assert name.startswith("synthetic held-out") and good == 0
    f = served_features(x, cache_dir=model_cache, threads=2)
    sampler = EpisodeSampler(y, n_way, 4, 3, seed=1, groups=g)
    for _ in range(10):  # an episode whose classes include the good parts
        ep = sampler.sample()
        kinds = ["good" if y[ep.support[ep.support_labels == c][0]] == good else "defect"
                 for c in range(n_way)]
        if "good" in kinds:
            break
    probs, same, own = _verify_episode(ep, f, n_way, PairModel(), load_global(),
                                       ServingConfig(), kinds)
    assert list(probs) == ["group", "group, no good parts", "group, classes only", "global",
                           "none"]
    assert own is not None and own.source == "group" and own.verdict is not None
    n = len(ep.query)
    assert same.shape == (n * (n - 1) // 2,) and same.any() and (~same).any()
    for p in probs.values():
        assert p.shape == same.shape and np.all((p >= 0) & (p <= 1))
    assert not np.allclose(probs["group"], probs["group, classes only"])
    # without good parts (every class enrolled as a defect class) no verdict; these
    # classes share one surface, so the group's held-out images chose to rank them on
    # where each image differs from the others, not on the whole frame (classes only)
    plain, _, own2 = _verify_episode(ep, f, n_way, PairModel(), load_global(),
                                     ServingConfig(), ["defect"] * n_way)
    assert "group, classes only" not in plain and own2 is not None and own2.verdict is None
    assert own2.surface is not None
    assert not np.allclose(plain["group"], probs["group, classes only"])
    assert np.allclose(plain["group"], probs["group, no good parts"])


def test_the_report_names_the_sets_it_could_not_measure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine without Fashion-MNIST or ELPV gets a report that says which sets are
    missing and how to install them, not one that is silently shorter."""
    from models.data import elpv, sources

    monkeypatch.setattr(sources, "FMNIST_DIR", tmp_path)
    monkeypatch.setattr(elpv, "available", lambda: False)
    missing = _missing(EVAL_SETS)
    assert len(missing) == 2
    assert "Fashion-MNIST" in missing[0] and "apt-get install dataset-fashion-mnist" in missing[0]
    assert "ELPV" in missing[1] and "pip install elpv-dataset" in missing[1]
    monkeypatch.setattr(elpv, "available", lambda: True)
    assert [m.split(" (")[0] for m in _missing(EVAL_SETS)] == [EVAL_SETS[1][0]]
