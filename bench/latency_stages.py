"""One camera's request, stage by stage, in one process: where the time above the raw
network pass goes. The service's own parts (a Runtime on a `fsdi serve` data directory
with bench.flat_cost's 50-good-image group) are timed two ways in the same run:

- in sequence, as a request runs them: decode -> forward pass -> decision -> result
  write, one image after another;
- warm, each stage repeated on its own (what a micro-benchmark of it shows).

The difference is what running after the forward pass costs (its working set has left
the caches cold on this machine's cores): not a hand-off or a wait in our code.

    python -m bench.latency_stages [--n 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from bench.flat_cost import KEY, enrol, queries
from bench.server import Server

if TYPE_CHECKING:
    from app.services.uploads import Upload
    from models.inference import Inspection

GROUP = "g50"
T = TypeVar("T")


def p50(xs: list[float]) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, 50))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fsdi-stages-"))
    env = {"FSDI_ADMIN_KEY": KEY, "FSDI_MODEL_CACHE_DIR": str(tmp / "onnx"),
           "FSDI_DATA_DIR": str(tmp / "data")}
    srv = Server(tmp / "data", env).start(timeout=300)
    try:
        enrol(srv.url, GROUP, 50, seed=500_000)
    finally:
        srv.stop()
    # the service's own process settings (app.cli sets them before numpy loads)
    os.environ.update(env)
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

    from app.services.classification import _decide
    from app.services.results import PendingResults
    from app.services.runtime import Runtime
    from app.services.uploads import decode_one
    from app.settings import Settings

    rt = Runtime(Settings())
    rt.open_database()
    rt.load()
    cfg, s = rt.backbone.preprocess, rt.settings
    images = queries()

    def decode(i: int) -> Upload:
        return decode_one("q.png", images[i % len(images)], cfg, s.max_image_pixels,
                          s.max_decoded_bytes)

    def pending(u: Upload, i: Inspection) -> PendingResults:
        e, a = i.entry, i.anomaly
        return PendingResults(GROUP, [u], [{
            "group_name": GROUP, "filename": "q.png", "sha256": u.sha256,
            "class_id": e.class_id if e else None, "label": e.name if e else None,
            "unknown": i.unknown, "score": float(i.score), "method": "protonet",
            "model_version": rt.backbone.version, "key_id": None, "verdict": i.verdict,
            "anomaly_score": None if a is None else float(a.score),
            "anomaly_threshold": None if a is None else float(a.threshold)}], "bench")

    def write(u: Upload, i: Inspection) -> None:
        rt._write_results([pending(u, i)])

    stages = ("decode", "forward pass", "decision", "result write")
    seq: dict[str, list[float]] = {k: [] for k in stages}
    warm: dict[str, list[float]] = {k: [] for k in stages}

    def timed(out: list[float], f: Callable[[], T]) -> T:
        t = time.perf_counter()
        r = f()
        out.append(time.perf_counter() - t)
        return r

    def decide(full: np.ndarray) -> Inspection:
        return _decide(rt, GROUP, full, 3, "protonet", None, False)[0]

    def one_round() -> None:
        for k in stages:
            seq[k].clear()
            warm[k].clear()
        for i in range(a.n):
            u = timed(seq["decode"], lambda i=i: decode(i))  # type: ignore[misc]
            full = timed(seq["forward pass"], lambda u=u: rt._forward_alone(u.tensor[None]))  # type: ignore[misc]
            insp = timed(seq["decision"], lambda full=full: decide(full))  # type: ignore[misc]
            timed(seq["result write"], lambda u=u, insp=insp: write(u, insp))  # type: ignore[misc]
        u0 = decode(0)
        full0 = rt._forward_alone(u0.tensor[None])
        insp0 = decide(full0)
        for k, f in (("decode", lambda: decode(0)),
                     ("forward pass", lambda: rt._forward_alone(u0.tensor[None])),
                     ("decision", lambda: decide(full0)),
                     ("result write", lambda: write(u0, insp0))):
            for _ in range(a.n):
                timed(warm[k], f)

    one_round()  # warms up
    one_round()
    print(f"one image at a time, {a.n} images, p50 in ms (50 good images, 2 defect classes):")
    print(f"  {'stage':<14} {'in sequence':>12} {'warm, alone':>12}")
    for k in stages:
        print(f"  {k:<14} {p50(seq[k]):12.2f} {p50(warm[k]):12.2f}")
    total_seq = sum(p50(seq[k]) for k in stages)
    total_warm = sum(p50(warm[k]) for k in stages)
    raw = p50(seq["decode"]) + p50(seq["forward pass"])
    print(f"  {'sum':<14} {total_seq:12.2f} {total_warm:12.2f}")
    print(f"decision + write in sequence: {p50(seq['decision']) + p50(seq['result write']):.2f}"
          f" ms = {(p50(seq['decision']) + p50(seq['result write'])) / raw:.2f}x the raw "
          f"pass + decode ({raw:.2f} ms); the stages alone in sequence: {total_seq / raw:.2f}x")
    rt.close()


if __name__ == "__main__":
    main()
