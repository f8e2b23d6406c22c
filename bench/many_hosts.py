"""What object storage costs a classification, and that one host did not get slower: the
same load against this code on the local disk, this code on a real S3 server (SeaweedFS
on this machine), and optionally an earlier commit on the local disk, taking turns in
the same run.

    python -m bench.many_hosts [--before REV] [--clients 8] [--seconds 10] [--rounds 3]

Each server has a group of 10 defect classes and 50 good images; the load is C
keep-alive clients posting one 640 x 480 JPEG per request, each a file the service has
not seen (so each is kept), as in bench/classify.py. All servers run at once on SQLite
and idle while another is measured. `--before` checks REV out into a temporary git
worktree and runs its `fsdi serve` with this interpreter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import httpx

from bench.classify import enrol_good, enrol_ten, load, pct
from bench.objects import cpu_of
from bench.seaweed import Seaweed, credentials_env
from bench.server import Server, checkout, remove_checkout

KEY = "many-hosts-bench-key-0123456789"
REPO = Path(__file__).resolve().parents[1]


def prepare(srv: Server) -> str:
    """A group with 10 defect classes and 50 good images; returns a machine key."""
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=120) as c:
        enrol_ten(c, "line")
        enrol_good(c, "line")
        return str(c.post("/api/v1/keys", json={"role": "machine"}).json()["key"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="an earlier commit to compare on the local disk")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fsdi-many-hosts-"))
    os.environ.update(credentials_env())
    s3 = Seaweed(tmp / "seaweed").start()
    env = {"FSDI_ADMIN_KEY": KEY, "FSDI_MODEL_CACHE_DIR": str(tmp / "onnx")}
    servers: dict[str, Server] = {}
    tree = None
    try:
        if a.before:
            tree = tmp / "before"
            servers[f"before ({a.before}, disk)"] = Server(
                tmp / "b" / "data", env, fsdi=checkout(a.before, tree))
        servers["now, disk"] = Server(tmp / "l" / "data", env)
        servers["now, S3"] = Server(tmp / "s" / "data", {
            **env, "FSDI_BLOB_URL": "s3://bench/line", "FSDI_S3_ENDPOINT_URL": s3.endpoint})
        keys = {name: prepare(srv.start()) for name, srv in servers.items()}
        for name, srv in servers.items():  # warm-up
            load(srv.url, a.clients, 1, 2, keys[name], "line")
        rates: dict[str, list[float]] = {n: [] for n in servers}
        lat: dict[str, list[float]] = {n: [] for n in servers}
        s3_cpu, s3_images = 0.0, 0
        assert s3.proc is not None
        for _ in range(a.rounds):
            for name, srv in servers.items():
                c0 = cpu_of(s3.proc.pid)
                n, secs, latencies, _ = load(srv.url, a.clients, 1, a.seconds, keys[name],
                                             "line")
                if name == "now, S3":
                    s3_cpu += cpu_of(s3.proc.pid) - c0
                    s3_images += n
                rates[name].append(n / secs)
                lat[name] += latencies
    finally:
        for srv in servers.values():
            srv.stop()
        s3.stop()
        if tree is not None:
            remove_checkout(tree)
    base = statistics.median(rates["now, disk"])
    print(f"{a.clients} clients x 1 image/request, {a.rounds} rounds of {a.seconds:g} s, "
          f"taking turns (10 defect classes + 50 good images, every image kept):")
    for name in servers:
        r = statistics.median(rates[name])
        print(f"  {name:<28} {r:6.1f} img/s  ({r / base:4.2f} x disk)  p50 "
              f"{pct(lat[name], 50) * 1e3:6.1f} ms  p99 {pct(lat[name], 99) * 1e3:6.1f} ms  "
              f"rounds {[round(x, 1) for x in rates[name]]}")
    print(f"  the S3 server's own CPU: {s3_cpu / max(1, s3_images) * 1e3:.2f} ms per image "
          f"(on this machine, sharing its cores with the replica)")


if __name__ == "__main__":
    main()
