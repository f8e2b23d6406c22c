"""Years of results: history pages, CSV export and the 64-bit migration at millions of rows
on PostgreSQL, the schema before (revision 0008) and after (head) in the same run.

    python -m bench.history [--before REV] [--rows 5000000] [--pg postgresql+psycopg://…/db]

1. Migrates a fresh database to 0008 and writes N results straight into it with COPY: 10
   groups, 30 days, newest last; about 5% unknown and 5% defect verdicts, group g9 with no
   good parts (no verdicts at all), feedback on one result in 997 (a third of it "wrong").
2. Starts REV's `fsdi serve` (whose schema is 0008) on it and times, through HTTP, the
   first page (100) of: a group's newest, label, unknown=true, verdict=defect,
   verdict=defect on g9 (matches nothing), a one-day window 15 days back, feedback=wrong,
   feedback=any, all groups, and (where the server has scoped keys) a key of 2 groups;
   then `results.csv` of one group's defects (rows/s). Each query's best of 3.
3. Stops it and upgrades to head (64-bit ids, the new indexes) while 4 writers store
   results with the service's storage code (a result, its audit event, feedback on one in
   ten; one transaction each): the upgrade's time, and the writes' rate, p99 and longest
   wait during it against the same writers alone just before; then does 2 again with
   this code.
4. Archives the oldest day (10 groups, N/30 rows) with `fsdi results archive`'s code
   while 4 clients classify one image per request, against the same load alone just
   before: errors, and p99 loaded / unloaded.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import httpx

from bench.server import Server, checkout, remove_checkout

KEY = "history-bench-key-0123456789"
GROUPS = 10
DAYS = 30
LABELS = ("scratch", "stain", "hole", "ok")


def fresh_database(admin_url: str) -> str:
    import psycopg

    name = f"fsdi_history_{os.getpid()}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def migrate_to(url: str, revision: str) -> float:
    import logging

    from storage.db import make_engine
    from storage.migrate import upgrade

    logging.basicConfig(level=logging.INFO, format="    %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    engine = make_engine(url)
    t0 = time.perf_counter()
    upgrade(engine, revision)
    engine.dispose()
    return time.perf_counter() - t0


def fill(url: str, rows: int) -> float:
    """N results (and feedback on one in 997) by COPY; returns seconds."""
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    start = datetime.now(UTC) - timedelta(days=DAYS)
    step = timedelta(days=DAYS) / rows
    t0 = time.perf_counter()
    cols = ("group_name, filename, sha256, label, unknown, score, method, model_version, "
            "created_at, verdict, anomaly_score, anomaly_threshold")
    with psycopg.connect(plain) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY classification_results ({cols}) FROM STDIN") as copy:
            buf = io.StringIO()
            for i in range(rows):
                g = i % GROUPS
                unknown = i % 19 == 0
                label = "\\N" if unknown else LABELS[(i // GROUPS) % 4]
                verdict = "\\N" if g == 9 else ("defect" if i % 20 == 3 else "ok")
                anomaly = "\\N" if g == 9 else "0.31"
                thr = "\\N" if g == 9 else "0.42"
                at = (start + step * i).isoformat()
                buf.write(f"g{g}\t{i}.png\t{'0' * 64}\t{label}\t{'t' if unknown else 'f'}\t"
                          f"0.87\tprotonet\tbench\t{at}\t{verdict}\t{anomaly}\t{thr}\n")
                if i % 50_000 == 49_999:
                    copy.write(buf.getvalue())
                    buf = io.StringIO()
            copy.write(buf.getvalue())
        # One result in 997 judged (997 and the 10 groups share no factor: every group
        # gets some), one judgement in three "wrong".
        cur.execute("INSERT INTO feedback (result_id, correct, created_at) "
                    "SELECT id, (id / 997) % 3 <> 0, created_at FROM classification_results "
                    "WHERE id % 997 = 0")
        conn.commit()
        cur.execute("ANALYZE")
    return time.perf_counter() - t0


def timed_queries(url: str, data: Path, fsdi: list[str] | None = None) -> dict[str, float]:
    """Best of 3 ms per first page, and the CSV rate (rows/s), through a real server
    (`fsdi`: the command that runs an earlier commit's CLI)."""
    srv = Server(data, {"FSDI_ADMIN_KEY": KEY, "FSDI_DATABASE_URL": url,
                        "FSDI_MODEL_CACHE_DIR": str(data.parent.parent / "onnx")},
                 fsdi=fsdi).start(timeout=300)
    day = datetime.now(UTC) - timedelta(days=15)
    asks = {"newest page of a group": {"group": "g3"},
            "label=stain": {"group": "g3", "label": "stain"},
            "unknown=true": {"group": "g3", "unknown": "true"},
            "verdict=defect": {"group": "g3", "verdict": "defect"},
            "verdict=defect, no match (g9)": {"group": "g9", "verdict": "defect"},
            "one day, 15 days back": {"group": "g3", "since": day.isoformat(),
                                      "until": (day + timedelta(days=1)).isoformat()},
            "feedback=wrong": {"group": "g3", "feedback": "wrong"},
            "feedback=any": {"group": "g3", "feedback": "any"},
            "newest page, all groups": {}}
    out: dict[str, float] = {}
    try:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=600) as c:
            for name, params in asks.items():
                best = float("inf")
                for _ in range(3):
                    t0 = time.perf_counter()
                    r = c.get("/api/v1/results", params=params)
                    best = min(best, time.perf_counter() - t0)
                    assert r.status_code == 200, r.text
                out[name] = best * 1e3
            out["newest page, a key of 2 groups"] = scoped_page(c)
            t0 = time.perf_counter()
            lines = 0
            with c.stream("GET", "/api/v1/results.csv",
                          params={"group": "g3", "verdict": "defect"}) as r:
                for chunk in r.iter_bytes():
                    lines += chunk.count(b"\n")
            secs = time.perf_counter() - t0
            out["csv rows"] = lines - 1
            out["csv rows/s"] = (lines - 1) / secs
    finally:
        srv.stop()
    return out


def scoped_page(c: httpx.Client) -> float:
    """Best of 3 ms for the newest page of a key scoped to g3 and g4; NaN where the
    server has no scoped keys (before 0010)."""
    r = c.post("/api/v1/keys", json={"role": "operator", "groups": ["g3", "g4"]})
    if r.status_code != 201:
        return float("nan")
    key = r.json()["key"]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        got = c.get("/api/v1/results", headers={"Authorization": f"Bearer {key}"})
        best = min(best, time.perf_counter() - t0)
        assert got.status_code == 200, got.text
    return best * 1e3


def write_load(url: str, seconds: float | None, stop: object = None, writers: int = 4
               ) -> tuple[list[float], int, int]:
    """`writers` threads storing one result each per transaction (with its audit event and
    feedback on one in ten), for `seconds` or until `stop` (a threading.Event) is set:
    latencies, writes, errors."""
    import threading

    from storage import repositories as repo
    from storage.db import make_engine, make_sessionmaker
    from storage.tables import Feedback

    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    row: repo.ResultRow = {"group_name": "g0", "filename": "w.png", "sha256": "0" * 64,
                           "class_id": None, "label": "ok", "unknown": False, "score": 0.9,
                           "method": "protonet", "model_version": "bench", "key_id": None}
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    end = time.monotonic() + (seconds or 1e9)
    done = cast(threading.Event, stop) if stop is not None else threading.Event()

    def worker() -> None:
        n = 0
        while time.monotonic() < end and not done.is_set():
            t0 = time.perf_counter()
            try:
                with sessions.begin() as s:
                    (rid,) = repo.add_classifications(s, [row], "bench")
                    if n % 10 == 0:
                        s.add(Feedback(result_id=rid, correct=True))
                ok = True
            except Exception:
                ok = False
            with lock:
                lat.append(time.perf_counter() - t0)
                errors[0] += not ok
            n += 1

    threads = [threading.Thread(target=worker) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()
    return sorted(lat), len(lat), errors[0]


def upgrade_under_writes(url: str, rows: int, seconds: float = 10) -> None:
    """Step 3: the upgrade to head while the writers run, against them alone."""
    import threading

    write_load(url, 2)  # warm-up
    alone, n_alone, e_alone = write_load(url, seconds)
    stop = threading.Event()
    out: dict[str, tuple[list[float], int, int]] = {}
    loader = threading.Thread(target=lambda: out.setdefault("w", write_load(url, None, stop)))
    loader.start()
    try:
        took = migrate_to(url, "head")
    finally:
        stop.set()
        loader.join()
    during, n_during, e_during = out["w"]

    def p99(xs: list[float]) -> float:
        return xs[int(0.99 * (len(xs) - 1))] * 1e3

    print(f"upgrade 0008 -> head (64-bit ids, indexes) at {rows:,} results, 4 writers "
          f"running: {took:.1f} s")
    print(f"  writers alone ({seconds:g} s): {n_alone / seconds:.0f} writes/s, p99 "
          f"{p99(alone):.1f} ms, longest {alone[-1] * 1e3:.0f} ms, {e_alone} errors")
    print(f"  during the upgrade: {n_during / took:.0f} writes/s, p99 {p99(during):.1f} ms, "
          f"longest {during[-1] * 1e3:.0f} ms, {e_during} errors")


def classify_load(url: str, key: str, group: str, seconds: float, clients: int = 4
                  ) -> tuple[list[float], int]:
    """`clients` keep-alive clients, one 224 px image per request: latencies and errors."""
    import threading

    from bench.imagegen import sample

    images = [sample("brick", ("scratch", None)[i % 2], 70_000 + i, 224) for i in range(16)]
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(w: int) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                          timeout=60) as c:
            i = w
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                try:
                    ok = c.post("/api/v1/classify", params={"group": group}, files=[
                        ("files", ("q.png", images[i % 16], "image/png"))]).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with lock:
                    lat.append(time.perf_counter() - t0)
                    errors[0] += not ok
                i += clients

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(lat), errors[0]


def archive_under_load(url: str, tmp: Path, seconds: float = 15, duty: float = 0.2,
                       batch: int = 1000, clients: int = 4) -> None:
    """Step 4: the oldest day archived while classification runs."""
    import threading

    from sqlalchemy import text

    from bench.classify import enrol_ten
    from storage.archive import ArchiveReport, archive
    from storage.db import make_engine, make_sessionmaker
    from storage.objects import LocalObjects

    srv = Server(tmp / "load" / "data", {"FSDI_ADMIN_KEY": KEY, "FSDI_DATABASE_URL": url,
                                         "FSDI_MODEL_CACHE_DIR": str(tmp / "onnx")}
                 ).start(timeout=300)
    engine = make_engine(url)
    try:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=120) as c:
            group = f"live-{os.getpid()}"
            enrol_ten(c, group)
            key = str(c.post("/api/v1/keys", json={"role": "machine"}).json()["key"])
        classify_load(srv.url, key, group, 3, clients)  # warm-up
        alone, alone_errors = classify_load(srv.url, key, group, seconds, clients)
        with engine.connect() as conn:
            first = conn.execute(text("SELECT min(created_at) FROM classification_results")
                                 ).scalar_one()
        day_end = first.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        done: dict[str, object] = {}

        def run() -> None:
            t0 = time.perf_counter()
            done["report"] = archive(make_sessionmaker(engine), LocalObjects(tmp / "archive"),
                                     day_end, batch=batch, duty=duty)
            done["seconds"] = time.perf_counter() - t0

        worker = threading.Thread(target=run)
        worker.start()
        loaded, loaded_errors = classify_load(srv.url, key, group, seconds, clients)
        worker.join()
    finally:
        srv.stop()
        engine.dispose()
    report = cast(ArchiveReport, done["report"])
    p99 = alone[int(0.99 * (len(alone) - 1))], loaded[int(0.99 * (len(loaded) - 1))]
    print(f"archive of the oldest day (duty {duty:g}, batch {batch}, {clients} clients): "
          f"{report.rows:,} rows in "
          f"{len(report.files)} files, "
          f"{done['seconds']:.1f} s; classification alone p99 {p99[0] * 1e3:.1f} ms "
          f"({alone_errors} errors), during the archive p99 {p99[1] * 1e3:.1f} ms "
          f"({loaded_errors} errors): {p99[1] / p99[0]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--before", default="",
                    help="the commit whose code (schema 0008) serves the 'before' column "
                    "(none: the 'before' column is not measured)")
    ap.add_argument("--pg", default=os.environ.get(
        "FSDI_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--archive-only", metavar="URL",
                    help="only step 4, on a database an earlier run left (its oldest day)")
    ap.add_argument("--duty", type=float, default=0.2, help="the archive's share of time")
    ap.add_argument("--batch", type=int, default=1000, help="rows the archive deletes at once")
    ap.add_argument("--no-archive", action="store_true", help="skip step 4")
    ap.add_argument("--clients", type=int, default=4, help="step 4's classifying clients")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fsdi-history-"))
    if a.archive_only:
        archive_under_load(a.archive_only, tmp, duty=a.duty, batch=a.batch, clients=a.clients)
        return
    url = fresh_database(a.pg)
    migrate_to(url, "0008")
    print(f"filled {a.rows:,} results in {fill(url, a.rows):.1f} s")
    before: dict[str, float] = {}
    if a.before:
        tree = tmp / "tree"
        try:
            before = timed_queries(url, tmp / "before" / "data", checkout(a.before, tree))
        finally:
            remove_checkout(tree)
    upgrade_under_writes(url, a.rows)
    after = timed_queries(url, tmp / "after" / "data")
    nan = float("nan")
    print(f"{'first page (ms, best of 3)':<34} {'before':>10} {'after':>10}")
    for name in after:
        if name.startswith("csv"):
            continue
        print(f"{name:<34} {before.get(name, nan):10.1f} {after[name]:10.1f}")
    print(f"results.csv of g3's defects ({after['csv rows']:,.0f} rows): before "
          f"{before.get('csv rows/s', nan):,.0f} rows/s, after {after['csv rows/s']:,.0f} "
          "rows/s")
    if not a.no_archive:
        archive_under_load(url, tmp, duty=a.duty, batch=a.batch, clients=a.clients)


if __name__ == "__main__":
    main()
