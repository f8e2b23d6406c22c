"""The good-parts path's cost, against the classification-only path measured in the same run.

    python -m bench.anomaly [--seconds 15] [--rounds 3] [--clients 4] [--per-request 8]

1. In process, on real patch features of 640x480 frames (the served ONNX network): the
   decision's cost per image (`ServedGroup.inspect`: the patch search, its image score,
   the class decision) with 20, 50 and 200 good images, beside the class decision alone
   (`GroupIndex.decide`) and the network's own forward pass per image; the time to build
   a group's memory and threshold (leave-one-out) on enrolment; memory per good image
   (in RAM: the bank; in the database: the stored float16 patches).
2. End to end: a real `fsdi serve`, two groups with the same 10 defect classes, one of
   them also with a good class of 50 images; the load of bench.classify on each in turn
   (plain, good, plain, good, ...), so drift hits both alike. Prints img/s of each and
   the ratio (the target: >= 0.7).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.classify import DEFECTS, KEY, enrol_good, enrol_ten, frame, load
from bench.imagegen import SURFACES
from bench.server import Server

GOOD_COUNTS = (20, 50, 200)


def per_call_ms(fn: object, seconds: float = 1.5) -> float:
    f = fn  # type: ignore[assignment]
    f()  # type: ignore[operator]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        f()  # type: ignore[operator]
        n += 1
    return (time.perf_counter() - t0) * 1000 / n


def in_process(queries: int = 8) -> None:
    from app.services.uploads import decode_one
    from models.embedder import make_embedder, unpack
    from models.inference import GoodParts, GroupIndex, ServedGroup, ServingConfig, make_entry
    from models.zoo import create_backbone
    from storage.repositories import new_patches

    bb = create_backbone("fsdi_lite0_meta")
    with tempfile.TemporaryDirectory() as d:
        emb = make_embedder(bb, "onnxruntime", Path(d), threads=2)
        n_frames = max(GOOD_COUNTS) + 10 * 5 + queries
        x = np.stack([decode_one(f"{i}.jpg", frame(50_000 + i, None if i < 200 else
                                                   DEFECTS[i % 4], SURFACES[0]),
                                 bb.preprocess, 10**9).tensor for i in range(n_frames)])
        rows = np.concatenate([emb.embed_packed(x[i:i + 16]) for i in range(0, len(x), 16)])
        net_ms = per_call_ms(lambda: emb.embed(x[:queries])) / queries
    e, p = unpack(rows, bb)
    layout = ServingConfig().layout(bb.metric_dim, bb.dim)
    defects = [make_entry(c + 1, f"d{c}", "b", list(range(5)), e[200 + 5 * c:205 + 5 * c],
                          layout) for c in range(10)]
    q_e, q_p = e[-queries:], p[-queries:]
    index = GroupIndex.build("b", defects, bb.metric_dim, rank_by=layout.rank_by)
    plain = per_call_ms(lambda: index.decide(q_e, 3)) / queries
    print(f"network forward pass: {net_ms:.2f} ms/img; class decision alone "
          f"(10 classes): {plain:.3f} ms/img")
    print("| good images | decision with good parts, ms/img | ÷ network pass | build on "
          "enrolment (incl. leave-one-out), s | RAM per good image, KB | stored per good "
          "image, KB |")
    print("|---|---|---|---|---|---|")
    for n in GOOD_COUNTS:
        t0 = time.perf_counter()
        gp = GoodParts.build(p[:n], list(range(n)), 0.02)
        build_s = time.perf_counter() - t0
        good = make_entry(99, "ok", "b", list(range(n)), e[:n], layout, "good")
        served = ServedGroup.build(GroupIndex.build("b", [*defects, good], bb.metric_dim,
                                                    rank_by=layout.rank_by), gp)
        ms = per_call_ms(lambda: served.inspect(q_e, q_p, 3)) / queries  # noqa: B023
        stored = len(new_patches(p[0], "v").data) / 1024
        print(f"| {n} | {ms:.2f} | {ms / net_ms:.2f} | {build_s:.2f} | "
              f"{gp.memory.nbytes / n / 1024:.0f} | {stored:.0f} |")


def end_to_end(a: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        srv = Server(Path(tmp) / "data", {"FSDI_ADMIN_KEY": KEY}).start()
        try:
            with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {KEY}"},
                              timeout=120) as c:
                enrol_ten(c, "bench")
                enrol_ten(c, "benchgood")
                enrol_good(c, "benchgood")
                key = c.post("/api/v1/keys", json={"role": "machine"}).json()["key"]
            load(srv.url, a.clients, a.per_request, 3, key, "benchgood")  # warm-up
            rates: dict[str, list[float]] = {"bench": [], "benchgood": []}
            for _ in range(a.rounds):
                for g in rates:
                    n, secs, _, _ = load(srv.url, a.clients, a.per_request, a.seconds, key, g)
                    rates[g].append(n / secs)
        finally:
            srv.stop()
    plain, good = (statistics.median(rates[g]) for g in ("bench", "benchgood"))
    print(f"end to end, {a.clients} clients x {a.per_request} images/request, "
          f"{a.rounds} rounds of {a.seconds:g} s each, taking turns:")
    print(f"  classification only: {plain:.1f} img/s  {[round(r, 1) for r in rates['bench']]}")
    print(f"  with 50 good images (anomaly, verdict): {good:.1f} img/s  "
          f"{[round(r, 1) for r in rates['benchgood']]}")
    print(f"  ratio good-parts / classification-only: {good / plain:.2f} (target >= 0.7)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--per-request", type=int, default=8)
    ap.add_argument("--skip-e2e", action="store_true")
    a = ap.parse_args()
    in_process()
    if not a.skip_e2e:
        end_to_end(a)


if __name__ == "__main__":
    main()
