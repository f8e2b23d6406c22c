"""Coherence lag between replicas: enrol a class through replica A, time until replica B's
prototype cache holds it (its `fsdi_classes_cached` gauge moves), with PostgreSQL's
LISTEN/NOTIFY on and off (the 500 ms poll alone), in the same run.

    python -m bench.coherence [--rounds 15]

Needs the PostgreSQL server the tests use (FSDI_TEST_PG).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.imagegen import sample
from bench.server import Server
from tests.conftest import fresh_pg_database

KEY = "coherence-admin-key-0123456789"
H = {"Authorization": f"Bearer {KEY}"}


def cached_classes(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(next(x for x in text.splitlines()
                      if x.startswith("fsdi_classes_cached ")).split()[1])


def lags_ms(notify: bool, rounds: int, tmp: Path) -> list[float]:
    pg = fresh_pg_database()
    env = {"FSDI_ADMIN_KEY": KEY, "FSDI_DATABASE_URL": next(pg),
           "FSDI_SYNC_NOTIFY": str(notify).lower(),
           "FSDI_MODEL_CACHE_DIR": str(tmp / "onnx")}
    a = Server(tmp / f"a-{notify}" / "data", env).start()
    b = Server(tmp / f"b-{notify}" / "data", env).start()
    out = []
    try:
        for i in range(rounds):
            cid = httpx.post(a.url + "/api/v1/classes", json={"name": f"c{i}", "group": "g"},
                             headers=H).json()["id"]
            time.sleep(0.6)  # B has synced the empty class
            before = cached_classes(b.url)
            r = httpx.post(f"{a.url}/api/v1/classes/{cid}/images", headers=H, timeout=60,
                           files=[("files", ("x.png", sample("brick", "scratch", i),
                                             "image/png"))])
            acked = time.monotonic()
            assert r.status_code == 201, r.text
            while cached_classes(b.url) == before and time.monotonic() - acked < 5:
                time.sleep(0.002)
            out.append((time.monotonic() - acked) * 1000)
    finally:
        a.stop()
        b.stop()
        next(pg, None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fsdi-coherence-"))
    for notify in (False, True):
        lags = sorted(lags_ms(notify, args.rounds, tmp))
        print(f"notify={'on ' if notify else 'off'}  lag after the 201: median "
              f"{statistics.median(lags):.0f} ms, max {lags[-1]:.0f} ms ({len(lags)} rounds)")


if __name__ == "__main__":
    main()
