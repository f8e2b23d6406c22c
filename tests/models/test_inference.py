"""The served decision (models.inference): one rule for /classify and `fsdi evaluate`."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import CalibrationConfig
from models.inference import EmbeddingLayout, GroupIndex, make_entry
from models.methods import available_methods

CAL = CalibrationConfig(margin=1.5, k_std=3, floor=0.1, ceiling=0.9, fallback=0.5)
LAYOUT = EmbeddingLayout(4, CAL, CAL)


def unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def index(rng: np.random.Generator, dim: int = 4) -> tuple[GroupIndex, np.ndarray]:
    centres = unit(rng.normal(size=(3, dim)))
    app = unit(rng.normal(size=(3, 6)))
    entries = []
    for c in range(3):
        m = unit(centres[c] + 0.05 * rng.normal(size=(5, dim)))
        a = unit(app[c] + 0.05 * rng.normal(size=(5, 6)))
        entries.append(make_entry(10 + c, f"c{c}", "g", range(100 * c, 100 * c + 5),
                                  np.concatenate([m, a], axis=1), EmbeddingLayout(dim, CAL, CAL)))
    return GroupIndex.build("g", entries, dim), np.concatenate([centres, app], axis=1)


def test_nearest_class_wins_and_far_queries_are_unknown() -> None:
    idx, centres = index(np.random.default_rng(0))
    near = centres + 0.01
    decisions = idx.decide(near, top_k=2)
    assert [d.best.index for d in decisions] == [0, 1, 2]
    assert not any(d.unknown for d in decisions)
    assert all(len(d.top) == 2 and d.top[0].score >= d.top[1].score for d in decisions)
    far = np.concatenate([-centres[:, :4], centres[:, 4:]], axis=1)  # metric part flipped
    assert all(d.unknown and len(d.top) == 2 for d in idx.decide(far, top_k=2))


def test_appearance_rejects_and_a_threshold_override_skips_it() -> None:
    idx, centres = index(np.random.default_rng(1))
    odd = np.concatenate([centres[:, :4], -centres[:, 4:]], axis=1)  # wrong overall look
    assert all(d.unknown for d in idx.decide(odd, top_k=1))
    assert not any(d.unknown for d in idx.decide(odd, top_k=1, threshold=4.0))
    tight = idx.decide(centres + 0.01, top_k=1, threshold=1e-6)
    assert all(d.unknown and d.best.threshold == 1e-6 for d in tight)


def test_evidence_names_the_nearest_support_images() -> None:
    idx, centres = index(np.random.default_rng(2))
    d = idx.decide(centres[:1], top_k=1, evidence=True)[0]
    assert d.best.evidence is not None and len(d.best.evidence) == 3
    assert {i for i, _ in d.best.evidence} <= set(range(0, 5))
    dists = [x for _, x in d.best.evidence]
    assert dists == sorted(dists)


@pytest.mark.parametrize("method", available_methods())
def test_every_registered_method_decides_through_the_same_door(method: str) -> None:
    rng = np.random.default_rng(3)
    idx, centres = index(rng, dim=256)  # the shipped methods' metric width
    decisions = idx.decide(centres, top_k=3, method=method)
    assert len(decisions) == 3 and all(len(d.top) == 3 for d in decisions)
    assert method in idx.fitted
    for d in decisions:  # rejection is judged on the prototype distance, whatever ranks
        c = d.best
        assert np.isclose(c.distance, np.linalg.norm(
            centres[decisions.index(d), :256] - idx.prototypes[c.index]), atol=1e-4)


def test_protonet_is_fitted_once_from_the_index_prototypes() -> None:
    idx, centres = index(np.random.default_rng(4))
    first = idx.method("protonet")
    assert idx.method("protonet") is first
    assert first.protos is idx.prototypes  # type: ignore[attr-defined]


def test_protonet_ranks_by_the_appearance_part_when_told() -> None:
    """rank_by="appearance" (the served default): ProtoNet ranks by the frozen global
    pool, and the metric part still rejects."""
    idx, centres = index(np.random.default_rng(5))
    by_app = GroupIndex.build("g", idx.entries, idx.metric_dim, rank_by="appearance")
    # metric part says class 0, appearance part says class 1
    mixed = np.concatenate([centres[:1, :4], centres[1:2, 4:]], axis=1) + 0.01
    assert idx.decide(mixed, top_k=1)[0].best.index == 0
    got = by_app.decide(mixed, top_k=3)[0]
    assert idx.app_prototypes is not None and idx.app_thresholds is not None
    assert got.best.index == 1 and len(got.top) == 3
    assert got.best.distance == pytest.approx(
        float(np.linalg.norm(mixed[0, 4:] - idx.app_prototypes[1])), abs=1e-5)
    assert got.best.threshold == pytest.approx(float(idx.app_thresholds[1]))
    # the winner's metric distance is over its metric threshold: unknown, unless overridden
    assert got.unknown
    assert not by_app.decide(mixed, top_k=1, threshold=4.0)[0].unknown
    near = centres + 0.01
    assert [d.best.index for d in by_app.decide(near, top_k=1)] == [0, 1, 2]
    assert not any(d.unknown for d in by_app.decide(near, top_k=1))


@pytest.mark.parametrize("rank_by", ["appearance", "metric"])
def test_the_enrolment_report_ranks_held_out_images_as_the_service_does(rank_by: str) -> None:
    """The report's leave-one-out answers are the served decision's: each image, held
    out of its class, is decided by a group index built without it (ProtoNet, ranking by
    `rank_by`), and the report's per-class recall and accuracy match that exactly."""
    from models.report import served_report

    rng = np.random.default_rng(7)
    metric, app = 6, 10
    centres_m, centres_a = rng.normal(size=(3, metric)), rng.normal(size=(3, app))
    # the two parts disagree about which classes overlap, so the part matters
    centres_m[1] = centres_m[0] + 0.3 * rng.normal(size=metric)
    centres_a[2] = centres_a[0] + 0.3 * rng.normal(size=app)
    vectors = [np.concatenate([unit(centres_m[c] + 0.6 * rng.normal(size=(7, metric))),
                               unit(centres_a[c] + 0.6 * rng.normal(size=(7, app)))], axis=1)
               for c in range(3)]
    layout = EmbeddingLayout(metric, CalibrationConfig(), CalibrationConfig(), rank_by)

    def build(vs: list[np.ndarray]) -> GroupIndex:
        entries = [make_entry(c + 1, f"c{c}", "g", list(range(len(v))), v, layout)
                   for c, v in enumerate(vs)]
        return GroupIndex.build("g", entries, metric, rank_by=rank_by, calibrate=False)

    report = served_report(build(vectors))
    right = []
    for c, v in enumerate(vectors):
        hits = []
        for j in range(len(v)):
            without = [w if k != c else np.delete(w, j, axis=0) for k, w in enumerate(vectors)]
            (d,) = build(without).decide(v[j][None], top_k=3)
            hits.append(d.best.index == c)
        right.append(hits)
        assert report.classes[c].evaluated == len(v)
        assert report.classes[c].recall == pytest.approx(np.mean(hits)), (rank_by, c)
    assert report.accuracy == pytest.approx(np.mean(np.concatenate(right)))
    assert report.accuracy is not None and 0 < report.accuracy < 1  # confusion to get right
