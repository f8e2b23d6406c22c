"""Two `fsdi serve` replicas on one PostgreSQL database and one image volume stay coherent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.imagegen import CLASSES, sample
from bench.server import Server
from tests.conftest import fresh_pg_database

KEY = "replica-admin-key-0123456789"
H = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from fresh_pg_database()


@pytest.fixture
def replicas(tmp_path: Path, model_cache: Path, pg_url: str) -> Iterator[tuple[Server, Server]]:
    """Two servers on one PostgreSQL database and one data directory."""
    env = {"FSDI_ADMIN_KEY": KEY, "FSDI_DATABASE_URL": pg_url,
           "FSDI_MODEL_CACHE_DIR": str(model_cache)}
    a = Server(tmp_path / "data", env).start()
    try:
        b = Server(tmp_path / "data", env).start()
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def classify_labels(url: str, group: str) -> list[str] | None:
    r = httpx.post(url + "/api/v1/classify", params={"group": group, "top_k": 5},
                   files=[("files", ("q.png", sample("brick", "scratch", 999), "image/png"))],
                   headers=H, timeout=30)
    if r.status_code == 409:
        return None
    return [t["label"] for t in r.json()["results"][0]["top_k"]]


@pytest.mark.postgres
def test_enrolment_on_one_replica_is_used_by_the_other_within_a_second(
        replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    ids = {}
    for ci, (name, (surf, defect)) in enumerate(CLASSES.items()):
        ids[name] = httpx.post(a.url + "/api/v1/classes", json={"name": name, "group": "line"},
                               headers=H).json()["id"]
        r = httpx.post(f"{a.url}/api/v1/classes/{ids[name]}/images", headers=H, timeout=60,
                       files=[("files", (f"{j}.png", sample(surf, defect, 40 * ci + j),
                                         "image/png")) for j in range(3)])
        assert r.status_code == 201
        acked = time.monotonic()
        while True:  # B sees the new class
            labels = classify_labels(b.url, "line")
            if labels and name in labels:
                break
            assert time.monotonic() - acked < 1.0, f"replica B missed {name}: {labels}"
            time.sleep(0.05)
    assert classify_labels(b.url, "line")[0] == "brick-scratch"  # type: ignore[index]
    # /verify on the group's own calibration: both replicas answer alike
    pair = [("a", ("a.png", sample("brick", "scratch", 901), "image/png")),
            ("b", ("b.png", sample("gravel", "hole", 902), "image/png"))]
    said = [httpx.post(f"{r.url}/api/v1/verify", params={"group": "line"}, files=pair,
                       headers=H, timeout=30).json() for r in (a, b)]
    assert said[0]["calibration"] == "group" and said[0] == said[1], said
    assert httpx.delete(f"{b.url}/api/v1/classes/{ids['brick-scratch']}",
                        headers=H).status_code == 204
    gone = time.monotonic()
    while "brick-scratch" in (classify_labels(a.url, "line") or []):
        assert time.monotonic() - gone < 1.0, "replica A still classifies a deleted class"
        time.sleep(0.05)


@pytest.mark.postgres
def test_a_key_revoked_on_one_replica_is_refused_by_the_other_within_a_second(
        replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    made = httpx.post(a.url + "/api/v1/keys", json={"role": "operator"}, headers=H).json()
    h = {"Authorization": f"Bearer {made['key']}"}
    for _ in range(3):  # B verifies it and keeps it in memory
        assert httpx.get(b.url + "/api/v1/classes", headers=h).status_code == 200
    assert httpx.delete(f"{a.url}/api/v1/keys/{made['id']}", headers=H).status_code == 204
    revoked = time.monotonic()
    assert httpx.get(a.url + "/api/v1/classes", headers=h).status_code == 401  # at once
    while httpx.get(b.url + "/api/v1/classes", headers=h).status_code != 401:
        assert time.monotonic() - revoked < 1.0, "replica B still lets a revoked key in"
        time.sleep(0.05)
