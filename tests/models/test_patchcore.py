"""The good-parts detector's pieces (models/patchcore): coreset, patch memory, threshold,
anomaly map, the feature extractor on the real trunk, and the evaluation's AUROC."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from models.patchcore import KCenterGreedy, PatchMemory, calibrate_threshold
from models.patchcore.evaluate import auroc
from models.patchcore.feature_extractor import PatchFeatureExtractor
from models.serving import serving_net


def unit(a: np.ndarray, axis: int) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=axis, keepdims=True)).astype(np.float32)


PATTERNS = unit(np.random.default_rng(99).normal(size=(4, 16)), 1)


def goods(rng: np.random.Generator, n: int = 6, c: int = 16, h: int = 6) -> np.ndarray:
    """n 'good' images whose patches come from one small set of patterns, jittered."""
    patterns = PATTERNS
    pick = rng.integers(0, 4, (n, h, h))
    return unit(patterns[pick] + 0.02 * rng.normal(size=(n, h, h, c)), 3)


def test_kcenter_greedy_covers_the_spread_better_than_chance() -> None:
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(loc, 0.05, (200, 2)) for loc in (0, 3, 6)] +
                           [rng.normal(20, 0.05, (2, 2))])  # a rare far pattern
    picked = KCenterGreedy(ratio=0.02, seed=1).select(blobs.astype(np.float32))
    assert len(picked) == round(0.02 * len(blobs)) and len(set(picked)) == len(picked)
    assert (np.linalg.norm(blobs[picked] - 20, axis=1) < 1).any(), "the rare pattern is kept"

    def cover(idx: np.ndarray) -> float:
        d = np.linalg.norm(blobs[:, None] - blobs[idx][None], axis=2)
        return float(d.min(axis=1).max())
    assert cover(picked) < cover(rng.choice(len(blobs), len(picked), replace=False))


def test_a_defect_patch_stands_out_where_it_is() -> None:
    rng = np.random.default_rng(1)
    good = goods(rng)
    mem = PatchMemory(good)
    same = mem.distances(good[:1])
    assert same.max() < 1e-5
    query = goods(rng, n=1)
    query[0, 2, 3] = unit(rng.normal(size=16), 0)  # a patch like nothing good
    dist = mem.distances(query)
    assert np.unravel_index(dist[0].argmax(), dist[0].shape) == (2, 3)
    assert mem.image_scores(dist)[0] > 5 * mem.image_scores(mem.distances(goods(rng, 1)))[0]


def test_leave_one_out_leaves_the_image_out() -> None:
    rng = np.random.default_rng(2)
    good = goods(rng)
    good[0, 0, 0] = unit(rng.normal(size=16), 0)  # one good image with a rare patch
    mem = PatchMemory(good)
    assert mem.image_scores(mem.distances(good[:1]))[0] < 1e-5  # against itself: zero
    loo = mem.leave_one_out(good)
    assert loo.shape == (6,) and loo[0] == loo.max() > 10 * np.median(loo[1:])
    assert len(PatchMemory(good[:1]).leave_one_out(good[:1])) == 0


def test_threshold_is_the_upper_quantile_and_honest_about_small_counts() -> None:
    loo = np.arange(1, 101, dtype=np.float32) / 100
    thr, warning = calibrate_threshold(loo, 0.02)
    assert thr == pytest.approx(0.99) and warning is None
    assert (loo > thr).mean() <= 0.02
    thr5, warning5 = calibrate_threshold(loo[:5], 0.02)
    assert thr5 == pytest.approx(0.05) and warning5 and "5 good images" in warning5
    assert calibrate_threshold(np.zeros(0), 0.02)[0] == 2.0  # no score exceeds it


def test_heatmap_keeps_the_peak_where_it_was() -> None:
    import io

    from PIL import Image

    from models.patchcore.anomaly_map import heatmap_png

    grid = np.zeros((14, 14), np.float32)
    grid[3, 10] = 1.0
    heat = np.asarray(Image.open(io.BytesIO(heatmap_png(grid, 1.0, 160, 224))))
    assert heat.shape == (224, 160)
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    assert abs(y / 224 - 3.5 / 14) < 0.05 and abs(x / 160 - 10.5 / 14) < 0.05


def test_feature_extractor_names_its_layers_on_the_real_trunk() -> None:
    from models.effnet import lite0_trunk

    trunk, _ = lite0_trunk()
    feats = PatchFeatureExtractor(trunk.eval(), layers=(5, 10))(torch.zeros(2, 3, 224, 224))
    assert feats.shape == (2, 14, 14, 80 + 112)
    assert torch.allclose(feats.norm(dim=3), torch.ones(2, 14, 14), atol=1e-4)


def test_served_network_returns_the_same_patches_as_the_trunk() -> None:
    """The patch output of the served graph (taken by hooks from the embedding's own
    forward pass) equals the trunk run alone, in torch and in the exported ONNX file."""
    import tempfile
    from pathlib import Path

    from models.embedder import OrtEmbedder, TorchEmbedder, unpack
    from models.preprocess import normalise
    from models.zoo import create_backbone

    bb = create_backbone("fsdi_lite0_meta")
    assert bb.patch_shape == (14, 14, 192) and "patches-b5+10" in bb.patch_version
    x = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 1), dtype=np.uint8)
    from models.patchcore.feature_extractor import find_trunk

    trunk = find_trunk(bb.net)
    ref = PatchFeatureExtractor(trunk, (5, 10))(
        torch.from_numpy(normalise(np.repeat(x, 3, axis=3), bb.preprocess))).numpy()
    emb, patches = unpack(TorchEmbedder(bb).embed_packed(x), bb)
    np.testing.assert_allclose(patches, ref, atol=1e-4)
    np.testing.assert_allclose(emb, TorchEmbedder(bb).embed(x), atol=1e-6)
    with tempfile.TemporaryDirectory() as d:
        ort = OrtEmbedder(bb, Path(d), threads=1)
        e2, p2 = unpack(ort.embed_packed(x), bb)
        np.testing.assert_allclose(p2, ref, atol=1e-3)
        np.testing.assert_allclose(e2, ort.embed(x), atol=1e-6)
        # an export cached before the patch output existed is rebuilt, not served
        torch.onnx.export(serving_net(bb), (torch.zeros(1, 224, 224, 1, dtype=torch.uint8),),
                          str(ort.path), input_names=["images"], output_names=["embeddings"],
                          dynamic_axes={"images": {0: "n"}, "embeddings": {0: "n"}},
                          opset_version=17, dynamo=False)
        again = OrtEmbedder(bb, Path(d), threads=1)
        np.testing.assert_allclose(unpack(again.embed_packed(x), bb)[1], ref, atol=1e-3)


def test_auroc_matches_counting_pairs() -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=40), 1)  # ties included
    labels = rng.integers(0, 2, 40)
    pairs = [(p, n) for p, n in itertools.product(scores[labels == 1], scores[labels == 0])]
    want = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert auroc(scores, labels) == pytest.approx(want)


def test_elpv_loader_opens_mono_cells_only() -> None:
    from models.data import elpv

    if not elpv.available():
        pytest.skip("elpv-dataset is not installed (optional, evaluation only)")
    images, labels = elpv.load_mono()
    assert images.shape == (901, 300, 300) and int(labels.sum()) == 313


def test_evaluation_scores_detectors_on_the_same_episodes() -> None:
    """Defective images carry a few patches unlike any good one: the served detector ranks
    them (AUROC 1), its own threshold keeps false alarms low, and its heatmaps find the
    odd patch; the global pool, which averages the odd patches away, does worse on the
    same episodes."""
    from models.patchcore.evaluate import Features, evaluate, global_detector, served_detector

    rng = np.random.default_rng(5)
    n_good, n_bad = 60, 30
    patches = goods(rng, n_good + n_bad)
    masks = np.zeros((n_good + n_bad, 224, 224), bool)
    for i in range(n_good, n_good + n_bad):
        y, x = rng.integers(0, 6, 2)
        patches[i, y, x] = unit(rng.normal(size=16), 0)
        masks[i, y * 224 // 6:(y + 1) * 224 // 6, x * 224 // 6:(x + 1) * 224 // 6] = True
    pool = unit(patches.mean(axis=(1, 2)), 1)
    f = Features(pool, patches, pool, pool.shape[1])
    labels = np.array([0] * n_good + [1] * n_bad)
    rows = evaluate(labels, {"served": served_detector(f, 0.05),
                             "global": global_detector(f, 0.05)},
                    (20,), n_query=10, count=5, seed=1, masks=masks)
    by = {r["detector"]: r for r in rows}
    assert by["served"]["auroc"] == 1.0 and by["served"]["false_alarm_rate"] <= 0.2
    assert by["served"]["balanced_accuracy"] > 0.8
    assert by["served"]["flagged_at_5pct_false_alarms"] == 1.0
    assert by["served"]["pixel_auroc"] > 0.9 and "pixel_auroc" not in by["global"]
    assert by["global"]["auroc"] < by["served"]["auroc"]
    # with 10 good images a 5% rate is out of reach: enrolled defect images place the
    # threshold, and the verdicts get no worse on the same episodes
    rows = evaluate(labels, {"served": served_detector(f, 0.05),
                             "with defects": served_detector(f, 0.05, with_defects=True)},
                    (10,), n_query=10, count=5, seed=1)
    by = {r["detector"]: r for r in rows}
    assert by["with defects"]["auroc"] == by["served"]["auroc"] == 1.0
    assert by["with defects"]["balanced_accuracy"] >= by["served"]["balanced_accuracy"]
    assert by["with defects"]["balanced_accuracy"] > 0.95


def test_evaluation_episodes_keep_defect_examples_apart() -> None:
    from models.patchcore.evaluate import episodes

    labels = np.array([0] * 40 + [1] * 25)
    eps = episodes(labels, 5, 10, 8, seed=3)
    for good, query, defects, spare in eps:
        assert (labels[good] == 0).all() and (labels[defects] == 1).all()
        assert len(defects) == 5 and not set(defects) & set(query)
        assert not set(good) & set(query) and len(spare) == 0
    # the good images and queries do not depend on how many defect images are drawn,
    # nor on how many spare good images are
    fewer = episodes(labels, 5, 10, 8, seed=3, n_defect=2)
    spared = episodes(labels, 5, 10, 8, seed=3, n_spare=10)
    for a, b, c in zip(eps, fewer, spared, strict=True):
        assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
        assert all((x == y).all() for x, y in zip(a[:3], c[:3], strict=True))
        assert len(c[3]) == 10 and (labels[c[3]] == 0).all()
        assert not set(c[3]) & (set(c[0]) | set(c[1]))


def test_flagged_at_five_percent_allows_one_false_alarm_in_twenty() -> None:
    """With 15 good queries "at most 5% false alarms" would allow none; the evaluation
    adds spare good images so that one of 20 may be flagged, as the column says."""
    from models.patchcore.evaluate import Outcome, evaluate, tpr_at_fpr

    labels = np.array([0] * 40 + [1] * 20)
    seen: list[int] = []

    def det(good: np.ndarray, query: np.ndarray, defects: np.ndarray, maps: bool
            ) -> Outcome:
        seen.append(int((labels[query] == 0).sum()))
        # one good image (the lowest index asked) scores above every defect
        s = np.where(labels[query] == 1, 1.0, 0.0)
        s[np.argmin(np.where(labels[query] == 0, query, 10**6))] = 2.0
        return Outcome(s, s > 0.5)

    rows = evaluate(labels, {"d": det}, (5,), n_query=15, count=3, seed=2)
    assert seen == [20, 20, 20]  # 15 queries + 5 spare good images
    assert rows[0]["flagged_at_5pct_false_alarms"] == 1.0  # the one outlier is allowed
    # the other columns still read the 15 + 15 queries only
    assert rows[0]["false_alarm_rate"] < 0.07  # at most the one outlier of 15
    s = np.r_[np.zeros(14), 2.0, np.ones(15)]
    assert tpr_at_fpr(s, np.r_[np.zeros(15), np.ones(15)]) == 0.0  # 15 good: none allowed


def test_heatmap_png_keeps_aspect_and_absolute_levels() -> None:
    import io

    from PIL import Image

    from models.patchcore.anomaly_map import heatmap_png

    grid = np.full((14, 14), 0.1, np.float32)
    grid[3, 10] = 0.8
    img = Image.open(io.BytesIO(heatmap_png(grid, 0.4, 640, 480)))
    a = np.asarray(img)
    assert img.mode == "L" and img.size == (299, 224)
    y, x = np.unravel_index(a.argmax(), a.shape)
    assert abs(y / 224 - 3.5 / 14) < 0.06 and abs(x / 299 - 10.5 / 14) < 0.06
    # above the threshold's mid-grey at the peak, 0.1 / (2 * 0.4) of white elsewhere: the
    # levels are absolute, never stretched per image
    assert a.max() > 128 and np.median(a) == 32
    tiny = Image.open(io.BytesIO(heatmap_png(grid, 0.4, 20, 10)))
    assert min(tiny.size) == 28 and tiny.size == (56, 28)


def test_held_out_calibration_spreads_over_the_enrolment() -> None:
    rng = np.random.default_rng(4)
    good = goods(rng, n=10)
    mem = PatchMemory(good)
    assert len(mem.leave_one_out(good, max_held_out=4)) == 4
    assert len(mem.leave_one_out(good)) == 10


def test_real_image_report_runs_the_served_decisions(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """`fsdi evaluate real` on a stand-in for the ELPV set (synthetic good vs defective
    parts, so the test needs no optional data): every row on the same episodes, and the
    good-class route catches defects a global embedding averages away."""
    import json

    from models import evaluate as ev
    from models.data import elpv
    from models.data.synthetic import EVAL_TYPES, make_binary_set

    images, labels, _ = make_binary_set(EVAL_TYPES, 24, seed=3)
    keep = np.arange(len(images)) < 48  # one surface: one product
    monkeypatch.setattr(elpv, "available", lambda: True)
    monkeypatch.setattr(elpv, "load_mono", lambda: (images[keep], labels[keep]))
    table = ev.real_report(tmp_path, shots=(1, 5), episodes=8, q_query=5,
                           cache_dir=tmp_path / "onnx")
    rows = json.loads((tmp_path / "real.json").read_text())
    assert len(rows) == 2 * 5 and (tmp_path / "real.png").is_file() and "5-shot" in table
    by = {(r["shots"], r["embedding"]): r for r in rows}
    # ranked by the appearance part, the served default is the frozen baseline exactly
    for k in (1, 5):
        default = next(r for r in rows if r["shots"] == k and "default" in r["embedding"])
        frozen = next(r for r in rows if r["shots"] == k and "baseline" in r["embedding"])
        assert default["accuracy"] == frozen["accuracy"] and "appearance" in default["embedding"]
    good = next(r for r in rows if r["shots"] == 5 and "rule auto" in r["embedding"])
    alone = next(r for r in rows if r["shots"] == 5 and "rule false_alarm" in r["embedding"])
    one = next(r for r in rows if r["shots"] == 1 and "rule false_alarm" in r["embedding"])
    assert one["accuracy"] == 0.5  # one good image calibrates nothing: nothing flagged
    one_auto = next(r for r in rows if r["shots"] == 1 and "rule auto" in r["embedding"])
    assert one_auto["accuracy"] > 0.5  # ... unless a defect image balances it
    assert good["accuracy"] > 0.8 and len(by) == 10
    assert good["accuracy"] >= alone["accuracy"] - 0.05


def test_defect_images_place_the_threshold_only_while_the_rate_is_out_of_reach() -> None:
    from models.inference import GoodParts

    rng = np.random.default_rng(5)
    good = goods(rng, n=6)
    bad = goods(rng, n=3)
    bad[:, 1, 1] = unit(rng.normal(size=(3, 16)), 1)  # one patch like nothing good
    fa = GoodParts.build(good, range(6), 0.02)
    assert fa.rule == "false_alarm_rate" and fa.defect_examples == 0
    both = GoodParts.build(good, range(6), 0.02, bad)
    loo = fa.memory.leave_one_out(good)
    scores = fa.memory.image_scores(fa.memory.distances(bad))
    assert both.rule == "balanced"
    assert both.threshold == pytest.approx((loo.mean() + scores.mean()) / 2)
    assert both.defect_examples == 3 and both.defect_flagged == int((scores > both.threshold).sum())
    assert both.warning and "midway" in both.warning
    # the verdict's probability: a discriminant of the same two sets of scores, one half
    # at the threshold, rising with the score; none where the rate rules
    assert both.slope is not None and both.slope > 0
    assert both.defect_probability(both.threshold) == pytest.approx(0.5)
    got = [both.defect_probability(float(x)) for x in (0.0, both.threshold, 1.0, 2.0)]
    p = [x for x in got if x is not None]
    assert len(p) == 4 and p[0] < 0.5 < p[2] <= p[3] and p[3] > 0.9
    # 6 + 3 scores pin the slope down only so far: the logit is moderated by its sampling
    # variance, so even a far-off score claims no near-certainty
    assert both.slope_uncertainty is not None and both.slope_uncertainty > 2 / 7
    cap = 1 / (1 + np.exp(-np.sqrt(8 / (np.pi * both.slope_uncertainty))))
    assert p[3] < cap < 0.99 and both.defect_probability(100.0) == pytest.approx(cap, abs=1e-3)
    assert fa.slope is None and fa.defect_probability(1.0) is None

    # a rate six good images can resolve, or the rule switched off: the rate decides
    for kept in (GoodParts.build(good, range(6), 0.3, bad),
                 GoodParts.build(good, range(6), 0.02, bad, rule="false_alarm_rate")):
        assert kept.rule == "false_alarm_rate" and kept.defect_examples == 3
        assert kept.threshold == calibrate_threshold(loo, kept.false_alarm_rate)[0]
    # defect images that score like good parts cannot place it: the rate stays, with a word
    alike = GoodParts.build(good, range(6), 0.02, goods(rng, n=2))
    assert alike.rule == "false_alarm_rate" and "no higher than good" in str(alike.warning)
    with pytest.raises(ValueError):
        GoodParts.build(good, range(6), 0.02, bad, rule="median")
    # the same good images again (a defect or rate change): memory and leave-one-out
    # reused, the same answer as a fresh build; other good images: a fresh build
    again = GoodParts.build(good, range(6), 0.02, bad[:2], previous=both)
    fresh = GoodParts.build(good, range(6), 0.02, bad[:2])
    assert again.memory is both.memory and again.threshold == pytest.approx(fresh.threshold)
    assert again.defect_examples == 2
    other = GoodParts.build(good[:5], range(5), 0.02, bad, previous=both)
    assert other.memory is not both.memory and other.held_out == 5
    # one good image: its regions left out in turn stand in for leave-one-out
    one = GoodParts.build(good[:1], [0], 0.02, bad)
    own = one.memory.leave_region_out(good[0])
    one_bad = one.memory.image_scores(one.memory.distances(bad))
    assert one.rule == "balanced" and one.held_out == 0
    assert one.threshold == pytest.approx((own + one_bad.mean()) / 2)
    assert "regions left out" in str(one.warning)
    assert GoodParts.build(good[:1], [0], 0.02).threshold == 2.0  # alone: nothing flagged
    # its probability: the three defect images' scores give the spread beside it ...
    from models.inference import discriminant

    with_defects = discriminant(np.array([own]), one_bad)
    assert with_defects is not None and one.slope == pytest.approx(with_defects[0])
    # ... while one good and one defect image have none between them: the good image's
    # 2 x 2 blocks, each against the rest of it, give it; never a sure answer from two images
    pair = GoodParts.build(good[:1], [0], 0.02, bad[:1])
    blocks = pair.memory.region_scores(good[0])
    assert pair.own_parts is not None and np.allclose(pair.own_parts, blocks)
    assert len(blocks) == 4 and pair.rule == "balanced"
    from_blocks = discriminant(blocks, one_bad[:1])
    assert from_blocks is not None and pair.slope == pytest.approx(from_blocks[0])
    assert pair.defect_probability(pair.threshold) == pytest.approx(0.5)
    near, far = (pair.defect_probability(pair.threshold + x) for x in (0.1, 100.0))
    assert near is not None and far is not None and 0.5 < near < far < 0.95
    again = GoodParts.build(good[:1], [0], 0.02, bad[1:2], previous=pair)
    assert again.own_parts is pair.own_parts  # the same good image: nothing re-read


def test_the_verdict_probability_is_moderated_less_as_scores_accumulate() -> None:
    from models.inference import discriminant

    rng = np.random.default_rng(8)
    assert discriminant(np.zeros(1), np.ones(1)) is None  # no degree of freedom
    assert discriminant(rng.normal(1, 0.1, 5), rng.normal(0, 0.1, 5)) is None  # no gap
    few = discriminant(rng.normal(0, 0.1, 5), rng.normal(0.4, 0.1, 5))
    many = discriminant(rng.normal(0, 0.1, 500), rng.normal(0.4, 0.1, 500))
    assert few is not None and many is not None
    assert many[0] == pytest.approx(0.4 / 0.01, rel=0.15)  # gap / variance
    assert many[1] < 0.01 < few[1]  # 2 / dof and the gap's share, both shrinking


def test_leave_region_out_scores_a_part_against_its_own_other_regions() -> None:
    rng = np.random.default_rng(6)
    part = goods(rng, n=1, h=8)[0]  # four patterns repeated across the part
    mem = PatchMemory(part[None], dims=None)
    calm = mem.leave_region_out(part)
    assert calm < 0.01  # every patch has a like one elsewhere
    odd = part.copy()
    odd[4, 4] = unit(rng.normal(size=16), 0)  # a region like no other
    assert mem.leave_region_out(odd) > 10 * max(calm, 1e-4)
    # only patches beyond the 3 x 3 neighbourhood count: a pattern repeated next to itself
    # alone is not enough
    pair = part.copy()
    pair[4, 4] = pair[4, 5] = unit(rng.normal(size=16), 0)
    assert mem.leave_region_out(pair, radius=0) < 0.01 < mem.leave_region_out(pair, radius=1)
    # block by block: the odd region lifts only its own block (rows and columns 4-7)
    blocks = mem.region_scores(odd)
    assert blocks.shape == (4,) and blocks[3] == pytest.approx(mem.leave_region_out(odd))
    assert blocks[:3].max() < 0.01
    assert mem.region_scores(odd, parts=1)[0] == pytest.approx(mem.leave_region_out(odd))


def test_regions_describe_where_a_part_differs_from_the_good_ones() -> None:
    rng = np.random.default_rng(7)
    good = goods(rng, n=6)
    mem = PatchMemory(good, dims=None)
    odd = unit(rng.normal(size=16), 0)
    part = goods(rng, n=1)
    part[0, 2, 3] = odd
    region = mem.regions(part)
    assert region.shape == (1, 16)
    assert np.linalg.norm(region[0]) == pytest.approx(1.0, abs=1e-5)
    assert region[0] @ odd > 0.99  # the odd patch, not the rest of the part
    # the maps already computed give the same answer
    assert np.allclose(mem.regions(part, mem.distances(part)), region)


def test_region_fusion_tells_defects_apart_that_the_global_look_cannot() -> None:
    """Two defect classes on one product: every image has the same global look (the
    appearance part), and the defects differ only where the part differs from its good
    images. Ranked on the stored vectors the classes are a coin toss; region-fused, as
    served, each defect finds its class."""
    from models.calibration import CalibrationConfig
    from models.inference import (
        EmbeddingLayout,
        GoodParts,
        GroupIndex,
        ServedGroup,
        fuse_region,
        make_entry,
        region_descriptors,
        region_entries,
    )

    rng = np.random.default_rng(8)
    kinds = unit(rng.normal(size=(2, 16)), 1)  # two defect looks, unlike any good patch

    def defective(kind: int, n: int) -> np.ndarray:
        p = goods(rng, n=n)
        for i in range(n):
            y, x = rng.integers(0, 6, 2)
            p[i, y, x] = unit(kinds[kind] + 0.05 * rng.normal(size=16), 0)
        return p

    layout = EmbeddingLayout(4, CalibrationConfig(), CalibrationConfig(), "appearance")
    look = unit(np.ones((1, 8)), 1)  # the appearance part, the same for every image

    def vectors(n: int) -> np.ndarray:
        metric = unit(rng.normal(size=(n, 4)), 1)
        return np.concatenate([metric, np.repeat(look, n, axis=0)], axis=1).astype(np.float32)

    good_p = goods(rng, n=8)
    sup_p = {0: defective(0, 3), 1: defective(1, 3)}
    sup_v = {c: vectors(3) for c in (0, 1)}
    ids = {0: [10, 11, 12], 1: [20, 21, 22]}
    entries = [make_entry(100, "ok", "g", list(range(8)), vectors(8), layout, "good")]
    entries += [make_entry(c, f"d{c}", "g", ids[c], sup_v[c], layout) for c in (0, 1)]
    index = GroupIndex.build("g", entries, 4, rank_by="appearance")
    gp = GoodParts.build(good_p, list(range(8)), 0.02)
    by_id_v = {i: v for c in (0, 1) for i, v in zip(ids[c], sup_v[c], strict=True)}
    by_id_p = {i: p for c in (0, 1) for i, p in zip(ids[c], sup_p[c], strict=True)}
    regions = region_descriptors(gp, by_id_p)
    fused = region_entries(index.entries, by_id_v, regions, layout)
    assert fused is not None and [e.class_id for e in fused] == [0, 1]
    assert fused[0].app_prototype is not None and fused[0].app_prototype.shape == (8 + 16,)
    served = ServedGroup.build(index, gp, fused)
    plain = ServedGroup.build(index, gp)
    assert served.regions and not plain.regions
    q_p = np.concatenate([defective(0, 6), defective(1, 6)])
    q_v = vectors(12)
    truth = [0] * 6 + [1] * 6
    got = served.inspect(q_v, q_p, top_k=1, threshold=10.0)  # labels only, no rejection
    assert all(i.verdict == "defect" for i in got)
    # the answer's score: the class score times the verdict's probability, where known
    for i in got:
        assert i.anomaly is not None and i.decision is not None
        p = i.anomaly.probability
        assert i.score == pytest.approx(i.decision.best.score * (1.0 if p is None else p))
    assert [i.entry.class_id for i in got if i.entry] == truth
    alike = plain.inspect(q_v, q_p, top_k=1, threshold=10.0)
    assert np.mean([i.entry is not None and i.entry.class_id == t
                    for i, t in zip(alike, truth, strict=True)]) <= 0.75
    # the fused vector is [metric | (appearance, region) / sqrt 2]
    v = fuse_region(q_v[:1], np.ones((1, 16), np.float32) / 4, 4)
    assert v.shape == (1, 4 + 8 + 16) and np.allclose(v[0, :4], q_v[0, :4])
    # a defect image without patch features (an older database): no fusion
    assert region_entries(index.entries, by_id_v, {10: regions[10]}, layout) is None


def varied(rng: np.random.Generator, n: int, c: int = 16, h: int = 6) -> np.ndarray:
    """n good images whose patches spread over many patterns (a bank worth capping)."""
    patterns = unit(np.random.default_rng(5).normal(size=(60, c)), 1)
    pick = rng.integers(0, len(patterns), (n, h, h))
    return unit(patterns[pick] + 0.15 * rng.normal(size=(n, h, h, c)), 3)


def test_a_capped_memory_stays_under_its_cap_and_covers_every_patch_seen() -> None:
    rng = np.random.default_rng(3)
    good = varied(rng, 40)  # 40 x 36 = 1,440 patches
    cap = 300
    mem = PatchMemory(good, cap=cap, dims=None)
    assert len(mem.bank) <= cap and mem.radius > 0 and mem.n_good == 40
    exact = PatchMemory(good, dims=None)
    assert len(exact.bank) == 40 * 36
    # Every patch seen lies within the cover's reach of the bank (twice the radius: one
    # step at admission, one at a thinning), so a query's distance is at most that high.
    seen = mem.distances(good)
    assert seen.max() <= 2 * mem.radius + 1e-5
    query = varied(rng, 5)
    diff = mem.distances(query) - exact.distances(query)
    assert diff.min() >= -1e-5 and diff.max() <= 2 * mem.radius + 1e-5
    # Under the cap nothing changes: the same bank and projection as an exact build.
    small = good[:8]
    a, b = PatchMemory(small, cap=cap, dims=8), PatchMemory(small, dims=8)
    assert a.projection is not None and b.projection is not None
    assert np.array_equal(a.bank, b.bank) and np.array_equal(a.projection, b.projection)


def test_extending_a_capped_memory_is_a_fresh_build_however_the_images_arrived() -> None:
    rng = np.random.default_rng(4)
    good = varied(rng, 36)
    fresh = PatchMemory(good, cap=250)
    for cuts in ((5,), (9, 10, 30), (1, 2, 3, 4, 20)):  # under the cap, across it, past it
        mem = PatchMemory(good[:cuts[0]], cap=250)
        for lo, hi in itertools.pairwise((*cuts, len(good))):
            mem = mem.extend(good[lo:hi])
        assert np.array_equal(mem.bank, fresh.bank) and np.array_equal(mem.owner, fresh.owner)
        assert mem.radius == fresh.radius and mem.n_good == fresh.n_good
    with pytest.raises(ValueError):
        PatchMemory(good).extend(good[:1])  # no cap: it would hold every patch twice over


def test_a_grown_group_reads_only_its_new_images_and_its_held_out_sample() -> None:
    from models.inference import MAX_HELD_OUT, GoodParts

    rng = np.random.default_rng(6)
    good = varied(rng, 120)
    asked: list[int] = []

    def source(positions: np.ndarray) -> np.ndarray:
        asked.extend(int(i) for i in positions)
        return good[positions]

    first = GoodParts.build(source, range(100), 0.02, memory_patches=400)
    asked.clear()
    grown = GoodParts.build(source, range(120), 0.02, previous=first, memory_patches=400)
    fresh = GoodParts.build(good, range(120), 0.02, memory_patches=400)
    new = set(range(100, 120))
    assert new <= set(asked) and len(set(asked) - new) <= MAX_HELD_OUT
    assert np.array_equal(grown.memory.bank, fresh.memory.bank)
    assert grown.threshold == fresh.threshold and np.array_equal(grown.loo, fresh.loo)
    asked.clear()
    GoodParts.build(source, range(120), 0.03, previous=grown, memory_patches=400)
    assert asked == []  # the same good images: nothing read at all
