"""/verify: same or different, calibrated on a group's own classes where it has enough of
them, else globally; bad input is a 4xx."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from fastapi.testclient import TestClient
from PIL import ImageDraw

from app.services.classification import enrolled_classes, enrolled_patches
from app.services.runtime import Verifier
from bench.imagegen import CLASSES, flat, png_bytes, sample, surface
from models.inference import EnrolledClass, ServingConfig, build_served_group
from models.verify import (
    MIN_PAIRS,
    Calibration,
    PairModel,
    VerdictModel,
    fit,
    group_calibration,
    load_global,
    moderated,
    same_probability,
    seen,
    with_verdict,
)
from tests.app.test_api import enrol, error_of, group


def pair(a: bytes, b: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("a", ("a.png", a, "image/png")), ("b", ("b.png", b, "image/png"))]


def test_globally_two_crops_of_a_texture_are_the_same_and_two_textures_differ(
        client: TestClient) -> None:
    for texture in ("brick", "grass", "gravel"):
        r = client.post("/api/v1/verify", files=pair(sample(texture, None, 1),
                                                     sample(texture, None, 2)))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["same"] is True and 0.5 <= body["score"] <= 1, (texture, body)
        assert body["calibration"] == "global" and body.get("warning") is None
    for a, b in (("brick", "gravel"), ("brick", "grass"), ("grass", "gravel")):
        r = client.post("/api/v1/verify", files=pair(sample(a, None, 3), sample(b, None, 4)))
        assert r.json()["same"] is False and r.json()["score"] < 0.5, (a, b, r.json())


def test_a_group_decides_on_its_own_calibration_and_recalibrates_when_it_changes(
        client: TestClient) -> None:
    grp = group()
    enrol(client, grp, shots=4)  # 3 classes x 4 images: 18 same pairs, 48 different
    held = {name: sample(s, d, 900 + i) for i, (name, (s, d)) in enumerate(CLASSES.items())}
    held2 = {name: sample(s, d, 950 + i) for i, (name, (s, d)) in enumerate(CLASSES.items())}
    same = client.post("/api/v1/verify", params={"group": grp},
                       files=pair(held["brick-scratch"], held2["brick-scratch"]))
    assert same.status_code == 200, same.text
    assert same.json()["calibration"] == "group" and same.json().get("warning") is None
    assert same.json()["same"] is True
    diff = client.post("/api/v1/verify", params={"group": grp},
                       files=pair(held["brick-scratch"], held2["gravel-hole"]))
    assert diff.json()["same"] is False and diff.json()["calibration"] == "group"
    # Another class changes the group: its calibration is computed again, from the
    # group as it now stands (a different score for the same two images).
    r = client.post("/api/v1/classes", json={"name": "grass-clean", "group": grp})
    client.post(f"/api/v1/classes/{r.json()['id']}/images", files=[
        ("files", (f"c{i}.png", sample("grass", None, 700 + i), "image/png"))
        for i in range(4)])
    again = client.post("/api/v1/verify", params={"group": grp},
                        files=pair(held["brick-scratch"], held2["gravel-hole"]))
    assert again.json()["calibration"] == "group"
    assert again.json()["score"] != diff.json()["score"]


def test_in_a_line_with_good_parts_the_verdict_takes_part(client: TestClient) -> None:
    """A line as a factory enrols it (good parts + a defect class, both on one surface):
    the group's calibration carries a verdict model fitted on the held-out anomaly scores,
    two good parts are "same", a good part and a defective one "different"."""
    grp = group()
    good = client.post("/api/v1/classes", json={"name": "ok", "group": grp, "kind": "good"})
    client.post(f"/api/v1/classes/{good.json()['id']}/images", files=[
        ("files", (f"g{i}.png", sample("brick", None, 300 + i), "image/png"))
        for i in range(8)])
    bad = client.post("/api/v1/classes", json={"name": "scratch", "group": grp})
    client.post(f"/api/v1/classes/{bad.json()['id']}/images", files=[
        ("files", (f"s{i}.png", sample("brick", "scratch", 400 + i), "image/png"))
        for i in range(6)])
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    a, b, d = (sample("brick", None, 901), sample("brick", None, 902),
               sample("brick", "scratch", 903))
    same = client.post("/api/v1/verify", params={"group": grp}, files=pair(a, b))
    assert same.status_code == 200, same.text
    assert same.json()["calibration"] == "group" and same.json()["same"] is True
    cal = rt.siamese.calibration(grp, rt.cache.served(grp), lambda: enrolled_classes(rt, grp),
                                 lambda ids: enrolled_patches(rt, ids))
    assert cal is not None and cal.verdict is not None
    diff = client.post("/api/v1/verify", params={"group": grp}, files=pair(a, d))
    assert diff.json()["same"] is False, diff.json()
    assert diff.json()["score"] < same.json()["score"]


def small_defect(kind: str, seed: int) -> bytes:
    """A brick part with a small defect (a tenth of the frame or less): the frame as a
    whole is the brick's; only where it differs says which defect."""
    rng = np.random.default_rng(seed)
    img = surface("brick", rng)
    d = ImageDraw.Draw(img)
    x, y = (int(v) for v in rng.integers(40, 120, 2))
    if kind == "pit":
        d.rectangle([x - 5, y - 5, x + 5, y + 5], fill=(0, 0, 0))
    elif kind == "spot":
        d.ellipse([x - 6, y - 6, x + 6, y + 6], fill=(250, 250, 250))
    else:
        d.line([(x - 10, y), (x + 10, y + 4)], fill=(200, 40, 40), width=3)
    return png_bytes(img)


def test_a_line_without_good_parts_ranks_its_defects_by_where_they_are(
        client: TestClient) -> None:
    """Three small defect types on one surface, no good parts enrolled (the frames look
    alike: the whole-frame ranking names their classes little better than chance): the
    group's own held-out images chose to rank its classes by each image's defect region,
    found against its other classes, and /verify answers on it: two pits "same", a pit
    and a spot, a spot and a nick "different"."""
    grp = group()
    for n, kind in enumerate(("pit", "spot", "nick")):
        r = client.post("/api/v1/classes", json={"name": kind, "group": grp})
        client.post(f"/api/v1/classes/{r.json()['id']}/images", files=[
            ("files", (f"{kind}{i}.png", small_defect(kind, 500 + 10 * n + i), "image/png"))
            for i in range(5)])
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    pit, pit2, spot, nick = (small_defect(k, 911 + i)
                             for i, k in enumerate(("pit", "pit", "spot", "nick")))
    same = client.post("/api/v1/verify", params={"group": grp}, files=pair(pit, pit2))
    assert same.status_code == 200, same.text
    assert same.json()["calibration"] == "group" and same.json()["same"] is True
    cal = rt.siamese.calibration(grp, rt.cache.served(grp), lambda: enrolled_classes(rt, grp),
                                 lambda ids: enrolled_patches(rt, ids))
    assert cal is not None and cal.surface is not None and cal.verdict is None
    for a, b in ((pit, spot), (spot, nick)):
        diff = client.post("/api/v1/verify", params={"group": grp}, files=pair(a, b))
        assert diff.json()["same"] is False, diff.json()


def test_a_group_too_small_falls_back_to_the_global_calibration_with_a_warning(
        client: TestClient) -> None:
    grp = group()
    r = client.post("/api/v1/classes", json={"name": "only", "group": grp})
    client.post(f"/api/v1/classes/{r.json()['id']}/images", files=[
        ("files", (f"o{i}.png", sample("brick", "scratch", i), "image/png")) for i in range(3)])
    a, b = sample("brick", None, 1), sample("brick", None, 2)
    r = client.post("/api/v1/verify", params={"group": grp}, files=pair(a, b))
    assert r.status_code == 200, r.text
    assert r.json()["calibration"] == "global" and "too small" in r.json()["warning"]
    plain = client.post("/api/v1/verify", files=pair(a, b)).json()
    assert r.json()["score"] == plain["score"] and r.json()["same"] == plain["same"]


def test_bad_input_is_a_4xx_envelope_never_a_5xx(client: TestClient) -> None:
    good = sample("brick", None, 1)
    cases = {
        "one part missing": [("a", ("a.png", good, "image/png"))],
        "not an image": pair(good, b"this is not an image"),
        "a blank image": pair(good, flat((255, 255, 255))),
        "empty part": pair(b"", good),
    }
    for what, files in cases.items():
        r = client.post("/api/v1/verify", files=files)
        assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
        assert error_of(r)["message"], what
    blank = client.post("/api/v1/verify", files=pair(good, flat()))
    assert blank.status_code == 422 and error_of(blank)["code"] == "blank_image"
    missing = client.post("/api/v1/verify", params={"group": group()}, files=pair(good, good))
    assert missing.status_code == 404 and "not found" in error_of(missing)["message"]


def test_a_scoped_key_verifies_only_in_its_own_groups(client: TestClient) -> None:
    mine, theirs = group(), group()
    enrol(client, mine, shots=3)
    enrol(client, theirs, shots=3)
    r = client.post("/api/v1/keys", json={"role": "machine", "groups": [mine]})
    h = {"Authorization": f"Bearer {r.json()['key']}"}
    files = pair(sample("brick", None, 1), sample("brick", None, 2))
    assert client.post("/api/v1/verify", params={"group": mine}, files=files,
                       headers=h).status_code == 200
    other = client.post("/api/v1/verify", params={"group": theirs}, files=files, headers=h)
    assert other.status_code == 404
    assert error_of(other)["message"] == f"group {theirs!r} not found"


def test_group_calibration_is_a_pure_function_of_the_enrolment() -> None:
    """Every replica computes the same calibration: it depends on the enrolled vectors
    alone, not on the order they are given in; too few pairs give none."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 32))

    def cls(c: int, n: int) -> EnrolledClass:
        v = centres[c] + 0.3 * rng.normal(size=(n, 32))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return EnrolledClass(10 + c, f"c{c}", "defect", tuple(range(100 * c, 100 * c + n)),
                             np.concatenate([v, v], axis=1).astype(np.float32))

    classes = [cls(0, 5), cls(1, 5), cls(2, 4)]
    config = ServingConfig()
    one = group_calibration(classes, 32, config)
    two = group_calibration(list(reversed(classes)), 32, config)
    assert one is not None and one == two and one.source == "group"
    assert one.slope > 0
    # one class, or too few pairs of one class: no calibration of its own
    assert group_calibration([cls(0, 6)], 32, config) is None
    assert group_calibration([cls(0, 2), cls(1, 2), cls(2, 1)], 32, config) is None
    assert MIN_PAIRS > 1


def test_platt_fit_recovers_a_known_calibration_and_the_global_one_is_shipped() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=20_000) * 3
    y = rng.random(20_000) < 1 / (1 + np.exp(-(0.5 * x - 1.0)))
    c = fit(x, y, "test", prior=0.0)
    # balanced weighting moves the intercept by the log prior odds, not the slope
    assert abs(c.slope - 0.5) < 0.05
    glob = load_global()
    assert glob.source == "global" and glob.slope > 0 and glob.pairs > 100_000
    assert PairModel().dim == 256


def test_the_verdict_shares_a_posterior_between_the_kinds() -> None:
    post = np.array([[0.6, 0.3, 0.1], [0.0, 0.0, 1.0]])
    good = np.array([True, False, False])
    out = with_verdict(post, np.array([0.2, 0.9]), good)
    assert np.allclose(out.sum(axis=1), 1.0)
    assert np.allclose(out[0], [0.8, 0.2 * 0.75, 0.2 * 0.25])
    # a good class with no posterior mass still gets the verdict's "good" share
    assert np.allclose(out[1], [0.1, 0.0, 0.9])
    v = VerdictModel.fit(np.r_[np.full(20, 0.1), np.full(20, 0.3)],
                         np.r_[np.zeros(20, bool), np.ones(20, bool)])
    p = v.defect_probability(np.array([0.05, 0.2, 0.35]))
    assert p[0] < 0.1 and abs(p[1] - 0.5) < 0.05 and p[2] > 0.9


def test_a_fit_on_few_images_answers_less_surely_than_its_weights_alone() -> None:
    """The Laplace moderation: the same weights answer closer to 0.5 where the fit was
    uncertain, never on the other side of it, and as fitted when it was sure."""
    a = np.array([[-3.0, 1.0], [-0.5, 1.0], [0.0, 1.0], [2.0, 1.0], [6.0, 1.0]])
    theta = np.array([1.5, 0.2])
    plain = moderated(a, theta, None)
    unsure = moderated(a, theta, np.array([[0.8, 0.1], [0.1, 0.5]]))
    sure = moderated(a, theta, np.array([[0.8, 0.1], [0.1, 0.5]]) * 1e-6)
    assert np.all(np.abs(unsure - 0.5) < np.abs(plain - 0.5))
    assert np.all(np.sign(unsure - 0.5) == np.sign(plain - 0.5))
    assert np.allclose(sure, plain, atol=1e-5)
    # a verdict fitted on 4 images is less sure of an extreme score than one on 400
    rng = np.random.default_rng(0)
    few = VerdictModel.fit(np.r_[0.1, 0.12, 0.3, 0.33], np.r_[False, False, True, True])
    many = VerdictModel.fit(np.r_[rng.normal(0.11, 0.01, 200), rng.normal(0.31, 0.01, 200)],
                            np.r_[np.zeros(200, bool), np.ones(200, bool)])
    assert 0.5 < few.defect_probability(np.array([0.5]))[0] \
        < many.defect_probability(np.array([0.5]))[0]


def _line(defects: int, rng: np.random.Generator) -> list[EnrolledClass]:
    """Good parts (noise patches) and `defects` defect classes, each a patch region of
    its own direction on the same noise; vectors: one look for the whole line."""
    h, c, dim = 6, 16, 32
    look = rng.normal(size=dim)
    out = []
    for k in range(defects + 1):
        n = 8 if k == 0 else 5
        patches = rng.normal(size=(n, h, h, c)).astype(np.float32)
        if k:
            direction = np.eye(c)[k] * 6
            for p in patches:
                y, x = rng.integers(0, h - 1, 2)
                p[y:y + 2, x:x + 2] += direction
        v = look + 0.3 * rng.normal(size=(n, dim))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out.append(EnrolledClass(k + 1, f"c{k}", "good" if k == 0 else "defect",
                                 tuple(range(100 * k, 100 * k + n)),
                                 np.concatenate([v, v], axis=1).astype(np.float32), patches))
    return out


def test_the_defects_looks_weigh_only_where_the_line_has_several_defect_classes() -> None:
    """With good parts and two defect classes, "the same defect?" also asks how alike the
    two defect regions look: the calibration weighs that, positively, and two images of
    one defect are "same", of two defects "different". With one defect class the
    question is the verdict's alone: no look is weighed. Defects that look more alike
    never argue for "different": the look's weight is not negative."""
    rng = np.random.default_rng(3)
    config = ServingConfig()
    classes = _line(2, rng)
    served = build_served_group("g", classes, 32, config)
    patches = {i: c.patches[j] for c in classes if c.patches is not None
               for j, i in enumerate(c.image_ids)}
    cal = group_calibration(classes, 32, config, served=served,
                            patches_of=lambda ids: {i: patches[i] for i in ids})
    assert cal is not None and cal.verdict is not None and cal.look is not None
    assert cal.look[0] >= 0  # kept so: here the fit alone would weigh it -0.09
    fresh = _line(2, np.random.default_rng(4))
    x = np.concatenate([fresh[1].vectors[:2], fresh[2].vectors[:1]])
    p = np.concatenate([fresh[1].patches[:2], fresh[2].patches[:1]])  # type: ignore[index]
    post, looks = seen(served, cal, x, p, 32)
    assert looks is not None
    same, different = same_probability(cal, post, looks, np.array([0, 0]), np.array([1, 2]))
    assert same > 0.5 > different
    one = classes[:2]
    lone = group_calibration(one, 32, config, served=build_served_group("g", one, 32, config),
                             patches_of=lambda ids: {i: patches[i] for i in ids})
    assert lone is not None and lone.verdict is not None and lone.look is None


def _defects_on_one_surface(rng: np.random.Generator, n: int = 5, apart: float = 0.0
                            ) -> list[EnrolledClass]:
    """Three defect classes and no good parts: each a small patch region of its own
    direction on the same noisy surface. Their whole-frame vectors share one look (plus
    `apart` times a look of their own): the surface dominates the frame."""
    h, c, dim = 8, 16, 32
    look = rng.normal(size=dim)
    out = []
    for k in range(3):
        own = rng.normal(size=dim)
        patches = (np.eye(c)[0] * 3 + 0.5 * rng.normal(size=(n, h, h, c))).astype(np.float32)
        for p in patches:
            y, x = rng.integers(0, h - 1, 2)
            p[y:y + 2, x:x + 2] += np.eye(c)[k + 1] * 4
        patches /= np.linalg.norm(patches, axis=-1, keepdims=True)
        v = look + apart * own + 0.3 * rng.normal(size=(n, dim))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out.append(EnrolledClass(k + 1, f"d{k}", "defect", tuple(range(100 * k, 100 * k + n)),
                                 np.concatenate([v, v], axis=1).astype(np.float32), patches))
    return out


def _patches_of(classes: list[EnrolledClass]):  # type: ignore[no-untyped-def]
    got = {i: c.patches[j] for c in classes if c.patches is not None
           for j, i in enumerate(c.image_ids)}
    return lambda ids: {i: got[i] for i in ids}


def test_without_good_parts_a_defect_is_found_against_the_groups_other_classes() -> None:
    """A line that enrolled defect classes but no good parts, whose frames look alike:
    where an image differs from what every class shows (the surface) is its defect, and
    the classes ranked on it tell same from different where the whole frame cannot. The
    group's own held-out images chose it: they name their class more surely so."""
    config = ServingConfig()
    classes = _defects_on_one_surface(np.random.default_rng(5))
    served = build_served_group("g", classes, 32, config)
    cal = group_calibration(classes, 32, config, served=served,
                            patches_of=_patches_of(classes))
    assert cal is not None and cal.surface is not None and cal.verdict is None
    fresh = _defects_on_one_surface(np.random.default_rng(6))
    x = np.concatenate([fresh[0].vectors[:2], fresh[1].vectors[:1]])
    p = np.concatenate([c.patches[:k] for c, k in ((fresh[0], 2), (fresh[1], 1))
                        if c.patches is not None])
    post, looks = seen(served, cal, x, p, 32)
    assert looks is None
    same, different = same_probability(cal, post, looks, np.array([0, 0]), np.array([1, 2]))
    assert same > 0.5 > different
    # the region found is the defect: each image's descriptor points along its direction
    regions = cal.surface.regions(p)
    assert list(regions[:, 1:4].argmax(axis=1)) == [0, 0, 1]
    assert np.all(regions[[0, 1, 2], [1, 1, 2]] > 0.7)
    # the whole frame alone (no patch features) cannot tell these classes apart
    plain = group_calibration(classes, 32, config, served=served)
    assert plain is not None and plain.surface is None
    flat_post, _ = seen(served, plain, x, p, 32)
    flat_same, flat_diff = same_probability(plain, flat_post, None, np.array([0, 0]),
                                            np.array([1, 2]))
    assert abs(flat_same - flat_diff) < abs(same - different)


def test_a_group_whose_classes_differ_as_wholes_keeps_its_whole_frame_ranking() -> None:
    """Classes that differ as whole frames and share no defect region (the noise is all
    there is locally): the held-out images name their class more surely on the whole
    frame, so no surface is used and the answers are the plain group's."""
    rng = np.random.default_rng(7)
    config = ServingConfig()
    classes = []
    for c in _defects_on_one_surface(rng, apart=3.0):
        noise = rng.normal(size=(len(c.image_ids), 8, 8, 16))  # no region: noise alone
        classes.append(replace(c, patches=(noise / np.linalg.norm(
            noise, axis=-1, keepdims=True)).astype(np.float32)))
    served = build_served_group("g", classes, 32, config)
    cal = group_calibration(classes, 32, config, served=served,
                            patches_of=_patches_of(classes))
    assert cal is not None and cal.surface is None
    assert cal == group_calibration(classes, 32, config, served=served)


def test_a_replica_keeps_the_calibrations_of_its_recently_verified_groups_only() -> None:
    """A calibration ranked on a group's surface holds patch memories: a replica keeps
    those of the groups verified most recently, and one it let go is computed again,
    the same, when asked."""
    config = ServingConfig()
    verifier = Verifier(config, 32, kept=2)
    classes = _defects_on_one_surface(np.random.default_rng(5))
    reads: list[str] = []
    served = {g: build_served_group(g, classes, 32, config) for g in "abc"}

    def calibrate(g: str) -> Calibration | None:
        def read() -> list[EnrolledClass]:
            reads.append(g)
            return classes
        return verifier.calibration(g, served[g], read, _patches_of(classes))

    first = calibrate("a")
    assert first is not None and first.surface is not None
    calibrate("b")
    calibrate("a")  # kept: not read again, and now the most recent
    calibrate("c")  # "b" is let go, not "a"
    assert reads == ["a", "b", "c"]
    calibrate("a")
    calibrate("b")
    assert reads == ["a", "b", "c", "b"]
    again = calibrate("c")  # let go when "b" came back: computed again, the same
    assert reads[-1] == "c" and again is not None
    assert (again.slope, again.intercept) == (first.slope, first.intercept)
