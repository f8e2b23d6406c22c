"""Start-up time and resident memory of `fsdi serve`, an earlier commit against this code,
in the same run.

    python -m bench.startup --before REV [--rounds 3]

Both use one model cache, exported before the timed starts (each version starts once
untimed). Each round starts each version on a fresh SQLite data directory, in turns, and
measures: seconds from the process's start to /readyz 200, resident memory (VmRSS) when
ready and after enrolling a good and a defect class and classifying two images, and
whether libtorch is mapped into the process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.imagegen import sample
from bench.server import Server, checkout, remove_checkout

KEY = "startup-bench-key-0123456789"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def torch_mapped(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def files(kind: str | None, seeds: range | list[int]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{i}.png", sample("brick", kind, i), "image/png")) for i in seeds]


def one_start(data: Path, cache: Path, fsdi: list[str] | None) -> dict[str, float]:
    srv = Server(data, {"FSDI_ADMIN_KEY": KEY, "FSDI_MODEL_CACHE_DIR": str(cache)}, fsdi=fsdi)
    t0 = time.perf_counter()
    srv.start(timeout=600)
    ready = time.perf_counter() - t0
    try:
        out = {"ready s": ready, "RSS ready MB": rss_mb(srv.pid)}
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=120) as c:
            good = c.post("/api/v1/classes",
                          json={"name": "ok", "group": "g", "kind": "good"}).json()
            bad = c.post("/api/v1/classes", json={"name": "scratch", "group": "g"}).json()
            c.post(f"/api/v1/classes/{good['id']}/images", files=files(None, range(8)))
            c.post(f"/api/v1/classes/{bad['id']}/images", files=files("scratch", range(10, 13)))
            r = c.post("/api/v1/classify", params={"group": "g"},
                       files=files("scratch", [20]) + files(None, [21]))
            assert r.status_code == 200, r.text
        out["RSS serving MB"] = rss_mb(srv.pid)
        out["torch mapped"] = float(torch_mapped(srv.pid))
        return out
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the earlier commit")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fsdi-startup-"))
    cache = tmp / "onnx"
    tree = tmp / "tree"
    before_cmd = checkout(a.before, tree)
    try:
        runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for name, cmd in (("before", before_cmd), ("after", None)):
            one_start(tmp / f"warm-{name}" / "data", cache, cmd)  # exports, writes shapes
        for i in range(a.rounds):
            for name, cmd in (("before", before_cmd), ("after", None)):
                runs[name].append(one_start(tmp / f"{name}{i}" / "data", cache, cmd))
    finally:
        remove_checkout(tree)
    print(f"{'median of ' + str(a.rounds) + ' starts':<24} {'before':>10} {'after':>10} "
          f"{'after/before':>13}")
    for k in ("ready s", "RSS ready MB", "RSS serving MB", "torch mapped"):
        b = statistics.median(r[k] for r in runs["before"])
        f = statistics.median(r[k] for r in runs["after"])
        print(f"{k:<24} {b:10.2f} {f:10.2f} {f / b if b else float('nan'):13.2f}")


if __name__ == "__main__":
    main()
