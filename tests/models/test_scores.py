"""Calibrated scores: each group fits ProtoNet's temperature on its own support set
(models.calibration), so a score is the probability that the label is right."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import (
    PRIOR_SCALE,
    CalibrationConfig,
    expected_calibration_error,
    fit_temperature,
    group_temperature,
    prior_temperature,
    probes,
    reliability,
)
from models.inference import EmbeddingLayout, GroupIndex, make_entry

LOOSE = CalibrationConfig(margin=10.0, k_std=10.0, floor=5.0, ceiling=10.0, fallback=10.0)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize("true_t", [0.02, 0.2, 2.0])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with(true_t: float
                                                                          ) -> None:
    rng = np.random.default_rng(int(true_t * 100))
    d2 = rng.uniform(0.0, 4.0 * true_t, size=(3000, 4))
    p = softmax(-d2 / true_t)
    own = np.array([rng.choice(4, p=row) for row in p])
    assert fit_temperature(d2, own, fallback=1.0) == pytest.approx(true_t, rel=0.15)


def test_fit_temperature_falls_back_without_samples_or_rivals() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, np.int64), 0.05) == 0.05
    assert fit_temperature(np.ones((5, 1)), np.zeros(5, np.int64), 0.05) == 0.05


def test_probe_distances_are_those_a_new_image_would_see() -> None:
    """Held out, an image is farther from the rest than a new image is from all n; the
    correction removes that bias (5-shot classes of Gaussian draws)."""
    rng = np.random.default_rng(1)
    held, new = [], []
    for _ in range(400):
        support = rng.normal(size=(5, 16)).astype(np.float32)
        x, d2 = probes(support)
        assert x.dtype == np.float16 and len(x) == len(d2) == 5
        held.append(d2.mean())
        new.append(((rng.normal(size=16) - support.mean(axis=0)) ** 2).sum())
    assert np.mean(held) == pytest.approx(np.mean(new), rel=0.05)
    empty, none = probes(np.ones((1, 16), np.float32))
    assert empty.shape == (0, 16) and none.shape == (0,)


def test_group_temperature_caps_its_probes_and_needs_two_classes() -> None:
    rng = np.random.default_rng(2)
    protos = rng.normal(size=(3, 8)).astype(np.float32)
    cls = [probes((protos[c] + 0.3 * rng.normal(size=(40, 8))).astype(np.float32))
           for c in range(3)]
    assert len(cls[0][0]) == 16  # evenly spread, not all 40
    t, used = group_temperature(cls, protos, fallback=9.0, max_probes=10)
    assert t != 9.0 and 1e-3 <= t <= 10.0 and used == 10
    assert group_temperature(cls[:1], protos[:1], fallback=9.0) == (9.0, 0)
    # 1-shot classes hold nothing out: the prior's centre, or the fallback without a prior
    one_shot = [probes(protos[c:c + 1]) for c in range(3)]
    assert group_temperature(one_shot, protos, fallback=9.0) == (prior_temperature(protos), 0)
    assert group_temperature(one_shot, protos, fallback=9.0, prior=False) == (9.0, 0)


def test_the_prior_is_scale_free_and_set_by_how_far_apart_the_classes_lie() -> None:
    rng = np.random.default_rng(3)
    protos = 0.3 * rng.normal(size=(5, 8))  # unit-scale vectors, as served
    d2 = ((protos[:, None] - protos[None]) ** 2).sum(-1)[np.triu_indices(5, 1)]
    assert prior_temperature(protos) == pytest.approx(PRIOR_SCALE * np.median(d2))
    # parts twice as far apart: a temperature four times as large, the same scores
    base = prior_temperature(protos)
    assert base is not None and prior_temperature(2 * protos) == pytest.approx(4 * base)
    assert prior_temperature(protos[:1]) is None
    assert prior_temperature(np.ones((3, 8))) is None  # no distance to be a fraction of
    # thousands of classes: the median over an even spread of 64, not all pairs
    many = rng.normal(size=(5000, 8))
    assert prior_temperature(many) == pytest.approx(prior_temperature(many[::79][:64]),
                                                    rel=0.3)


def test_a_few_held_out_images_are_weighed_against_the_prior_and_many_outweigh_it() -> None:
    rng = np.random.default_rng(4)
    true_t, prior = 0.2, 2.0
    d2 = rng.uniform(0.0, 4.0 * true_t, size=(4000, 3))
    own = np.array([rng.choice(3, p=row) for row in softmax(-d2 / true_t)])
    few = fit_temperature(d2[:4], own[:4], fallback=1.0, prior=prior)
    alone = fit_temperature(d2[:4], own[:4], fallback=1.0)
    # with 4 samples the estimate lies between its own evidence and the prior
    assert min(alone, prior) < few < max(alone, prior)
    # with thousands the prior no longer matters
    assert fit_temperature(d2, own, fallback=1.0, prior=prior) == pytest.approx(true_t,
                                                                                 rel=0.15)
    assert fit_temperature(d2[:0], own[:0], fallback=1.0, prior=prior) == prior


def overlapping_group(rng: np.random.Generator, calibrate: bool, scale: float, spread: float
                      ) -> tuple[GroupIndex, np.ndarray]:
    """Two appearance classes whose draws overlap; ProtoNet ranks by appearance."""
    layout = EmbeddingLayout(2, LOOSE, LOOSE, rank_by="appearance")
    centres = np.eye(2, 32, dtype=np.float32) * scale
    entries = []
    for c in range(2):
        app = centres[c] + spread * rng.normal(size=(10, 32)).astype(np.float32)
        metric = np.ones((10, 2), np.float32) / np.sqrt(2)
        entries.append(make_entry(c, f"c{c}", "g", range(10 * c, 10 * c + 10),
                                  np.concatenate([metric, app], axis=1), layout))
    return GroupIndex.build("g", entries, 2, rank_by="appearance",
                            calibrate=calibrate), centres


def test_a_calibrated_group_scores_as_often_right_as_it_claims() -> None:
    """Fresh queries of an overlapping pair, about 88% separable, at two scales: the fixed
    temperature claims near-certainty at one and a coin toss at the other; the group's
    own claims about its accuracy at both."""
    for scale, spread in ((1.0, 0.6), (0.05, 0.03)):
        gaps = {}
        for calibrate in (False, True):
            conf, right = [], []
            for seed in range(30):
                rng = np.random.default_rng(seed)
                idx, centres = overlapping_group(rng, calibrate, scale, spread)
                truth = rng.integers(0, 2, 200)
                app = centres[truth] + spread * rng.normal(size=(200, 32)).astype(np.float32)
                q = np.concatenate([np.ones((200, 2), np.float32) / np.sqrt(2), app], axis=1)
                got = idx.decide(q, top_k=1)
                conf += [d.best.score for d in got]
                right += [d.best.index == t for d, t in zip(got, truth, strict=True)]
            gaps[calibrate] = expected_calibration_error(np.array(conf), np.array(right))
        assert gaps[True] < 0.05 < gaps[False], (spread, gaps)


def test_a_fixed_temperature_is_kept_when_asked() -> None:
    idx, _ = overlapping_group(np.random.default_rng(0), False, 1.0, 0.6)
    assert idx.temperature == idx.fallback_temperature == 0.05 and not idx.calibrate
    assert idx.calibrated_on == 0
    fitted, _ = overlapping_group(np.random.default_rng(0), True, 1.0, 0.6)
    assert fitted.temperature != 0.05 and fitted.fallback_temperature == 0.05
    assert fitted.calibrated_on == 20  # every image of the two 10-image classes


def test_expected_calibration_error_and_reliability() -> None:
    conf = np.array([0.9] * 10 + [0.6] * 10)
    right = np.array([1] * 9 + [0] + [1] * 6 + [0] * 4)
    assert expected_calibration_error(conf, right) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(np.full(10, 0.95), np.zeros(10)) == pytest.approx(0.95)
    assert reliability(conf, right) == [pytest.approx((0.6, 0.6, 10)),
                                        pytest.approx((0.9, 0.9, 10))]
