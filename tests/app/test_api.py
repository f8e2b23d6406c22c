"""The contract's every status code, against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import housekeeping_loop
from app.services.keys import KeyCache, Principal, hash_key
from app.services.runtime import Runtime
from bench.imagegen import CLASSES, flat, sample
from storage import repositories as repo
from storage.packs import PREFIX as PACKS
from storage.packs import PackStore
from tests.app.conftest import as_files, make_settings, new_key, serving


def group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def enrol(client: TestClient, grp: str, shots: int = 5) -> dict[str, int]:
    ids = {}
    for ci, (name, (surf, defect)) in enumerate(CLASSES.items()):
        r = client.post("/api/v1/classes", json={"name": name, "group": grp})
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]
        files = [(f"{name}{j}.png", sample(surf, defect, 100 * ci + j)) for j in range(shots)]
        r = client.post(f"/api/v1/classes/{ids[name]}/images", files=as_files(files))
        assert r.status_code == 201, r.text
        assert r.json()["class"]["image_count"] == shots
    return ids


def error_of(r) -> dict:  # type: ignore[no-untyped-def]
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str)
    return body["error"]


def test_health_ready_metrics(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["model"].startswith("fsdi_lite0_meta@")
    m = client.get("/metrics")
    assert m.status_code == 200 and "fsdi_requests_total" in m.text


def test_enrol_and_classify_held_out_images(client: TestClient) -> None:
    check_held_out_images(client)


def check_held_out_images(client: TestClient) -> dict:  # type: ignore[type-arg]
    """Enrol the three classes, classify held-out images of each; returns the body."""
    grp = group()
    enrol(client, grp)
    queries = [(name, sample(surf, defect, 5000 + 13 * ci + j))
               for ci, (name, (surf, defect)) in enumerate(CLASSES.items()) for j in range(4)]
    files = [(f"q{n}-{name}.png", data) for n, (name, data) in enumerate(queries)]
    r = client.post("/api/v1/classify", params={"group": grp, "top_k": 3}, files=as_files(files))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["filename"] for x in body["results"]] == [f for f, _ in files]
    acc = np.mean([x["top_k"][0]["label"] == name for x, (name, _) in
                   zip(body["results"], queries, strict=True)])
    assert acc >= 0.9, acc  # chance is 1/3
    known = [x for x in body["results"] if not x["unknown"]]
    assert len(known) >= 0.8 * len(queries)
    for x in body["results"]:
        assert 0.0 <= x["score"] <= 1.0 and len(x["top_k"]) == 3
        assert [t["distance"] for t in x["top_k"]] == sorted(t["distance"] for t in x["top_k"])
        assert isinstance(x["id"], int)
    assert body["model"]["method"] == "protonet" and body["model"]["version"]
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize("odd", [flat((128, 128, 128)), flat((250, 20, 20)), flat((0, 0, 0))])
def test_unlike_everything_is_unknown(client: TestClient, odd: bytes) -> None:
    grp = group()
    enrol(client, grp)
    r = client.post("/api/v1/classify", params={"group": grp}, files=as_files([("x.png", odd)]))
    x = r.json()["results"][0]
    assert x["unknown"] is True and x["label"] is None and x["class_id"] is None
    assert len(x["top_k"]) == 3
    # it names no class, so it claims none; the candidates are still ranked
    assert x["score"] == 0.0 and x["top_k"][0]["score"] >= x["top_k"][1]["score"]


def test_threshold_override_and_evidence(client: TestClient) -> None:
    grp = group()
    enrol(client, grp)
    q = as_files([("q.png", sample("brick", "scratch", 777))])
    strict = client.post("/api/v1/classify", params={"group": grp, "threshold": 1e-4}, files=q)
    assert strict.json()["results"][0]["unknown"] is True
    q = as_files([("q.png", sample("brick", "scratch", 777))])
    lax = client.post("/api/v1/classify", params={"group": grp, "threshold": 4, "evidence": True,
                                                   "top_k": 1}, files=q).json()["results"][0]
    assert lax["unknown"] is False and lax["label"] == "brick-scratch"
    ev = lax["top_k"][0]["evidence"]
    assert 1 <= len(ev) <= 3 and ev[0]["distance"] <= ev[-1]["distance"]


def test_class_lifecycle_and_status_codes(client: TestClient) -> None:
    grp = group()
    r = client.post("/api/v1/classes", json={"name": "dent", "group": grp, "description": "d"})
    assert r.status_code == 201
    cls = r.json()
    assert cls["group"] == grp and cls["image_count"] == 0 and cls["description"] == "d"
    r = client.post("/api/v1/classes", json={"name": "dent", "group": grp})
    assert r.status_code == 409 and error_of(r)["code"] == "duplicate_class"
    assert client.post("/api/v1/classes", json={"name": "dent", "group": grp + "x"}
                       ).status_code == 201  # same name, other group
    assert client.post("/api/v1/classes", json={"name": ""}).status_code == 422
    assert client.post("/api/v1/classes", json={"name": "a", "bogus": 1}).status_code == 422
    items = client.get("/api/v1/classes", params={"group": grp}).json()["items"]
    assert [c["name"] for c in items] == ["dent"]
    assert client.get(f"/api/v1/classes/{cls['id']}").status_code == 200
    imgs = as_files([("a.png", sample("brick", "stain", 1)),
                     ("b.png", sample("brick", "stain", 2))])
    r = client.post(f"/api/v1/classes/{cls['id']}/images", files=imgs)
    assert r.status_code == 201 and r.json()["class"]["image_count"] == 2
    image_id = r.json()["images"][0]["id"]
    assert len(r.json()["images"][0]["sha256"]) == 64
    again = as_files([("c.png", sample("brick", "stain", 1))])
    r = client.post(f"/api/v1/classes/{cls['id']}/images", files=again)
    assert r.status_code == 409 and "c.png" in error_of(r)["message"]
    assert client.delete(f"/api/v1/classes/{cls['id']}/images/{image_id}").status_code == 204
    assert client.delete(f"/api/v1/classes/{cls['id']}/images/{image_id}").status_code == 404
    assert client.get(f"/api/v1/classes/{cls['id']}").json()["image_count"] == 1
    assert client.delete(f"/api/v1/classes/{cls['id']}").status_code == 204
    r = client.get(f"/api/v1/classes/{cls['id']}")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    assert client.delete(f"/api/v1/classes/{cls['id']}").status_code == 404
    r = client.post(f"/api/v1/classes/{cls['id']}/images", files=as_files([("a.png", flat())]))
    assert r.status_code == 404


def test_enrolment_is_all_or_nothing(client: TestClient) -> None:
    grp = group()
    cid = client.post("/api/v1/classes", json={"name": "x", "group": grp}).json()["id"]
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    blobs_before = rt.blobs.all_digests()
    files = as_files([("good.png", sample("grass", "scratch", 11)),
                      ("bad.png", b"\x89PNG\r\n\x1a\ntruncated")])
    r = client.post(f"/api/v1/classes/{cid}/images", files=files)
    assert r.status_code == 422
    err = error_of(r)
    assert "bad.png" in err["message"] and err["code"] == "invalid_image"
    assert client.get(f"/api/v1/classes/{cid}").json()["image_count"] == 0
    assert rt.blobs.all_digests() == blobs_before


def test_classify_errors(client: TestClient) -> None:
    grp = group()
    one = as_files([("s.png", sample("brick", None, 3))])
    r = client.post("/api/v1/classify", params={"group": grp}, files=one)
    assert r.status_code == 409 and error_of(r)["code"] == "empty_group"
    enrol(client, grp, shots=2)
    r = client.post("/api/v1/classify", params={"group": grp, "method": "nope"}, files=one)
    assert r.status_code == 422 and "protonet" in error_of(r)["message"]
    r = client.post("/api/v1/classify", params={"group": grp, "top_k": 0}, files=one)
    assert r.status_code == 422
    r = client.post("/api/v1/classify", params={"group": grp})
    assert r.status_code == 422
    # top_k above FSDI_MAX_TOP_K is refused with the cap named, never cut silently
    r = client.post("/api/v1/classify", params={"group": grp, "top_k": 21}, files=one)
    assert r.status_code == 422 and "at most 20" in error_of(r)["message"]
    r = client.post("/api/v1/classify", params={"group": grp, "top_k": 20}, files=one)
    assert r.status_code == 200
    spec = client.get("/openapi.json").json()["paths"]["/api/v1/classify"]["post"]
    top_k = next(p for p in spec["parameters"] if p["name"] == "top_k")
    assert "FSDI_MAX_TOP_K" in top_k["description"]


@pytest.mark.parametrize("name", ["", " ", "   ", "\t\n"])
def test_a_class_name_of_only_whitespace_is_refused(client: TestClient, name: str) -> None:
    r = client.post("/api/v1/classes", json={"name": name, "group": group()})
    assert r.status_code == 422, r.text


def test_class_names_lose_surrounding_blanks(client: TestClient) -> None:
    grp = group()
    r = client.post("/api/v1/classes", json={"name": "  scratch ", "group": grp})
    assert r.status_code == 201 and r.json()["name"] == "scratch"
    r = client.post("/api/v1/classes", json={"name": "scratch", "group": grp})
    assert r.status_code == 409


def test_limits(client: TestClient) -> None:
    grp = group()
    enrol(client, grp, shots=1)
    many = as_files([(f"{i}.png", flat((i, i, i), 32)) for i in range(13)])
    r = client.post("/api/v1/classify", params={"group": grp}, files=many)
    assert r.status_code == 413 and error_of(r)["code"] == "too_many_files"
    big = np.random.default_rng(0).integers(0, 255, (1100, 1100, 3), dtype=np.uint8)
    from PIL import Image

    from bench.imagegen import png_bytes
    r = client.post("/api/v1/classify", params={"group": grp},
                    files=as_files([("big.png", png_bytes(Image.fromarray(big)))]))
    assert r.status_code == 413 and error_of(r)["code"] in {"file_too_large", "too_large"}
    huge = png_bytes(Image.new("L", (2100, 2100)))
    r = client.post("/api/v1/classify", params={"group": grp}, files=as_files([("h.png", huge)]))
    assert r.status_code == 413 and error_of(r)["code"] == "too_many_pixels"
    body = b"x" * (5 * 1024 * 1024)
    r = client.post("/api/v1/classify", params={"group": grp},
                    files=as_files([("a.png", body)]))
    assert r.status_code == 413 and error_of(r)["code"] == "too_large"


def test_auth_and_roles(client: TestClient) -> None:
    grp = group()
    ids = enrol(client, grp, shots=1)
    anon = {"Authorization": ""}
    r = client.get("/api/v1/classes", headers=anon)
    assert r.status_code == 401 and error_of(r)["code"] == "unauthorized"
    r = client.get("/api/v1/classes", headers={"Authorization": "Bearer wrong-key"})
    assert r.status_code == 401
    machine, operator = new_key(client, "machine"), new_key(client, "operator")
    m = {"Authorization": f"Bearer {machine}"}
    o = {"Authorization": f"Bearer {operator}"}
    assert client.post("/api/v1/classes", json={"name": "n", "group": grp}, headers=m
                       ).status_code == 403
    assert client.post("/api/v1/classes", json={"name": "n", "group": grp}, headers=o
                       ).status_code == 403
    assert client.get("/api/v1/classes", headers=m).status_code == 403
    assert client.get("/api/v1/classes", headers=o).status_code == 200
    assert client.delete(f"/api/v1/classes/{ids['gravel-hole']}", headers=o).status_code == 403
    assert client.get("/api/v1/keys", headers=o).status_code == 403
    q = as_files([("q.png", sample("grass", "stain", 9))])
    res = client.post("/api/v1/classify", params={"group": grp}, files=q, headers=m)
    assert res.status_code == 200
    rid = res.json()["results"][0]["id"]
    assert client.post("/api/v1/feedback", json={"result_id": rid, "correct": True},
                       headers=m).status_code == 403
    r = client.post("/api/v1/feedback", json={"result_id": rid, "correct": False,
                                              "class_id": ids["grass-stain"]}, headers=o)
    assert r.status_code == 201 and r.json()["result_id"] == rid
    assert client.post("/api/v1/feedback", json={"result_id": rid, "correct": False},
                       headers=o).status_code == 422
    assert client.post("/api/v1/feedback", json={"result_id": 10**9, "correct": True},
                       headers=o).status_code == 404


def test_keys_are_shown_once_and_revocable(client: TestClient) -> None:
    r = client.post("/api/v1/keys", json={"role": "operator", "label": "line 4"})
    assert r.status_code == 201
    created = r.json()
    assert created["key"].startswith("fsdi_") and created["label"] == "line 4"
    listed = client.get("/api/v1/keys").json()["items"]
    mine = [k for k in listed if k["id"] == created["id"]]
    assert mine and "key" not in mine[0] and created["key"] not in r.text.replace(
        created["key"], "", 1)
    h = {"Authorization": f"Bearer {created['key']}"}
    assert client.get("/api/v1/classes", headers=h).status_code == 200
    assert client.delete(f"/api/v1/keys/{created['id']}").status_code == 204
    assert client.get("/api/v1/classes", headers=h).status_code == 401
    assert client.delete("/api/v1/keys/999999").status_code == 404
    assert client.post("/api/v1/keys", json={"role": "root"}).status_code == 422


def test_a_replica_sync_read_never_hides_a_class_enrolled_meanwhile(
        quiet_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync reads a group, a local enrolment publishes a new class, then the sync
    would publish what it read: the new class must stay, and the sync read again later."""
    client = quiet_client  # no background sync publishing between the steps
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    grp = group()
    enrol(client, grp, shots=2)
    read = repo.embeddings_for
    me = threading.current_thread()

    def read_then_enrol(*args: Any, **kw: Any) -> Any:
        rows = read(*args, **kw)
        if threading.current_thread() is me:  # not the other app's background sync
            monkeypatch.setattr(repo, "embeddings_for", read)
            cid = client.post("/api/v1/classes", json={"name": "late", "group": grp}).json()
            r = client.post(f"/api/v1/classes/{cid['id']}/images",
                            files=as_files([("l.png", sample("grass", "hole", 5))]))
            assert r.status_code == 201
        return rows

    monkeypatch.setattr(repo, "embeddings_for", read_then_enrol)
    with rt.sessions() as s:
        published = rt.cache.refresh_group(s, grp)
    assert "late" in [e.name for e in rt.cache.snapshot(grp).entries]
    assert published is False  # its read predates "late": the next sync reads again
    with rt.sessions() as s:
        assert rt.cache.refresh_group(s, grp) is True
    assert len(rt.cache.snapshot(grp).entries) == len(CLASSES) + 1


def test_a_key_revoked_elsewhere_is_refused_after_the_next_sync(
        quiet_client: TestClient) -> None:
    """Another replica (or `fsdi keys revoke`) revokes in the database; this replica's
    cache of verified keys must not outlive its next sync."""
    client = quiet_client  # a background sync would also clear the cache on the new key
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    key = new_key(client, "operator")
    h = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/v1/classes", headers=h).status_code == 200
    assert rt.key_cache.get(hash_key(key)) is not None  # verified once, then from memory
    with rt.sessions.begin() as s:
        row = repo.key_by_hash(s, hash_key(key))
        assert row is not None
        repo.revoke_key(s, row)
    rt.sync_once()
    assert client.get("/api/v1/classes", headers=h).status_code == 401


def test_key_cache_expires_and_never_keeps_a_check_that_raced_a_revocation() -> None:
    who = Principal("machine", 7, "key:7")
    cache = KeyCache(ttl_s=0.2)
    cache.put("d", who, cache.generation)
    assert cache.get("d") == who
    time.sleep(0.25)
    assert cache.get("d") is None  # trusted for ttl_s at most
    before = cache.generation  # a check starts, reads the database ...
    cache.clear()  # ... a revocation commits meanwhile
    cache.put("d", who, before)
    assert cache.get("d") is None
    cache.observe((3, 0, 3))
    cache.put("d", who, cache.generation)
    cache.observe((3, 0, 3))  # nothing changed
    assert cache.get("d") == who
    cache.observe((3, 1, 3))  # a key was revoked somewhere
    assert cache.get("d") is None
    off = KeyCache(ttl_s=0)
    off.put("d", who, off.generation)
    assert off.get("d") is None


@pytest.mark.parametrize("method", ["protonet", "siamese", "relationnet", "maml", "fomaml",
                                    "reptile", "metasgd"])
def test_every_method_serves(client: TestClient, method: str) -> None:
    grp = group()
    enrol(client, grp, shots=3)
    one = client.post("/api/v1/classes", json={"name": "one-shot", "group": grp}).json()["id"]
    client.post(f"/api/v1/classes/{one}/images",
                files=as_files([("o.png", sample("brick", "hole", 4242))]))
    q = [(f"{n}.png", sample(s, d, 7000 + i)) for i, (n, (s, d)) in enumerate(CLASSES.items())]
    r = client.post("/api/v1/classify", params={"group": grp, "method": method, "top_k": 4},
                    files=as_files(q))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["method"] == method
    # The 1-shot class shares brick-scratch's surface, so judge the top two.
    hits = [n in {t["label"] for t in x["top_k"][:2]}
            for x, n in zip(body["results"], CLASSES, strict=True)]
    assert sum(hits) >= 2, body  # chance is 1/2 per image
    for x in body["results"]:
        assert len(x["top_k"]) == 4 and all(0 <= t["score"] <= 1 for t in x["top_k"])
    solo = group()  # a group with a single class
    cid = client.post("/api/v1/classes", json={"name": "only", "group": solo}).json()["id"]
    client.post(f"/api/v1/classes/{cid}/images",
                files=as_files([("a.png", sample("grass", "stain", 1))]))
    r = client.post("/api/v1/classify", params={"group": solo, "method": method},
                    files=as_files([("q.png", sample("grass", "stain", 2))]))
    assert r.status_code == 200 and r.json()["results"][0]["top_k"][0]["score"] == 1.0


def test_console_endpoints(client: TestClient) -> None:
    grp = group()
    ids = enrol(client, grp, shots=1)
    assert client.get("/").status_code == 200 and "FSDI" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/api/v1/me").json() == {"role": "admin", "key_id": None, "groups": None}
    m = {"Authorization": f"Bearer {new_key(client, 'machine')}"}
    assert client.get("/api/v1/me", headers=m).json()["role"] == "machine"
    groups = {g["name"]: g["class_count"] for g in client.get("/api/v1/groups").json()["items"]}
    assert groups[grp] == 3
    assert client.get("/api/v1/groups", headers=m).status_code == 403
    image_id = client.get(f"/api/v1/classes/{ids['grass-stain']}/images").json()[0]["id"]
    r = client.get(f"/api/v1/images/{image_id}", params={"size": 64})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    import io

    from PIL import Image
    assert max(Image.open(io.BytesIO(r.content)).size) == 64
    assert client.get(f"/api/v1/images/{image_id}", headers=m).status_code == 403
    assert client.get(f"/api/v1/images/{image_id}", params={"size": 5000}).status_code == 422
    assert client.get("/api/v1/images/999999").status_code == 404
    assert client.get(f"/api/v1/images/{image_id}", headers={"Authorization": ""}
                      ).status_code == 401


def test_enrolment_report(client: TestClient) -> None:
    grp = group()
    enrol(client, grp, shots=4)
    twin = client.post("/api/v1/classes", json={"name": "brick-scratch-2", "group": grp}).json()
    r = client.post(f"/api/v1/classes/{twin['id']}/images", files=as_files(
        [(f"{j}.png", sample("brick", "scratch", 40 + j)) for j in range(4)]))
    rep = r.json()["report"]
    assert rep["group"] == grp and rep["loo_evaluated"] == 16
    assert {rep["closest_pair"]["a"], rep["closest_pair"]["b"]} == {"brick-scratch",
                                                                   "brick-scratch-2"}
    assert rep["warnings"] and any("brick-scratch" in w for w in rep["warnings"])
    got = client.get(f"/api/v1/groups/{grp}/report").json()
    by = {c["label"]: c for c in got["classes"]}
    assert by["grass-stain"]["loo_recall"] == 1.0 and by["grass-stain"]["warning"] is None
    # the scores rest on the group's own 16 held-out images, not the fixed temperature
    sc = got["scores"]
    assert sc["fitted"] and sc["calibrated_on"] == 16 and sc["warning"] is None
    assert sc["temperature"] != 0.05
    assert client.get("/api/v1/groups/nope-none/report").status_code == 404


def test_scores_report_says_when_nothing_can_be_held_out(client: TestClient) -> None:
    grp = group()
    enrol(client, grp, shots=1)
    sc = client.get(f"/api/v1/groups/{grp}/report").json()["scores"]
    # nothing held out: the prior's temperature, from how far apart the classes lie
    assert not sc["fitted"] and sc["calibrated_on"] == 0 and sc["temperature"] != 0.05
    assert "how far apart" in sc["warning"] and "roughly calibrated" in sc["warning"]
    one = group()
    c = client.post("/api/v1/classes", json={"name": "only", "group": one}).json()
    client.post(f"/api/v1/classes/{c['id']}/images", files=as_files(
        [(f"{j}.png", sample("brick", "scratch", 60 + j)) for j in range(3)]))
    rep = client.get(f"/api/v1/groups/{one}/report").json()
    assert "one class" in rep["scores"]["warning"]
    assert any(w.startswith("scores: one class") for w in rep["warnings"])


def read_pack(rt: Runtime, name: str) -> bytes:
    """A query-image pack's bytes, on whichever store the app uses."""
    if isinstance(rt.packs, PackStore):
        return (rt.packs.root / name).read_bytes()
    data = rt.packs.objects.get(PACKS + name)  # type: ignore[attr-defined]
    assert data is not None
    return bytes(data)


def write_pack(rt: Runtime, name: str, data: bytes) -> None:
    """Replace a pack's bytes (a crash's damage), on whichever store the app uses."""
    if isinstance(rt.packs, PackStore):
        (rt.packs.root / name).write_bytes(data)
    else:
        rt.packs.objects.put(PACKS + name, data)  # type: ignore[attr-defined]


def test_kept_query_images_go_to_packs_and_a_lost_one_is_not_promoted(
        client: TestClient) -> None:
    """A kept image is appended to a pack (no file of its own); promotion reads it back
    only if its bytes still hash to the result's sha256: a torn or lost tail is 409."""
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    grp = group()
    ids = enrol(client, grp, shots=2)
    imgs = [("p1.png", sample("gravel", "hole", 8101)), ("p2.png", sample("grass", "stain", 8102)),
            ("p3.png", sample("brick", "scratch", 8103))]
    res = client.post("/api/v1/classify", params={"group": grp, "threshold": 4},
                      files=as_files(imgs)).json()["results"]
    assert rt.settings.keep_query_images
    refs = []
    with rt.sessions() as s:
        for r, (_, data) in zip(res, imgs, strict=True):
            row = repo.get_result(s, r["id"])
            assert row is not None and row.image_ref and rt.packs.read(row.image_ref) == data
            assert not rt.blobs.exists(row.sha256)  # no file per classified image
            refs.append(row.image_ref)
    fb = [client.post("/api/v1/feedback", json={
        "result_id": r["id"], "correct": False, "class_id": ids["brick-scratch"]}).json()["id"]
        for r in res]
    name, offset, length = refs[1].split(":")
    start, end = int(offset), int(offset) + int(length)
    pack = bytearray(read_pack(rt, name))  # flip the middle image's bytes: lost in a crash
    pack[start:end] = bytes(b ^ 0xFF for b in pack[start:end])
    write_pack(rt, name, bytes(pack))
    lost = client.post(f"/api/v1/feedback/{fb[1]}/promote")
    assert lost.status_code == 409 and lost.json()["error"]["code"] == "image_not_kept"
    # and a torn tail: the last image only half written
    write_pack(rt, name, bytes(pack[:int(refs[2].split(":")[1]) + 10]))
    torn = client.post(f"/api/v1/feedback/{fb[2]}/promote")
    assert torn.status_code == 409 and torn.json()["error"]["code"] == "image_not_kept"
    ok = client.post(f"/api/v1/feedback/{fb[0]}/promote")
    assert ok.status_code == 201, ok.text
    assert ok.json()["images"][0]["original_name"] == "p1.png"


def test_feedback_stats_and_promotion(client: TestClient) -> None:
    grp = group()
    ids = enrol(client, grp, shots=2)
    q = as_files([("q1.png", sample("gravel", "hole", 8001)),
                  ("q2.png", sample("grass", "stain", 8002))])
    res = client.post("/api/v1/classify", params={"group": grp, "threshold": 4},
                      files=q).json()["results"]
    first = client.post("/api/v1/feedback", json={"result_id": res[0]["id"], "correct": True})
    wrong = client.post("/api/v1/feedback", json={
        "result_id": res[1]["id"], "correct": False, "class_id": ids["brick-scratch"]})
    assert first.status_code == wrong.status_code == 201
    st = client.get("/api/v1/feedback/stats", params={"group": grp}).json()
    assert (st["feedback"], st["correct"], st["wrong"]) == (2, 1, 1)
    cell = next(c for c in st["confusion"] if c["true_label"] == "brick-scratch")
    assert cell["predicted_class_id"] == res[1]["class_id"] and cell["count"] == 1
    op = {"Authorization": f"Bearer {new_key(client, 'operator')}"}
    assert client.post(f"/api/v1/feedback/{wrong.json()['id']}/promote", headers=op
                       ).status_code == 403
    r = client.post(f"/api/v1/feedback/{wrong.json()['id']}/promote")
    assert r.status_code == 201, r.text
    assert r.json()["class"]["id"] == ids["brick-scratch"] and r.json()["class"]["image_count"] == 3
    assert r.json()["images"][0]["original_name"] == "q2.png"
    again = client.post(f"/api/v1/feedback/{wrong.json()['id']}/promote")
    assert again.status_code == 409  # already in that class's support set
    assert client.post("/api/v1/feedback/999999/promote").status_code == 404


def metric(client: TestClient, name: str) -> float:
    line = next(x for x in client.get("/metrics").text.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


def test_a_disk_that_refuses_query_images_does_not_stop_classification(
        client: TestClient, tmp_path: Path) -> None:
    """Keeping is best effort: the results are still stored and answered; the images are
    counted as not kept, and their promotion is a clear 409."""
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    grp = group()
    ids = enrol(client, grp, shots=2)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the packs' folder should be")
    kept, rt.packs = rt.packs, PackStore(blocked, retry_s=60)
    before = metric(client, "fsdi_query_images_not_kept_total")
    try:
        r = client.post("/api/v1/classify", params={"group": grp, "threshold": 4},
                        files=as_files([("a.png", sample("gravel", "hole", 8201)),
                                        ("b.png", sample("grass", "stain", 8202))]))
        assert r.status_code == 200, r.text
        res = r.json()["results"]
        assert metric(client, "fsdi_query_images_not_kept_total") == before + 2
    finally:
        rt.packs = kept
    with rt.sessions() as s:
        rows = [repo.get_result(s, x["id"]) for x in res]
        assert all(row is not None and row.image_ref is None for row in rows)
    fb = client.post("/api/v1/feedback", json={"result_id": res[0]["id"], "correct": False,
                                                "class_id": ids["brick-scratch"]}).json()
    r = client.post(f"/api/v1/feedback/{fb['id']}/promote")
    assert r.status_code == 409 and r.json()["error"]["code"] == "image_not_kept"


def test_query_image_packs_past_retention_are_removed(client: TestClient,
                                                      tmp_path: Path) -> None:
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    assert rt.settings.query_image_retention_days == 30

    def pack(age_days: float) -> str:
        """A pack as another process (or an earlier run) left it, last written then."""
        t = time.time() - age_days * 86_400
        if isinstance(rt.packs, PackStore):
            other = PackStore(rt.packs.root)
            ref = other.append(b"old image")
            other.close()
            os.utime(rt.packs.root / ref.split(":")[0], (t, t))
            return ref
        name = f"{int(t * 1e9):019d}-{secrets.token_hex(6)}.pack"  # its age is in its name
        write_pack(rt, name, b"old image")
        return f"{name}:0:9"

    old, young = pack(31), pack(29)
    assert rt.prune_query_images() == 1
    assert rt.packs.read(old) is None and rt.packs.read(young) == b"old image"
    old = pack(45)
    with pytest.raises(TimeoutError):  # the hourly loop, here every 10 ms
        asyncio.run(asyncio.wait_for(housekeeping_loop(rt, interval_s=0.01), 0.5))
    assert rt.packs.read(old) is None and rt.packs.read(young) == b"old image"
    # At start-up too; and 0 keeps everything.
    data = tmp_path / "data"
    for days, survives in ((30, False), (0, True)):
        left = PackStore(data / "query-images")
        ref = left.append(b"x")
        left.close()
        os.utime(left.root / ref.split(":")[0], (0, 0))
        with serving(make_settings(data, f"sqlite:///{tmp_path / 'fsdi.db'}",
                                   rt.settings.resolved_model_cache,
                                   query_image_retention_days=days)) as c:
            kept = c.app.state.runtime.packs.read(ref)  # type: ignore[attr-defined]
        assert (kept == b"x") is survives


def test_evaluation_and_classify_decide_identically(client: TestClient) -> None:
    """`fsdi evaluate`'s path (models.calibration builds a GroupIndex from the stored
    vectors and asks decide) gives /classify's answers on the same embeddings."""
    from models.openset import episode_index, served_decisions
    from models.preprocess import load_for_backbone

    grp = group()
    ids = enrol(client, grp, shots=3)
    queries = [sample(s, d, 7000 + i) for i, (s, d) in enumerate(CLASSES.values())]
    queries += [flat((200, 10, 10)), sample("brick", None, 4242)]
    r = client.post("/api/v1/classify", params={"group": grp, "top_k": 1},
                    files=as_files([(f"q{i}.png", b) for i, b in enumerate(queries)]))
    served = r.json()["results"]
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    order = sorted(ids.values())  # the cache orders a group's classes by id
    with rt.sessions() as s:
        rows = repo.embeddings_for(s, rt.backbone.version, order)
    support = np.stack([row.vector for row in rows]).astype(np.float32)
    labels = np.array([order.index(row.class_id) for row in rows])
    bb = rt.backbone
    index = episode_index(support, labels, len(order), rt.settings.serving_config(),
                          bb.metric_dim)
    x = np.stack([load_for_backbone(b, bb.preprocess, 10**8) for b in queries])
    best, unknown = served_decisions(index, rt.embedder.embed(x))
    assert [x["unknown"] for x in served] == unknown.tolist()
    assert [x["top_k"][0]["class_id"] for x in served] == [order[b] for b in best]
    assert any(unknown) and not all(unknown)


def test_openapi_operation_ids_read_as_a_client_wants_them(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert {"classify", "create_class", "add_images", "create_key", "revoke_key",
            "create_feedback", "promote_feedback", "list_groups"} <= set(ids)
    assert not [i for i in ids if "api_v1" in i or i.endswith(("_post", "_get", "_delete"))]
