"""Against real `fsdi serve` processes: schema fuzzing, SIGKILL during enrolment, load."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from bench.imagegen import CLASSES, sample
from bench.server import Server
from storage.blobs import sha256_hex

KEY = "e2e-admin-key-0123456789abcdef"
H = {"Authorization": f"Bearer {KEY}"}
FUZZ_EXAMPLES = int(os.environ.get("FSDI_FUZZ_EXAMPLES", "25"))
KILL_LOOPS = int(os.environ.get("FSDI_KILL_LOOPS", "8"))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, model_cache: Path):  # type: ignore[no-untyped-def]
    srv = Server(tmp_path_factory.mktemp("fuzz") / "data",
                 {"FSDI_ADMIN_KEY": KEY, "FSDI_MODEL_CACHE_DIR": str(model_cache)}).start()
    c = httpx.Client(base_url=srv.url, headers=H, timeout=60)
    for ci, (name, (surf, defect)) in enumerate(CLASSES.items()):
        cid = c.post("/api/v1/classes", json={"name": name}).json()["id"]
        c.post(f"/api/v1/classes/{cid}/images",
               files=[("files", (f"{j}.png", sample(surf, defect, ci * 10 + j), "image/png"))
                      for j in range(2)])
    yield srv
    c.close()
    srv.stop()


@pytest.fixture(scope="module")
def api_schema(live: Server):  # type: ignore[no-untyped-def]
    return schemathesis.openapi.from_url(live.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_fuzz_never_5xx(case: schemathesis.Case) -> None:
    """Generated requests, authorised as admin: never a 5xx, every error in the envelope."""
    resp = case.call(headers=H, timeout=60)
    assert resp.status_code < 500, (case.method, case.path, resp.status_code, resp.text[:300])
    if resp.status_code >= 400:
        body = resp.json()
        assert isinstance(body["error"]["code"], str), body


def test_sigkill_during_enrolment_loses_nothing(tmp_path: Path, model_cache: Path) -> None:
    # Single replica: sweep crash orphans at once rather than after the multi-replica grace.
    env = {"FSDI_ADMIN_KEY": KEY, "FSDI_MODEL_CACHE_DIR": str(model_cache),
           "FSDI_ORPHAN_GRACE_S": "0"}
    srv = Server(tmp_path / "data", env).start()
    cid = httpx.post(srv.url + "/api/v1/classes", json={"name": "k"}, headers=H).json()["id"]
    attempts: list[tuple[set[str], bool]] = []
    seed = [0]
    rnd = random.Random(0)
    ready_times = []
    try:
        for _ in range(KILL_LOOPS):
            stop = threading.Event()

            def writer(url: str, stop: threading.Event) -> None:
                with httpx.Client(base_url=url, headers=H, timeout=30) as c:
                    while not stop.is_set():
                        seed[0] += 2
                        imgs = [sample("gravel", "hole", 10_000 + seed[0] + j) for j in range(2)]
                        shas = {sha256_hex(b) for b in imgs}
                        try:
                            r = c.post(f"/api/v1/classes/{cid}/images", files=[
                                ("files", (f"{j}.png", b, "image/png"))
                                for j, b in enumerate(imgs)])
                            attempts.append((shas, r.status_code == 201))
                        except httpx.HTTPError:
                            attempts.append((shas, False))
                            return

            t = threading.Thread(target=writer, args=(srv.url, stop))
            t.start()
            time.sleep(rnd.uniform(0.3, 1.5))
            srv.stop(signal.SIGKILL)
            stop.set()
            t.join(60)
            t0 = time.monotonic()
            srv = Server(tmp_path / "data", env, port=srv.port).start(timeout=60)
            ready_times.append(time.monotonic() - t0)
        listed = httpx.get(f"{srv.url}/api/v1/classes/{cid}/images", headers=H).json()
        stored = {i["sha256"] for i in listed}
        acked = [s for s, ok in attempts if ok]
        assert sum(ok for _, ok in attempts) > KILL_LOOPS  # the loop really enrolled things
        for shas in acked:
            assert shas <= stored, "an acknowledged enrolment was lost"
        for shas, _ in attempts:
            assert shas <= stored or not shas & stored, "half an enrolment is visible"
        # No orphaned blobs or temp files: the start-up sweep removed them.
        blobs = {p.name for p in (tmp_path / "data" / "blobs").glob("??/??/*")}
        assert blobs == stored
        assert max(ready_times) < 30
        print(f"\nSIGKILL loops: {KILL_LOOPS}, enrolment requests: {len(attempts)}, "
              f"acknowledged: {len(acked)}, lost: 0, slowest /readyz after restart: "
              f"{max(ready_times):.1f} s")
    finally:
        srv.stop()


def test_bounded_load_has_no_errors(live: Server) -> None:
    """64 classify requests from 8 concurrent clients; zero errors; report p99."""
    payloads = [sample(s, d, 20_000 + i) for i, (s, d) in enumerate(list(CLASSES.values()) * 3)]

    async def run() -> list[float]:
        lat: list[float] = []
        async with httpx.AsyncClient(base_url=live.url, headers=H, timeout=60) as c:
            async def client(k: int) -> None:
                for i in range(8):
                    files = [("files", (f"{j}.png", payloads[(k + i + j) % len(payloads)],
                                        "image/png")) for j in range(2)]
                    t0 = time.perf_counter()
                    r = await c.post("/api/v1/classify", files=files)
                    lat.append(time.perf_counter() - t0)
                    assert r.status_code == 200, r.text
            await asyncio.gather(*(client(k) for k in range(8)))
        return lat

    lat = sorted(asyncio.run(run()))
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    print(f"\nload: {len(lat)} requests, 0 errors, p50 {lat[len(lat) // 2] * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms")
    assert len(lat) == 64
