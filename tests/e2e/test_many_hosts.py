"""Replicas as on different hosts: one PostgreSQL, one S3 server (SeaweedFS), a data
directory each (no shared disk). Whatever went through one replica is served by the
other, and a plant that started on one host's disk moves its images to object storage."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.imagegen import sample
from bench.seaweed import SECRET_KEY, Seaweed, credentials_env
from bench.server import Server, running
from tests.conftest import S3_ENDPOINT, fresh_pg_database, s3_prefix_url

KEY = "many-hosts-admin-key-0123456789"
H = {"Authorization": f"Bearer {KEY}"}

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from fresh_pg_database()


def host_env(pg_url: str, model_cache: Path, blob_url: str | None) -> dict[str, str]:
    env = {"FSDI_ADMIN_KEY": KEY, "FSDI_DATABASE_URL": pg_url,
           "FSDI_MODEL_CACHE_DIR": str(model_cache), "FSDI_SYNC_INTERVAL_MS": "100"}
    if blob_url:
        env |= {"FSDI_BLOB_URL": blob_url, "FSDI_S3_ENDPOINT_URL": S3_ENDPOINT,
                **credentials_env()}
    return env


@pytest.fixture
def two_hosts(tmp_path: Path, model_cache: Path, pg_url: str) -> Iterator[tuple[Server, Server]]:
    env = host_env(pg_url, model_cache, s3_prefix_url())
    with running(Server(tmp_path / "host-a" / "data", env),
                 Server(tmp_path / "host-b" / "data", env)) as (a, b):
        yield a, b


def same_picture(jpeg: bytes, png: bytes) -> bool:
    """The served JPEG shows the classified PNG (same size, pixels within JPEG's loss)."""
    a = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)
    b = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    return a.shape == b.shape and float(np.abs(a - b).mean()) < 8.0


def enrol_line(url: str, group: str) -> dict[str, list[int]]:
    """A good class and two defect classes; returns each class's support image ids."""
    made: dict[str, list[int]] = {}
    spec = {"good": ("brick", None, "good"), "scratch": ("brick", "scratch", "defect"),
            "stain": ("brick", "stain", "defect")}
    for i, (name, (surf, defect, kind)) in enumerate(spec.items()):
        cid = httpx.post(url + "/api/v1/classes", headers=H, timeout=30,
                         json={"name": name, "group": group, "kind": kind}).json()["id"]
        n = 6 if kind == "good" else 3
        r = httpx.post(f"{url}/api/v1/classes/{cid}/images", headers=H, timeout=120, files=[
            ("files", (f"{name}{j}.png", sample(surf, defect, 500 * i + j), "image/png"))
            for j in range(n)])
        assert r.status_code == 201, r.text
        made[name] = [img["id"] for img in r.json()["images"]]
        made[f"{name}-class"] = [cid]
    return made


def cross_host_operations(a: Server, b: Server, group: str) -> dict[str, bool]:
    """What went through `a`, asked of `b`: the six operations of issue #30."""
    ids = enrol_line(a.url, group)
    query = sample("brick", "scratch", 9999)
    r = httpx.post(a.url + "/api/v1/classify", params={"group": group, "heatmap": "true"},
                   files=[("files", ("q.png", query, "image/png"))], headers=H, timeout=60)
    assert r.status_code == 200, r.text
    rid = r.json()["results"][0]["id"]
    ok: dict[str, bool] = {}
    listed = httpx.get(b.url + "/api/v1/results", params={"group": group}, headers=H).json()
    ok["listed"] = rid in [x["id"] for x in listed["items"]]
    img = httpx.get(f"{b.url}/api/v1/results/{rid}/image", params={"size": 1024}, headers=H)
    ok["image"] = img.status_code == 200 and same_picture(img.content, query)
    heat = httpx.get(f"{b.url}/api/v1/results/{rid}/heatmap", headers=H, timeout=60)
    ok["heatmap"] = heat.status_code == 200 and heat.content[:4] == b"\x89PNG"
    fb = httpx.post(b.url + "/api/v1/feedback", headers=H, json={
        "result_id": rid, "correct": False, "class_id": ids["stain-class"][0]})
    ok["feedback"] = fb.status_code == 201
    promoted = httpx.post(f"{b.url}/api/v1/feedback/{fb.json()['id']}/promote", headers=H,
                          timeout=60)
    ok["promote"] = promoted.status_code == 201
    support = [httpx.get(f"{b.url}/api/v1/images/{i}", headers=H)
               for i in ids["good"] + ids["scratch"]]
    ok["support images"] = all(s.status_code == 200 for s in support)
    return ok


def test_each_replica_serves_what_went_through_the_other(two_hosts: tuple[Server, Server]
                                                         ) -> None:
    a, b = two_hosts
    for x, y, group in ((a, b, "line-ab"), (b, a, "line-ba")):  # both orders
        ok = cross_host_operations(x, y, group)
        assert all(ok.values()), f"{group}: {ok}"


def test_a_plant_moves_from_one_host_to_many_without_re_enrolling(
        tmp_path: Path, model_cache: Path, pg_url: str) -> None:
    """One host on its disk -> `fsdi blobs migrate` while it serves -> again after the
    last writes -> two hosts on the object store serve everything the first one took."""
    one = Server(tmp_path / "one" / "data", host_env(pg_url, model_cache, None)).start()
    try:
        ids = enrol_line(one.url, "line")
        queries = [sample("brick", "scratch", 7000 + i) for i in range(3)]
        rids = [httpx.post(one.url + "/api/v1/classify", params={"group": "line"}, headers=H,
                           files=[("files", ("q.png", q, "image/png"))], timeout=60
                           ).json()["results"][0]["id"] for q in queries]
        blob_url = s3_prefix_url()
        env = {**os.environ, "FSDI_DATA_DIR": str(one.data_dir),
               "FSDI_S3_ENDPOINT_URL": S3_ENDPOINT, **credentials_env()}
        migrate = [sys.executable, "-m", "app.cli", "blobs", "migrate", "--to", blob_url]
        first = subprocess.run(migrate, env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        # Written after the first pass: the second pass copies only that.
        late = sample("brick", "stain", 7100)
        rids.append(httpx.post(one.url + "/api/v1/classify", params={"group": "line"},
                               headers=H, files=[("files", ("late.png", late, "image/png"))],
                               timeout=60).json()["results"][0]["id"])
        queries.append(late)
    finally:
        one.stop()
    second = subprocess.run(migrate, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "copied 1 object(s)" in second.stdout, second.stdout  # the grown pack only
    assert "already there" in second.stdout
    env_many = host_env(pg_url, model_cache, blob_url)
    hosts = [Server(tmp_path / f"host-{h}" / "data", env_many).start() for h in "ab"]
    try:
        for h in hosts:
            for rid, q in zip(rids, queries, strict=True):
                r = httpx.get(f"{h.url}/api/v1/results/{rid}/image", params={"size": 1024},
                              headers=H)
                assert r.status_code == 200 and same_picture(r.content, q)
            for i in ids["good"] + ids["scratch"] + ids["stain"]:
                assert httpx.get(f"{h.url}/api/v1/images/{i}", headers=H).status_code == 200
            r = httpx.post(h.url + "/api/v1/classify", params={"group": "line"}, headers=H,
                           files=[("files", ("q.png", queries[0], "image/png"))], timeout=60)
            assert r.json()["results"][0]["verdict"] == "defect"
    finally:
        for h in hosts:
            h.stop()


def metric_value(url: str, line_start: str) -> float:
    """The first sample whose line starts with `line_start`; 0 when there is none yet."""
    text = httpx.get(url + "/metrics").text
    return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line_start)),
                0.0)


def wait_readyz(url: str, status: str, within_s: float = 30) -> dict[str, Any]:
    """/readyz until it says `status`; each answer comes at once (never waits on a hung
    dependency: a balancer's health check would time out and take the replica out)."""
    deadline = time.monotonic() + within_s
    while True:
        t0 = time.monotonic()
        r = httpx.get(url + "/readyz", timeout=30)
        assert time.monotonic() - t0 < 0.5, "/readyz waited on a dependency"
        assert r.status_code == 200, r.text
        if r.json()["status"] == status:
            return dict(r.json())
        assert time.monotonic() < deadline, r.json()
        time.sleep(0.2)


def test_an_object_store_outage_stops_enrolment_cleanly_not_classification(
        tmp_path: Path, model_cache: Path, pg_url: str) -> None:
    """Store down (killed) or hung (paused): enrolment answers 503 and stores nothing,
    classification goes on with its images counted as not kept, /readyz and a metric name
    the store; when it is back everything resumes without a restart. No secret is logged."""
    s3_prefix_url()
    store = Seaweed(tmp_path / "seaweed").start()
    env = {**host_env(pg_url, model_cache, "s3://fsdi/line"),
           "FSDI_S3_ENDPOINT_URL": store.endpoint}
    srv = Server(tmp_path / "host" / "data", env).start()
    try:
        ids = enrol_line(srv.url, "line")
        cid = ids["scratch-class"][0]

        def enrol(seed: int) -> httpx.Response:
            return httpx.post(f"{srv.url}/api/v1/classes/{cid}/images", headers=H, timeout=60,
                              files=[("files", (f"{seed}.png", sample("brick", "scratch", seed),
                                                "image/png"))])

        def classify(seed: int) -> httpx.Response:
            return httpx.post(srv.url + "/api/v1/classify", params={"group": "line"},
                              headers=H, timeout=60, files=[
                                  ("files", ("q.png", sample("brick", None, seed), "image/png"))])

        count = len(httpx.get(f"{srv.url}/api/v1/classes/{cid}/images", headers=H).json())
        outages: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
            "killed": (store.kill, store.start), "hung": (store.pause, store.resume)}
        for outage, (down, up) in outages.items():
            down()
            not_kept = metric_value(srv.url, "fsdi_query_images_not_kept_total")
            t0 = time.monotonic()
            r = enrol(100 + len(outage))
            assert r.status_code == 503, (outage, r.text)
            assert r.json()["error"]["code"] == "blob_store_unavailable"
            assert time.monotonic() - t0 < 30, outage
            c = classify(200 + len(outage))
            assert c.status_code == 200, (outage, c.text)
            assert metric_value(srv.url, "fsdi_query_images_not_kept_total") == not_kept + 1
            ready = wait_readyz(srv.url, "degraded")  # rechecked in the background
            assert ready["dependencies"]["blob_store"].startswith("down")
            assert metric_value(srv.url, 'fsdi_dependency_up{dependency="blob_store"}') == 0
            listed = httpx.get(f"{srv.url}/api/v1/classes/{cid}/images", headers=H).json()
            assert len(listed) == count, "a refused enrolment left a row"
            image = httpx.get(f"{srv.url}/api/v1/images/{listed[0]['id']}", headers=H,
                              timeout=60)
            assert image.status_code == 503, image.text  # not a 404: the bytes still exist
            assert image.json()["error"]["code"] == "blob_store_unavailable"
            up()
            deadline = time.monotonic() + 30
            while (r := enrol(300 + len(outage))).status_code != 201:  # no restart
                assert time.monotonic() < deadline, r.text
                time.sleep(0.5)
            count += 1
            assert httpx.get(f"{srv.url}/api/v1/images/{r.json()['images'][0]['id']}",
                             headers=H).status_code == 200
            wait_readyz(srv.url, "ready")
        assert SECRET_KEY not in srv.log.read_text()
    finally:
        srv.stop()
        store.stop()


def test_a_change_reaches_the_other_replica_by_notification_not_only_by_poll(
        tmp_path: Path, model_cache: Path, pg_url: str) -> None:
    """With the poll a minute apart, replica B still holds A's new class within seconds:
    PostgreSQL told it (LISTEN/NOTIFY). The lag itself is measured by bench/coherence.py."""
    env = {**host_env(pg_url, model_cache, None), "FSDI_SYNC_INTERVAL_MS": "60000"}
    a = Server(tmp_path / "a" / "data", env).start()
    b = Server(tmp_path / "b" / "data", env).start()
    try:
        before = metric_value(b.url, "fsdi_classes_cached ")
        enrol_line(a.url, "line")
        deadline = time.monotonic() + 10
        while metric_value(b.url, "fsdi_classes_cached ") < before + 3:
            assert time.monotonic() < deadline, "replica B never heard of A's classes"
            time.sleep(0.05)
    finally:
        a.stop()
        b.stop()
