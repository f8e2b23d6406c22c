"""Kept query images on an object store: one object per image against one object per
group commit (several images), at a steady 100 img/s, on a real S3 server (SeaweedFS),
with the local pack append as the reference, all in the same run.

    python -m bench.objects [--rate 100] [--seconds 10] [--kb 60]

For each way it prints the client's CPU per image (what a replica spends), the server's
CPU per image (what the object store spends), the write latency p50 / p99 (what a
/classify waits, since its image is written before its result is committed), and the
requests per day at that rate (what an S3 provider bills per request).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.seaweed import Seaweed, credentials_env
from storage.objects import open_objects
from storage.packs import ObjectPacks, PackStore, QueryImages

COMMIT_EVERY_S = 0.04  # a group commit gathers the results of about this long under load


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a process and its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def offer(keep: Callable[[list[bytes]], list[str]], rate: float, seconds: float,
          image: bytes, per_write: int) -> list[float]:
    """Offer `rate` img/s for `seconds`, `per_write` images per keep() call, writes
    overlapping as concurrent commits would; returns each write's latency (s)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def write() -> None:
        t0 = time.perf_counter()
        keep([image] * per_write)
        with lock:
            latencies.append(time.perf_counter() - t0)

    interval = per_write / rate
    start = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        n = 0
        while (due := start + n * interval) < start + seconds:
            time.sleep(max(0.0, due - time.perf_counter()))
            pool.submit(write)
            n += 1
    return latencies


def measure(name: str, store: QueryImages, rate: float, seconds: float, image: bytes,
            per_write: int, server_pid: int | None) -> None:
    c0, s0 = time.process_time(), cpu_of(server_pid) if server_pid else 0.0
    lat = sorted(offer(store.keep, rate, seconds, image, per_write))
    client_cpu = time.process_time() - c0
    server_cpu = (cpu_of(server_pid) - s0) if server_pid else 0.0
    images = len(lat) * per_write
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    requests = (f"{rate / per_write * 86_400 / 1e6:5.2f} M requests/day" if server_pid
                else "(no requests)")
    print(f"{name:<34} client {client_cpu / images * 1e3:6.2f} ms CPU/img   server "
          f"{server_cpu / images * 1e3:6.2f} ms CPU/img   write p50 "
          f"{statistics.median(lat) * 1e3:6.1f} ms  p99 {p99 * 1e3:6.1f} ms   {requests}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100.0, help="images per second offered")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--kb", type=int, default=60, help="bytes per image, in KB")
    args = ap.parse_args()
    image = os.urandom(args.kb * 1024)
    tmp = Path(tempfile.mkdtemp(prefix="fsdi-objects-"))
    os.environ.update(credentials_env())
    server = Seaweed(tmp / "seaweed").start()
    try:
        assert server.proc is not None
        objects = open_objects("s3://bench/q", tmp, server.endpoint, connect_timeout_s=1.0,
                               read_timeout_s=2.0, max_attempts=1)
        s3 = ObjectPacks(objects)
        s3.keep([image])  # connections and the bucket's volumes made before timing
        per_commit = max(1, round(args.rate * COMMIT_EVERY_S))
        print(f"{args.rate:g} img/s of {args.kb} KB for {args.seconds:g} s; a group commit "
              f"every {COMMIT_EVERY_S * 1e3:.0f} ms holds {per_commit} images")
        for _ in range(2):  # alternating, twice: the shared machine drifts
            measure("S3, one object per image", s3, args.rate, args.seconds, image, 1,
                    server.proc.pid)
            measure(f"S3, one object per commit ({per_commit})", s3, args.rate, args.seconds,
                    image, per_commit, server.proc.pid)
        local = PackStore(tmp / "packs")
        measure("local pack append (one host)", local, args.rate, args.seconds, image,
                per_commit, None)
        local.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
