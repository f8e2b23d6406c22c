"""Changing the backbone: the service refuses to mix versions until `fsdi reembed` ran."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from app.services.reembed import reembed
from bench.imagegen import CLASSES, sample
from tests.app.conftest import as_files, make_settings, serving


def test_backbone_change_requires_reembed(tmp_path: Path, model_cache: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    old = make_settings(tmp_path, url, model_cache, backbone="efficientnet_lite0")
    with serving(old) as c:
        for ci, (name, (surf, defect)) in enumerate(CLASSES.items()):
            cid = c.post("/api/v1/classes", json={"name": name}).json()["id"]
            c.post(f"/api/v1/classes/{cid}/images", files=as_files(
                [(f"{j}.png", sample(surf, defect, 10 * ci + j)) for j in range(3)]))

    new = make_settings(tmp_path, url, model_cache)  # the default: fsdi_lite0_meta
    with TestClient(create_app(new)) as c2:
        deadline = time.monotonic() + 60
        while "reembed" not in c2.get("/readyz").text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = c2.get("/readyz")
        assert r.status_code == 503 and "9 support image(s)" in r.json()["error"]["message"]

    # interrupted (one batch per pass): 4 images get both from one network pass, the next
    # 4 their patch features only; 5 still lack their embedding
    assert reembed(new, batch=4, max_batches=1, progress=False) == (8, 5)
    assert reembed(new, batch=4, prune=True, progress=False) == (5, 0)  # resumed
    with serving(new) as c3:
        q = [(f"{n}.png", sample(s, d, 500 + i)) for i, (n, (s, d)) in enumerate(CLASSES.items())]
        res = c3.post("/api/v1/classify", files=as_files(q)).json()
        assert res["model"]["version"].startswith("fsdi_lite0_meta@")
        assert [r["top_k"][0]["label"] for r in res["results"]] == list(CLASSES)
    # pruned: the old version's rows are gone
    from sqlalchemy import create_engine, text
    with create_engine(url).connect() as conn:
        versions = {r[0] for r in conn.execute(text("SELECT DISTINCT model_version FROM "
                                                     "embeddings"))}
    assert len(versions) == 1 and next(iter(versions)).startswith("fsdi_lite0_meta@")


def test_good_parts_are_rebuilt_for_a_new_backbone(tmp_path: Path, model_cache: Path) -> None:
    """Good images' patch features are versioned like embeddings: after a backbone change
    the service refuses to start until `fsdi reembed` has computed both, and then answers
    with verdicts again, from the new version only."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    old = make_settings(tmp_path, url, model_cache, backbone="efficientnet_lite0")
    with serving(old) as c:
        cid = c.post("/api/v1/classes", json={"name": "ok", "kind": "good"}).json()["id"]
        c.post(f"/api/v1/classes/{cid}/images", files=as_files(
            [(f"{j}.png", sample("brick", None, 40 + j)) for j in range(6)]))
        bad = c.post("/api/v1/classes", json={"name": "scratch"}).json()["id"]
        c.post(f"/api/v1/classes/{bad}/images", files=as_files(
            [(f"s{j}.png", sample("brick", "scratch", 60 + j)) for j in range(2)]))

    new = make_settings(tmp_path, url, model_cache)
    with TestClient(create_app(new)) as c2:
        deadline = time.monotonic() + 60
        while "reembed" not in c2.get("/readyz").text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        msg = c2.get("/readyz").json()["error"]["message"]
        assert "8 support image(s) have no embedding" in msg
        assert "6 good image(s) have no patch features" in msg

    # one pass per image gives both; the defect images get patch features too
    assert reembed(new, batch=4, prune=True, progress=False) == (8, 0)
    with serving(new) as c3:
        res = c3.post("/api/v1/classify", files=as_files(
            [("g.png", sample("brick", None, 90)), ("h.png", sample("brick", "hole", 91))])
        ).json()["results"]
        assert [r["verdict"] for r in res] == ["ok", "defect"]
    from sqlalchemy import create_engine, text
    with create_engine(url).connect() as conn:
        versions = {r[0] for r in conn.execute(text("SELECT DISTINCT model_version FROM "
                                                     "patch_features"))}
    assert len(versions) == 1 and next(iter(versions)).startswith("fsdi_lite0_meta@")
