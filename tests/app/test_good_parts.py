"""Good classes, the anomaly score, the OK/NG verdict and the heatmap through the REST API
(contract: "Good parts, anomaly and heatmaps"), on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import io
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bench.imagegen import draw_defect, png_bytes, sample, surface
from storage import repositories as repo
from tests.app.conftest import as_files, make_settings, serving


def wide(surface_name: str, defect: str | None, seed: int) -> bytes:
    """A 240 x 160 part: the heatmap must keep this aspect."""
    rng = np.random.default_rng(seed)
    img = surface(surface_name, rng, 240).crop((0, 40, 240, 200))
    return png_bytes(draw_defect(img, defect, rng) if defect else img)


def good_group(client: TestClient, n_good: int = 12) -> tuple[str, int, int]:
    grp = f"g-{uuid.uuid4().hex[:8]}"
    good = client.post("/api/v1/classes", json={"name": "ok", "group": grp, "kind": "good"})
    assert good.status_code == 201 and good.json()["kind"] == "good"
    bad = client.post("/api/v1/classes", json={"name": "scratch", "group": grp})
    assert bad.json()["kind"] == "defect"
    for start in range(0, n_good, 10):  # the test app takes 12 files per request
        r = client.post(f"/api/v1/classes/{good.json()['id']}/images",
                        files=as_files([(f"ok{i}.png", sample("brick", None, 500 + i))
                                        for i in range(start, min(n_good, start + 10))]))
        assert r.status_code == 201, r.text
    report = r.json()["report"]["good_parts"]
    assert report["good_images"] == n_good and report["calibrated_on"] == n_good
    assert report["false_alarm_rate"] == 0.02 and report["threshold"] > 0
    # 12 good images cannot resolve a 2% false-alarm rate: the report says so
    assert "enrol more good parts" in report["warning"]
    r = client.post(f"/api/v1/classes/{bad.json()['id']}/images",
                    files=as_files([(f"s{i}.png", sample("brick", "scratch", 600 + i))
                                    for i in range(3)]))
    assert r.status_code == 201
    return grp, good.json()["id"], bad.json()["id"]


def test_verdict_anomaly_and_heatmap(client: TestClient) -> None:
    grp, good_id, bad_id = good_group(client)
    queries = ([(f"good{i}.png", wide("brick", None, 700 + i)) for i in range(5)]
               + [(f"hole{i}.png", wide("brick", "hole", 800 + i)) for i in range(5)]
               + [(f"scratch{i}.png", wide("brick", "scratch", 900 + i)) for i in range(2)])
    r = client.post("/api/v1/classify", params={"group": grp, "heatmap": "true"},
                    files=as_files(queries))
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    for x in res:
        a = x["anomaly"]
        assert set(a) == {"score", "threshold", "anomalous"}
        assert a["anomalous"] == (a["score"] > a["threshold"])
        assert x["verdict"] == ("defect" if a["anomalous"] else "ok")
        if x["verdict"] == "ok":  # an OK part is named by its good class
            assert x["label"] == "ok" and x["class_id"] == good_id and not x["unknown"]
        else:  # a defective one by a defect class, or unknown
            assert x["label"] in ("scratch", None)
    good = [x for x in res if x["filename"].startswith("good")]
    bad = [x for x in res if not x["filename"].startswith("good")]
    assert sum(x["verdict"] == "ok" for x in good) >= 4
    assert sum(x["verdict"] == "defect" for x in bad) >= 5
    # a defect type never enrolled (holes) is caught by the good parts; every good part
    # scores below every hole
    assert max(x["anomaly"]["score"] for x in good) < min(
        x["anomaly"]["score"] for x in bad if x["filename"].startswith("hole"))
    # the heatmap: a grey PNG with the input's aspect, brighter where the defect is
    img = Image.open(io.BytesIO(base64.b64decode(res[5]["heatmap"].split(",", 1)[1])))
    assert res[5]["heatmap"].startswith("data:image/png;base64,")
    assert img.mode == "L" and img.size[1] >= 28
    assert abs(img.size[0] / img.size[1] - 240 / 160) < 0.02
    calm = np.asarray(Image.open(io.BytesIO(base64.b64decode(res[0]["heatmap"].split(",")[1]))))
    assert np.asarray(img).max() > calm.max()
    metrics = client.get("/metrics").text
    assert f'fsdi_verdicts_total{{group="{grp}",verdict="defect"}}' in metrics
    # without ?heatmap, no heatmap
    r = client.post("/api/v1/classify", params={"group": grp}, files=as_files(queries[:1]))
    assert "heatmap" not in r.json()["results"][0] and "verdict" in r.json()["results"][0]


def test_history_carries_verdicts_and_filters_by_them(client: TestClient) -> None:
    grp, _, _ = good_group(client)
    queries = [("g.png", sample("brick", None, 1700)), ("h.png", sample("brick", "hole", 1800))]
    res = client.post("/api/v1/classify", params={"group": grp},
                      files=as_files(queries)).json()["results"]
    verdicts = {x["filename"]: x["verdict"] for x in res}
    assert verdicts == {"g.png": "ok", "h.png": "defect"}
    items = client.get("/api/v1/results", params={"group": grp}).json()["items"]
    assert {i["filename"]: i["verdict"] for i in items} == verdicts
    assert all(i["anomaly"]["score"] == x["anomaly"]["score"]
               for i in items for x in res if x["id"] == i["id"])
    ng = client.get("/api/v1/results", params={"group": grp, "verdict": "defect"}).json()
    assert [i["filename"] for i in ng["items"]] == ["h.png"]
    text = client.get("/api/v1/results.csv", params={"group": grp}).text
    header, *rows = text.strip().splitlines()
    assert header.endswith("verdict,anomaly_score,anomaly_threshold")
    assert {r.split(",")[3]: r.split(",")[-3] for r in rows} == verdicts


def test_false_alarm_rate_per_group(client: TestClient) -> None:
    grp, good_id, _ = good_group(client, n_good=16)
    before = client.get(f"/api/v1/groups/{grp}/report").json()["good_parts"]
    r = client.get(f"/api/v1/groups/{grp}/anomaly")
    assert r.json() == {"group": grp, "false_alarm_rate": None, "effective": 0.02,
                        "threshold_rule": None, "effective_rule": "auto"}
    r = client.put(f"/api/v1/groups/{grp}/anomaly", json={"false_alarm_rate": 0.25})
    assert r.status_code == 200 and r.json()["effective"] == 0.25
    after = client.get(f"/api/v1/groups/{grp}/report").json()["good_parts"]
    assert after["false_alarm_rate"] == 0.25 and after["warning"] is None
    assert after["threshold"] < before["threshold"]  # a lower quantile of the same scores
    for bad in (0, 0.7, "x"):
        r = client.put(f"/api/v1/groups/{grp}/anomaly", json={"false_alarm_rate": bad})
        assert r.status_code == 422, bad
    for body in ({"threshold_rule": "median"}, {"rule": "auto"}):
        assert client.put(f"/api/v1/groups/{grp}/anomaly", json=body).status_code == 422
    r = client.put(f"/api/v1/groups/{grp}/anomaly", json={"false_alarm_rate": None})
    assert r.json()["effective"] == 0.02
    assert client.get(f"/api/v1/groups/{grp}/report").json()["good_parts"] == before


def test_good_class_removal_and_groups_without_good_parts(client: TestClient) -> None:
    grp, good_id, bad_id = good_group(client)
    q = as_files([("q.png", sample("brick", None, 1900))])
    assert "verdict" in client.post("/api/v1/classify", params={"group": grp},
                                    files=q).json()["results"][0]
    assert client.delete(f"/api/v1/classes/{good_id}").status_code == 204
    res = client.post("/api/v1/classify", params={"group": grp}, files=q).json()["results"][0]
    assert "verdict" not in res and "anomaly" not in res and res["label"] == "scratch"
    assert client.get(f"/api/v1/groups/{grp}/report").json()["good_parts"] is None
    r = client.post("/api/v1/classes", json={"name": "x", "group": grp, "kind": "great"})
    assert r.status_code == 422


def test_group_of_good_classes_only(client: TestClient) -> None:
    grp = f"g-{uuid.uuid4().hex[:8]}"
    ids = []
    for name, surf in (("brick-ok", "brick"), ("gravel-ok", "gravel")):
        c = client.post("/api/v1/classes", json={"name": name, "group": grp, "kind": "good"})
        ids.append(c.json()["id"])
        files = as_files([(f"{name}{i}.png", sample(surf, None, 1000 + i)) for i in range(8)])
        assert client.post(f"/api/v1/classes/{ids[-1]}/images", files=files).status_code == 201
    queries = [("b.png", sample("brick", None, 2000)), ("g.png", sample("gravel", None, 2001)),
               ("bh.png", sample("brick", "hole", 2002))]
    res = client.post("/api/v1/classify", params={"group": grp},
                      files=as_files(queries)).json()["results"]
    assert [x["verdict"] for x in res] == ["ok", "ok", "defect"]
    # each OK part is named by its own variant; a defect with no defect class is unknown
    assert [x["label"] for x in res] == ["brick-ok", "gravel-ok", None]
    assert res[2]["unknown"] and res[2]["top_k"] == [] and res[2]["score"] == 0.0


def test_replicas_pick_up_good_parts_and_their_rate(client: TestClient,
                                                    quiet_client: TestClient) -> None:
    """Another replica on the same database: it answers with the same good parts after
    its sync, and follows a changed false-alarm rate."""
    grp, _, _ = good_group(client, n_good=12)
    other = quiet_client.app.state.runtime  # type: ignore[attr-defined]
    assert grp in other.sync_once()
    mine = client.app.state.runtime.cache.served(grp).good_parts  # type: ignore[attr-defined]
    theirs = other.cache.served(grp).good_parts
    assert theirs is not None and theirs.image_ids == mine.image_ids
    assert theirs.threshold == mine.threshold
    q = as_files([("h.png", sample("brick", "hole", 2100)), ("g.png", sample("brick", None, 2101))])
    a = client.post("/api/v1/classify", params={"group": grp}, files=q).json()["results"]
    b = quiet_client.post("/api/v1/classify", params={"group": grp}, files=q).json()["results"]
    assert [x["anomaly"] for x in a] == [x["anomaly"] for x in b]
    client.put(f"/api/v1/groups/{grp}/anomaly", json={"false_alarm_rate": 0.3})
    assert grp in other.sync_once()
    assert other.cache.served(grp).good_parts.false_alarm_rate == 0.3


def test_a_replica_does_not_read_again_what_it_changed_itself(
        client: TestClient, quiet_client: TestClient) -> None:
    """A change this replica made and then read whole is not read again by its own sync
    (a group of thousands of good images would be re-read after each enrolment, and
    /verify's calibration computed again for the new snapshot); a change another replica
    makes still is."""
    rt = quiet_client.app.state.runtime  # type: ignore[attr-defined]
    rt.sync_once()  # whatever other tests changed
    grp, good_id, _ = good_group(quiet_client, n_good=8)
    mine = rt.cache.served(grp)
    assert mine is not None and mine.good_parts is not None
    assert grp not in rt.sync_once()
    assert rt.cache.served(grp) is mine  # the same snapshot: nothing was rebuilt
    r = client.post(f"/api/v1/classes/{good_id}/images",
                    files=as_files([("late.png", sample("brick", None, 590))]))
    assert r.status_code == 201, r.text
    assert grp in rt.sync_once()
    theirs = rt.cache.served(grp)
    assert theirs is not None and theirs.good_parts is not None
    assert len(theirs.good_parts.image_ids) == 9
    # a local change to a defect class of a group with good parts reads it whole too
    bad = quiet_client.post("/api/v1/classes", json={"name": "dent", "group": grp})
    r = quiet_client.post(f"/api/v1/classes/{bad.json()['id']}/images",
                          files=as_files([("d.png", sample("brick", "hole", 591))]))
    assert r.status_code == 201, r.text
    now = rt.cache.served(grp)
    assert grp not in rt.sync_once() and rt.cache.served(grp) is now


def test_a_results_kept_image_and_its_heatmap(client: TestClient) -> None:
    grp, _, _ = good_group(client)
    res = client.post("/api/v1/classify", params={"group": grp, "heatmap": "true"},
                      files=as_files([("h.png", wide("brick", "hole", 2200))])).json()
    rid, served_map = res["results"][0]["id"], res["results"][0]["heatmap"]
    r = client.get(f"/api/v1/results/{rid}/image", params={"size": 64})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) == 64
    r = client.get(f"/api/v1/results/{rid}/heatmap")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    # recomputed from the kept image: the same map the classify answer carried
    again = np.asarray(Image.open(io.BytesIO(r.content)), np.int16)
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(served_map.split(",")[1]))),
                       np.int16)
    assert again.shape == first.shape and np.abs(again - first).max() <= 2
    assert client.get("/api/v1/results/999999999/heatmap").status_code == 404
    # a group without good parts has no heatmap to give
    plain = f"p-{uuid.uuid4().hex[:8]}"
    cid = client.post("/api/v1/classes", json={"name": "x", "group": plain}).json()["id"]
    client.post(f"/api/v1/classes/{cid}/images",
                files=as_files([("x.png", sample("brick", "scratch", 2300))]))
    other = client.post("/api/v1/classify", params={"group": plain},
                        files=as_files([("q.png", sample("brick", None, 2301))])).json()
    r = client.get(f"/api/v1/results/{other['results'][0]['id']}/heatmap")
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_good_parts"


def test_one_good_image_flags_nothing_and_says_so(client: TestClient) -> None:
    grp = f"g-{uuid.uuid4().hex[:8]}"
    cid = client.post("/api/v1/classes", json={"name": "ok", "group": grp, "kind": "good"}
                      ).json()["id"]
    r = client.post(f"/api/v1/classes/{cid}/images",
                    files=as_files([("ok.png", sample("brick", None, 2400))]))
    g = r.json()["report"]["good_parts"]
    assert g["threshold"] == 2.0 and g["calibrated_on"] == 0
    assert "one good image cannot calibrate" in g["warning"]
    res = client.post("/api/v1/classify", params={"group": grp, "heatmap": "true"},
                      files=as_files([("h.png", sample("brick", "hole", 2401))])).json()
    x = res["results"][0]
    assert x["anomaly"]["threshold"] == 2.0 and x["verdict"] == "ok" and x["heatmap"]
    # a defect image gives the threshold its other side: the good image's own regions,
    # left out in turn, give the good one
    bad = client.post("/api/v1/classes", json={"name": "hole", "group": grp}).json()["id"]
    r = client.post(f"/api/v1/classes/{bad}/images",
                    files=as_files([("h.png", sample("brick", "hole", 2402))]))
    g = r.json()["report"]["good_parts"]
    assert g["rule"] == "balanced" and g["threshold"] < 2.0 and g["calibrated_on"] == 0
    assert "regions left out" in g["warning"]
    res = client.post("/api/v1/classify", params={"group": grp},
                      files=as_files([("h.png", sample("brick", "hole", 2403)),
                                      ("g.png", sample("brick", None, 2404))])).json()
    assert [x["verdict"] for x in res["results"]] == ["defect", "ok"]


def test_defect_images_place_the_threshold_while_good_ones_are_few(client: TestClient) -> None:
    """12 good images cannot tell a 2% false-alarm rate apart: once the group has defect
    images the threshold sits midway between the good and the defect images' scores;
    with a rate the good images can resolve, or without defect images, the rate rules."""
    grp = f"g-{uuid.uuid4().hex[:8]}"
    good = client.post("/api/v1/classes", json={"name": "ok", "group": grp, "kind": "good"})
    r = client.post(f"/api/v1/classes/{good.json()['id']}/images",
                    files=as_files([(f"ok{i}.png", sample("brick", None, 3000 + i))
                                    for i in range(12)]))
    alone = r.json()["report"]["good_parts"]
    assert alone["rule"] == "false_alarm_rate" and alone["defect_examples"] == 0
    bad = client.post("/api/v1/classes", json={"name": "hole", "group": grp}).json()["id"]
    r = client.post(f"/api/v1/classes/{bad}/images",
                    files=as_files([(f"h{i}.png", sample("brick", "hole", 3100 + i))
                                    for i in range(3)]))
    both = r.json()["report"]["good_parts"]
    assert both["rule"] == "balanced" and both["defect_examples"] == 3
    assert both["threshold"] != alone["threshold"] and both["calibrated_on"] == 12
    assert 1 <= both["defect_examples_flagged"] <= 3
    assert "midway" in both["warning"]
    # a query is judged against the balanced threshold, and its score is the probability
    # of its verdict, no longer the certainty of a group's only good class
    x = client.post("/api/v1/classify", params={"group": grp},
                    files=as_files([("q.png", sample("brick", None, 3200)),
                                    ("h.png", sample("brick", "hole", 3201))])).json()
    assert x["results"][0]["anomaly"]["threshold"] == pytest.approx(both["threshold"], abs=1e-5)
    gp = client.app.state.runtime.cache.served(grp).good_parts  # type: ignore[attr-defined]
    for r, verdict in zip(x["results"], ("ok", "defect"), strict=True):
        p = gp.defect_probability(r["anomaly"]["score"])
        assert r["verdict"] == verdict and p is not None
        right = 1.0 - p if verdict == "ok" else p  # times the label's class score (one class)
        assert r["score"] == pytest.approx(right, abs=1e-4)
    # a rate 12 good images can resolve: the rate rules again
    client.put(f"/api/v1/groups/{grp}/anomaly", json={"false_alarm_rate": 0.25})
    resolved = client.get(f"/api/v1/groups/{grp}/report").json()["good_parts"]
    assert resolved["rule"] == "false_alarm_rate" and resolved["warning"] is None
    assert resolved["defect_examples"] == 3
    # the group's own rule: the good images alone, whatever the count
    r = client.put(f"/api/v1/groups/{grp}/anomaly", json={"threshold_rule": "false_alarm_rate"})
    assert r.status_code == 200 and r.json()["effective_rule"] == "false_alarm_rate"
    assert r.json()["effective"] == 0.02  # the rate went back to the service-wide one
    own = client.get(f"/api/v1/groups/{grp}/report").json()["good_parts"]
    assert own["rule"] == "false_alarm_rate" and own["threshold"] == alone["threshold"]
    assert own["defect_examples"] == 3 and "midway" not in own["warning"]
    client.put(f"/api/v1/groups/{grp}/anomaly", json={})
    assert client.get(f"/api/v1/groups/{grp}/report").json()["good_parts"] == both
    # the defect class removed: back to the good images alone
    assert client.delete(f"/api/v1/classes/{bad}").status_code == 204
    after = client.get(f"/api/v1/groups/{grp}/report").json()["good_parts"]
    assert after == alone


def test_defect_classes_are_told_apart_by_where_the_part_differs(client: TestClient) -> None:
    """In a group with good parts the defect classes are ranked on region-fused vectors
    (the part's global look and the look of where it differs from the good parts), on
    this replica as built at enrolment."""
    grp, _, scratch = good_group(client)  # 12 good, 3 scratches
    hole = client.post("/api/v1/classes", json={"name": "hole", "group": grp}).json()["id"]
    r = client.post(f"/api/v1/classes/{hole}/images",
                    files=as_files([(f"h{i}.png", sample("brick", "hole", 3300 + i))
                                    for i in range(3)]))
    assert r.status_code == 201
    served = client.app.state.runtime.cache.served(grp)  # type: ignore[attr-defined]
    assert served.regions and served.defects is not None
    assert {e.class_id for e in served.defects.entries} == {scratch, hole}
    queries = ([(f"h{i}.png", sample("brick", "hole", 3400 + i)) for i in range(4)]
               + [(f"s{i}.png", sample("brick", "scratch", 3500 + i)) for i in range(4)])
    res = client.post("/api/v1/classify", params={"group": grp},
                      files=as_files(queries)).json()["results"]
    named = [(x["filename"][0], x["label"]) for x in res if x["verdict"] == "defect"]
    assert len(named) >= 6
    right = sum(label == {"h": "hole", "s": "scratch"}[f] for f, label in named)
    assert right >= len(named) - 1


def test_a_capped_memory_grows_by_its_new_images_and_rebuilds_after_a_deletion_in_the_background(
        model_cache: Path, tmp_path: Path) -> None:
    """With the cap at two images' patches, a good class of six is a cover (radius > 0);
    adding images extends it as a fresh build would; deleting one answers at once, the
    old memory serves meanwhile, and the rebuilt one replaces it."""
    from models.patchcore import PatchMemory

    settings = make_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'f.db'}", model_cache,
                             anomaly_memory_patches=400)
    with serving(settings) as c:
        gid = c.post("/api/v1/classes", json={"name": "ok", "group": "g", "kind": "good"}
                     ).json()["id"]
        imgs = [sample(("brick", "gravel")[j % 2], None, 3000 + j) for j in range(6)]
        for part in (imgs[:3], imgs[3:]):
            r = c.post(f"/api/v1/classes/{gid}/images",
                       files=as_files([(f"{i}.png", b) for i, b in enumerate(part)]))
            assert r.status_code == 201, r.text
        rt = c.app.state.runtime  # type: ignore[attr-defined]
        memory = rt.cache.served("g").good_parts.memory
        with rt.sessions() as s:
            stored = repo.patches_for(s, rt.backbone.patch_version, [gid])
        fresh = PatchMemory(np.stack([p.patches for p in stored]), cap=400)
        assert 0 < len(memory.bank) <= 400 and memory.radius > 0
        assert np.array_equal(memory.bank, fresh.bank)
        report = c.get("/api/v1/groups/g/report").json()["good_parts"]
        assert report["memory_patches"] == len(memory.bank) and report["memory_radius"] > 0
        image_id = r.json()["images"][0]["id"]
        assert c.delete(f"/api/v1/classes/{gid}/images/{image_id}").status_code == 204
        q = as_files([("q.png", sample("brick", None, 3999))])
        assert "verdict" in c.post("/api/v1/classify", params={"group": "g"},
                                   files=q).json()["results"][0]  # served meanwhile
        deadline = time.monotonic() + 60
        while c.get("/api/v1/groups/g/report").json()["good_parts"]["good_images"] != 5:
            assert time.monotonic() < deadline, "the memory was never rebuilt"
            time.sleep(0.05)
