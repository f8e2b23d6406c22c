"""A real load balancer (HAProxy, docker/haproxy.cfg) in front of two replicas on one
PostgreSQL and one S3 server: `kill -9` one under steady classification load."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bench.imagegen import sample
from bench.server import Server, free_port
from tests.conftest import fresh_pg_database, s3_prefix_url
from tests.e2e.test_many_hosts import H, enrol_line, host_env, metric_value, same_picture

DOCKER = Path(__file__).resolve().parents[2] / "docker"
CLIENT_TIMEOUT_S = 30.0
CLASSIFIED = 'fsdi_images_classified_total{group="line"}'

pytestmark = [pytest.mark.postgres, pytest.mark.s3]


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy"
                                        if os.path.exists("/usr/sbin/haproxy") else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("HAProxy is required in CI (.ci/test installs Debian's haproxy)")
        pytest.skip("HAProxy is not installed (apt-get install haproxy)")
    return found


class Balancer:
    def __init__(self, a: Server, b: Server, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "FSDI_LB_BIND": f"127.0.0.1:{self.port}",
               "FSDI_REPLICA_A": f"127.0.0.1:{a.port}", "FSDI_REPLICA_B": f"127.0.0.1:{b.port}",
               "FSDI_LB_ERRORFILE": str(DOCKER / "fsdi-503.http")}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([haproxy_binary(), "-db", "-f",
                                          str(DOCKER / "haproxy.cfg")],
                                         env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "HAProxy never routed /readyz"
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@dataclass
class Load:
    """Clients classifying through the balancer, each request with its own timeout."""
    url: str
    group: str
    acked: list[tuple[int, bytes]] = field(default_factory=list)  # result id, image sent
    statuses: dict[int, int] = field(default_factory=dict)
    retried: int = 0  # a kept-alive connection closed with no answer: sent again
    slowest_s: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, n: int) -> None:
        seed = 100_000 * (n + 1)
        with httpx.Client(base_url=self.url, headers=H, timeout=CLIENT_TIMEOUT_S) as c:
            while not self.stop.is_set():
                seed += 1
                img = sample("brick", "scratch" if seed % 2 else None, seed)
                t0 = time.monotonic()
                for attempt in range(3):
                    try:
                        r = c.post("/api/v1/classify", params={"group": self.group},
                                   files=[("files", ("q.png", img, "image/png"))])
                        status = r.status_code
                        break
                    except httpx.RemoteProtocolError:
                        # The balancer closed a kept-alive connection without an answer
                        # (its replica died mid-request): HTTP's cue to retry, on a new
                        # connection (twice at most: the first may meet the dead replica
                        # too, before its health check fails).
                        status = -1
                        with self.lock:
                            self.retried += attempt == 0
                    except httpx.HTTPError:
                        status = -2  # a timeout or a refused connection: no retry
                        break
                with self.lock:
                    self.slowest_s = max(self.slowest_s, time.monotonic() - t0)
                    self.statuses[status] = self.statuses.get(status, 0) + 1
                    if status == 200:
                        self.acked.append((r.json()["results"][0]["id"], img))


@pytest.fixture
def cluster(tmp_path: Path, model_cache: Path) -> Iterator[tuple[Server, Server, Balancer]]:
    pg = fresh_pg_database()
    pg_url = next(pg)
    env = host_env(pg_url, model_cache, s3_prefix_url())
    a = Server(tmp_path / "host-a" / "data", env).start()
    b = Server(tmp_path / "host-b" / "data", env).start()
    lb = Balancer(a, b, tmp_path / "haproxy.log")
    try:
        yield a, b, lb
    finally:
        lb.stop()
        a.stop()
        b.stop()
        next(pg, None)


def test_kill_9_one_replica_under_load_loses_nothing_and_it_rejoins(
        cluster: tuple[Server, Server, Balancer]) -> None:
    a, b, lb = cluster
    ids = enrol_line(lb.url, "line")
    load = Load(lb.url, "line")
    clients = [threading.Thread(target=load.client, args=(n,)) for n in range(4)]
    for t in clients:
        t.start()
    try:
        time.sleep(4)
        before_kill = len(load.acked)
        a.stop(signal.SIGKILL)  # kill -9: no goodbye to the balancer or the clients
        time.sleep(6)
        after_kill = len(load.acked)
        restarted = Server(a.data_dir, a.env, port=a.port).start()
        a.proc = restarted.proc
        served_by_a = metric_value(a.url, CLASSIFIED)
        time.sleep(4)
    finally:
        load.stop.set()
        for t in clients:
            t.join(CLIENT_TIMEOUT_S + 5)
    assert before_kill > 10 and after_kill > before_kill + 10, load.statuses
    # Clients saw answers or 503s (a request in flight on the dead replica), nothing else,
    # and nothing waited out its timeout.
    assert set(load.statuses) <= {200, 503}, load.statuses
    assert load.statuses.get(503, 0) + load.retried <= 8, (load.statuses, load.retried)
    assert load.slowest_s < CLIENT_TIMEOUT_S
    # The restarted replica rejoined: the balancer sends it classifications again.
    assert metric_value(a.url, CLASSIFIED) > served_by_a
    # 0 acknowledged results lost: the survivor serves each one's result and image
    # (those that went through the dead replica included), and the support images.
    with httpx.Client(base_url=b.url, headers=H, timeout=30) as c:
        for rid, img in load.acked:
            r = c.get(f"/api/v1/results/{rid}/image", params={"size": 1024})
            assert r.status_code == 200 and same_picture(r.content, img), rid
    for i in ids["good"] + ids["scratch"] + ids["stain"]:
        assert httpx.get(f"{b.url}/api/v1/images/{i}", headers=H).status_code == 200
    fb = httpx.post(b.url + "/api/v1/feedback", headers=H, json={
        "result_id": load.acked[0][0], "correct": False, "class_id": ids["stain-class"][0]})
    promoted = httpx.post(f"{b.url}/api/v1/feedback/{fb.json()['id']}/promote", headers=H,
                          timeout=60)
    assert promoted.status_code == 201, promoted.text
    print(f"\nfailover: {len(load.acked)} acknowledged, statuses {load.statuses}, "
          f"retried {load.retried}, slowest {load.slowest_s:.2f} s")
