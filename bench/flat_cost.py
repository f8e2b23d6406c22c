"""Flat cost: the good-parts path with 50 to 2,000 good images, the time to enrol 1,000
good images, and one camera's latency beside the raw network, all in the same run.

    python -m bench.flat_cost [--before REV] [--seconds 8] [--rounds 3] [--clients 8]

1. A real `fsdi serve` with four groups of 50 / 200 / 1,000 / 2,000 good images (224 px
   PNGs of the synthetic surfaces) and two defect classes each; the 1,000 are enrolled in
   requests of 64 and timed until the last request's 201 (the group is classifiable as it
   answers). With `--before REV`, an earlier commit's server gets the same groups.
2. C keep-alive clients, one image per request, on each group in turn (rounds taking
   turns, so drift hits all alike): img/s per group and its ratio to the 50-image group.
3. One client, one image per request, sequential, on the 50-image group: p50 / p99,
   against the raw ONNX Runtime pass on that image plus its PNG decode (the service's
   own decode step), measured in this process in turns with it.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.classify import multipart, pct
from bench.imagegen import SURFACES, sample
from bench.server import Server, checkout, remove_checkout

KEY = "flat-cost-bench-key-0123456789"
GROUPS = (50, 200, 1000, 2000)
BATCH = 64


def enrol(url: str, group: str, n_good: int, seed: int) -> float:
    """Two defect classes (3 images each) and a good class of n_good images, sent in
    requests of 64; returns the seconds the good images took, first request to last 201."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=600) as c:
        for d, defect in enumerate(("scratch", "stain")):
            cid = c.post("/api/v1/classes", json={"name": defect, "group": group}).json()["id"]
            c.post(f"/api/v1/classes/{cid}/images", files=[
                ("files", (f"d{j}.png", sample(SURFACES[j % 3], defect, seed + 10 * d + j, 224),
                           "image/png")) for j in range(3)]).raise_for_status()
        gid = c.post("/api/v1/classes", json={"name": "ok", "group": group,
                                              "kind": "good"}).json()["id"]
        images = [sample(SURFACES[j % 3], None, seed + 1000 + j, 224) for j in range(n_good)]
        t0 = time.perf_counter()
        for start in range(0, n_good, BATCH):
            c.post(f"/api/v1/classes/{gid}/images", files=[
                ("files", (f"g{j}.png", images[j], "image/png"))
                for j in range(start, min(n_good, start + BATCH))]).raise_for_status()
        return time.perf_counter() - t0


def queries(n: int = 64) -> list[bytes]:
    return [sample(SURFACES[i % 3], ("scratch", None)[i % 2], 900_000 + i, 224)
            for i in range(n)]


def drive(url: str, group: str, clients: int, seconds: float, images: list[bytes]
          ) -> tuple[float, list[float]]:
    """`clients` keep-alive clients, one image per request: (img/s, latencies in s)."""
    import threading

    host, port = url.removeprefix("http://").split(":")
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    bodies = [multipart([("q.png", img)]) for img in images]

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        i = w
        while time.monotonic() < stop:
            body, ctype = bodies[i % len(bodies)]
            t = time.perf_counter()
            conn.request("POST", f"/api/v1/classify?group={group}", body=body,
                         headers={"Authorization": f"Bearer {KEY}", "Content-Type": ctype})
            resp = conn.getresponse()
            payload = resp.read()
            assert resp.status == 200, payload[:300]
            with lock:
                lat.append(time.perf_counter() - t)
            i += clients
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat) / (time.perf_counter() - t0), lat


def raw_ms(images: list[bytes], seconds: float, cache: Path) -> list[float]:
    """The raw one-image ONNX Runtime pass plus the service's decode of the PNG, per image,
    sequential (the network's threads as the service's default: 2)."""
    from app.services.uploads import decode_one
    from models.embedder import make_embedder
    from models.zoo import create_backbone

    bb = create_backbone("fsdi_lite0_meta")
    emb = make_embedder(bb, "onnxruntime", cache, 2)
    out, i, stop = [], 0, time.monotonic() + seconds
    while time.monotonic() < stop:
        t = time.perf_counter()
        u = decode_one("q.png", images[i % len(images)], bb.preprocess, 10**9)
        emb.embed_packed(u.tensor[None])
        out.append(time.perf_counter() - t)
        i += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="an earlier commit to compare at 8 clients")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-only", action="store_true",
                    help="only step 3 (one camera's latency beside the raw network)")
    ap.add_argument("--groups", default=",".join(map(str, GROUPS)),
                    help="good images per group, comma-separated (1000 for the enrol time)")
    a = ap.parse_args()
    groups = (50,) if a.latency_only else tuple(int(g) for g in a.groups.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="fsdi-flat-"))
    env = {"FSDI_ADMIN_KEY": KEY, "FSDI_MODEL_CACHE_DIR": str(tmp / "onnx")}
    servers = {"now": Server(tmp / "now" / "data", env)}
    tree = None
    if a.before:
        tree = tmp / "before"
        servers[f"before ({a.before})"] = Server(tmp / "before-data" / "data", env,
                                                 fsdi=checkout(a.before, tree))
    asked = queries()
    try:
        enrol_s: dict[str, float] = {}
        for name, srv in servers.items():
            srv.start(timeout=300)
            for n in groups:
                took = enrol(srv.url, f"g{n}", n, seed=10_000 * n)
                if n == 1000:
                    enrol_s[name] = took
            drive(srv.url, "g50", a.clients, 2, asked)  # warm-up
        rates: dict[tuple[str, int], list[float]] = {}
        one: list[float] = []
        raw: list[float] = []
        for _ in range(a.rounds):
            for name, srv in servers.items():
                for n in () if a.latency_only else groups:
                    r, _ = drive(srv.url, f"g{n}", a.clients, a.seconds, asked)
                    rates.setdefault((name, n), []).append(r)
            _, lat = drive(servers["now"].url, "g50", 1, a.seconds, asked)
            one += lat
            raw += raw_ms(asked, a.seconds, tmp / "onnx")
    finally:
        for srv in servers.values():
            srv.stop()
        if tree is not None:
            remove_checkout(tree)
    print(f"good-parts path, {a.clients} clients x 1 image/request (224 px PNG), "
          f"{a.rounds} rounds of {a.seconds:g} s taking turns:")
    for name in () if a.latency_only else servers:
        base = statistics.median(rates[(name, 50)])
        cells = []
        for n in groups:
            r = statistics.median(rates[(name, n)])
            cells.append(f"{n}: {r:.1f} img/s ({base / r:.2f}x the 50's cost)")
        print(f"  {name:<18} " + "; ".join(cells))
        if name in enrol_s:
            print(f"  {'':<18} 1,000 good images enrolled in requests of {BATCH}: "
                  f"{enrol_s[name]:.1f} s until classifiable")
    if a.before and not a.latency_only:
        for n in groups:
            now = statistics.median(rates[("now", n)])
            was = statistics.median(rates[(f"before ({a.before})", n)])
            print(f"  {n} good images: now {now:.1f} img/s, before {was:.1f} "
                  f"({now / was:.2f}x)")
    p50, p99 = pct(one, 50) * 1e3, pct(one, 99) * 1e3
    r50, r99 = pct(raw, 50) * 1e3, pct(raw, 99) * 1e3
    print(f"one client, one image per request (50 good images): p50 {p50:.1f} ms, p99 "
          f"{p99:.1f} ms; raw network + decode p50 {r50:.1f} ms, p99 {r99:.1f} ms: "
          f"{p50 / r50:.2f}x / {p99 / r50:.2f}x the raw p50 (targets 1.5x / 2.5x)")
    print(f"  raw per-image spread: {statistics.mean(raw) * 1e3:.1f} ms mean over "
          f"{len(raw)} passes; {len(one)} requests; {np.std(one) * 1e3:.1f} ms std")


if __name__ == "__main__":
    main()
