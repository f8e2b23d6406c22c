"""ProtoNet math, calibration and the registries."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import CalibrationConfig, class_threshold, loo_distances
from models.inference import ServingConfig
from models.methods import available_methods, create_method
from models.methods.protonet import euclidean, prototypes
from models.openset import novelty_rates, rejection_rates
from models.zoo import create_backbone


def test_prototypes_and_distances() -> None:
    sup = np.array([[1, 0], [0, 1], [3, 3]], np.float32)
    protos = prototypes(sup, np.array([0, 0, 1]), 2)
    assert np.allclose(protos, np.array([[0.5, 0.5], [3, 3]]))
    d = euclidean(np.array([[0.5, 0.5]], np.float32), protos)
    assert np.allclose(d, np.array([[0.0, np.sqrt(12.5)]]), atol=1e-3)


def test_protonet_classifies_separable_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)).astype(np.float32) * 3
    sup = np.concatenate([c + rng.normal(size=(5, 16)) for c in centres]).astype(np.float32)
    lab = np.repeat(np.arange(4), 5)
    q = np.concatenate([c + rng.normal(size=(10, 16)) for c in centres]).astype(np.float32)
    out = create_method("protonet").fit(sup, lab).predict(q)
    assert out.scores.shape == (40, 4) and np.allclose(out.scores.sum(1), 1, atol=1e-5)
    assert (out.scores.argmax(1) == np.repeat(np.arange(4), 10)).mean() > 0.95


def test_loo_distance_known_value() -> None:
    sup = np.array([[0, 0], [2, 0]], np.float32)
    assert np.allclose(loo_distances(sup), [2, 2])


def test_threshold_is_clamped_and_one_shot_falls_back() -> None:
    cfg = CalibrationConfig(margin=1.5, k_std=3, floor=0.25, ceiling=1.05, fallback=0.7)
    assert class_threshold(np.ones((1, 4), np.float32), cfg) == 0.7
    tight = np.ones((4, 4), np.float32)
    assert class_threshold(tight, cfg) == 0.25
    wide = np.eye(4, dtype=np.float32) * 10
    assert class_threshold(wide, cfg) == 1.05


def test_rejection_rates_tell_foreign_images_from_members() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16)) * 3
    labels = np.repeat(np.arange(6), 20)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    members = unit(centres[labels] + rng.normal(size=(120, 16)) * 0.3)
    far = unit(-np.abs(rng.normal(size=(40, 16))) - 3)  # another region of the sphere
    cfg = CalibrationConfig(margin=1.5, k_std=3, floor=0.05, ceiling=1.0, fallback=0.5)
    served = ServingConfig(metric_calib=cfg, app_calib=cfg, rank_by="metric")
    r = rejection_rates(members, members, labels, (far, far), served, k_shot=5, n_way=4,
                        episodes=30, seed=1)
    assert r["accepted_correct"] > 0.9 and r["falsely_rejected"] < 0.1
    assert r["foreign_rejected"] > 0.9
    # "Foreign" images drawn from the enrolled classes themselves are not rejected.
    same = rejection_rates(members, members, labels, (members, members), served, k_shot=5,
                           n_way=6, episodes=30, seed=1)
    assert same["foreign_rejected"] < 0.2


def test_novelty_rates_catch_far_unseen_classes_only() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(2), 4 * 20)  # two parts, four classes each: "ok" = 0
    labels = np.tile(np.repeat(np.arange(4), 20), 2)
    cfg = CalibrationConfig(margin=1.5, k_std=3, floor=0.05, ceiling=1.0, fallback=0.5)
    served = ServingConfig(metric_calib=cfg, app_calib=cfg, rank_by="metric")

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    # Every class its own direction: the one defect type left out (of 1..3) is far from
    # "ok" and the two enrolled ones, and comes back unknown.
    far = unit(rng.normal(size=(2, 4, 16))[groups, labels] + rng.normal(size=(160, 16)) * 0.05)
    r = novelty_rates(far, far, labels, groups, served, k_shot=5, known_defects=2,
                      episodes=40, seed=2)
    assert r["accepted_correct"] > 0.9 and r["falsely_rejected"] < 0.1
    assert r["novel_rejected"] > 0.9
    # Defects that look like "ok": nothing tells the unseen one apart.
    same = unit(rng.normal(size=(2, 1, 16))[groups, 0] + rng.normal(size=(160, 16)) * 0.05)
    r = novelty_rates(same, same, labels, groups, served, k_shot=5, known_defects=2,
                      episodes=40, seed=2)
    assert r["novel_rejected"] < 0.2


def test_registries_fail_loudly() -> None:
    assert "protonet" in available_methods()
    with pytest.raises(KeyError, match="protonet"):
        create_method("no-such")
    with pytest.raises(KeyError, match="efficientnet_lite0"):
        create_backbone("resnet9000")


def test_group_report_finds_the_confusable_pair() -> None:
    from models.report import group_report

    rng = np.random.default_rng(0)
    a = np.array([1, 0, 0], np.float32) + 0.05 * rng.normal(size=(4, 3))
    b = np.array([0, 1, 0], np.float32) + 0.05 * rng.normal(size=(4, 3))
    c = np.array([0, 1, 0.05], np.float32) + 0.05 * rng.normal(size=(4, 3))  # ~ b
    r = group_report(np.concatenate([a, b, c]).astype(np.float32), np.repeat([0, 1, 2], 4))
    assert r.evaluated == 12 and r.classes[0].recall == 1.0
    assert r.closest_pair is not None and r.closest_pair[:2] == (1, 2)
    assert r.accuracy is not None and r.accuracy < 1.0
    assert r.confusable is not None and set(r.confusable[:2]) == {1, 2}
    assert r.classes[1].warning or r.classes[2].warning
    one = group_report(np.eye(3, dtype=np.float32), np.array([0, 1, 2]))  # all 1-shot
    assert one.evaluated == 0 and one.accuracy is None
