"""One camera's request against the floors under it, in the same run: what a bare
uvicorn + FastAPI endpoint costs to take the same multipart upload, what one durable
SQLite commit costs on this disk, and the raw network pass plus decode.

    python -m bench.latency_floor [--seconds 8]

Each is measured sequentially (one client, one 224 px PNG per request), the floors and
the service taking turns twice; the service is `fsdi serve` on a 50-good-image group
(bench.flat_cost's), the bare endpoint a FastAPI app in its own uvicorn process that
reads the upload and answers a small JSON body.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.flat_cost import KEY, drive, enrol, queries, raw_ms
from bench.server import Server, free_port

BARE_APP = """
from fastapi import FastAPI, File, UploadFile
app = FastAPI()

@app.post("/api/v1/classify")
async def classify(files: list[UploadFile] = File(...)) -> dict:
    data = [await f.read() for f in files]
    return {"results": [{"filename": f.filename, "bytes": len(d)}
                        for f, d in zip(files, data)]}
"""


def bare_http(images: list[bytes], seconds: float, tmp: Path) -> list[float]:
    """One client against the bare endpoint: the HTTP, multipart and routing floor."""
    (tmp / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--port",
                             str(port), "--log-level", "warning"], cwd=tmp,
                            env={**os.environ, "PYTHONPATH": str(tmp)})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(url + "/docs", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        # the service's own client loop (http.client, kept alive), so only the server differs
        return drive(url, "g50", 1, seconds, images)[1]
    finally:
        proc.terminate()
        proc.wait(10)


def sqlite_commit(seconds: float, tmp: Path) -> list[float]:
    """One row and one commit at a time, in WAL mode with synchronous=FULL (the service's
    settings): the disk's durable-commit floor."""
    db = sqlite3.connect(tmp / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, payload TEXT)")
    out, stop = [], time.monotonic() + seconds
    while time.monotonic() < stop:
        t = time.perf_counter()
        db.execute("BEGIN")
        db.execute("INSERT INTO t (payload) VALUES (?)", ("x" * 300,))
        db.execute("COMMIT")
        out.append(time.perf_counter() - t)
    db.close()
    return out


def p(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fsdi-floor-"))
    asked = queries()
    srv = Server(tmp / "data", {"FSDI_ADMIN_KEY": KEY,
                                "FSDI_MODEL_CACHE_DIR": str(tmp / "onnx")}).start(timeout=300)
    runs: dict[str, list[float]] = {"service": [], "raw": [], "http": [], "commit": []}
    try:
        enrol(srv.url, "g50", 50, seed=500_000)
        drive(srv.url, "g50", 1, 2, asked)  # warm-up
        for _ in range(a.rounds):
            runs["service"] += drive(srv.url, "g50", 1, a.seconds, asked)[1]
            runs["raw"] += raw_ms(asked, a.seconds, tmp / "onnx")
            runs["http"] += bare_http(asked, a.seconds, tmp)
            runs["commit"] += sqlite_commit(a.seconds, tmp)
    finally:
        srv.stop()
    floor50 = p(runs["raw"], 50) + p(runs["http"], 50) + p(runs["commit"], 50)
    print(f"one client, one 224 px PNG per request, {a.rounds} rounds of {a.seconds:g} s:")
    for name, what in (("service", "fsdi serve, /classify on 50 good images"),
                       ("raw", "raw network pass + decode"),
                       ("http", "bare uvicorn + FastAPI, same upload"),
                       ("commit", "one SQLite commit, WAL, synchronous=FULL")):
        print(f"  {what:<44} p50 {p(runs[name], 50):6.2f} ms  p99 {p(runs[name], 99):6.2f} ms")
    s50, s99 = p(runs["service"], 50), p(runs["service"], 99)
    print(f"  floor (raw + HTTP + commit, p50s)             {floor50:6.2f} ms")
    print(f"service / raw: p50 {s50 / p(runs['raw'], 50):.2f}x, p99 "
          f"{s99 / p(runs['raw'], 50):.2f}x; the floor alone is "
          f"{floor50 / p(runs['raw'], 50):.2f}x; the service above the floor: "
          f"{s50 - floor50:.2f} ms at p50")


if __name__ == "__main__":
    main()
