"""Result rows out of the database: archived to Parquet (`fsdi results archive`) or, past
FSDI_RESULT_RETENTION_DAYS, deleted; in both cases in small batches, so classification
never waits behind one long delete.

The archive is hive-partitioned by group and day, one file per (group, day) and run:
`results/group=<group>/day=<YYYY-MM-DD>/part-<first id>-<last id>.parquet`, in the object
store a URL names (a local directory or `s3://…`). Each file is read back and its row
count checked before any of its rows is deleted. Each row carries the result and its
latest feedback (the feedback rows go with their result).

    duckdb -c "SELECT day, verdict, count(*) FROM read_parquet('ARCHIVE/results/*/*/*.parquet',
               hive_partitioning = true) GROUP BY ALL"
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.objects import ObjectStore
from storage.repositories import EXPORT_COLUMNS, ResultFilter, stream_results
from storage.tables import ClassificationResult

PREFIX = "results/"


@dataclass
class ArchiveReport:
    files: list[str] = field(default_factory=list)
    rows: int = 0
    deleted: int = 0


def _days(s: Session, before: datetime) -> Iterator[tuple[str, datetime]]:
    """(group, day start) of every result older than `before`, oldest day first."""
    r = ClassificationResult
    first = s.scalar(select(func.min(r.created_at)).where(r.created_at < before))
    if first is None:
        return
    day = first.replace(hour=0, minute=0, second=0, microsecond=0)
    while day < before:
        end = min(day + timedelta(days=1), before)
        groups = s.scalars(select(r.group_name).where(r.created_at >= day, r.created_at < end)
                           .distinct().order_by(r.group_name)).all()
        for g in groups:
            yield g, day
        day += timedelta(days=1)


def _table(rows: list[tuple[object, ...]]):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    columns: list[tuple[object, ...]] = (list(zip(*rows, strict=True)) if rows
                                         else [() for _ in EXPORT_COLUMNS])
    return pa.table({name: list(col) for name, col in zip(EXPORT_COLUMNS, columns,
                                                          strict=True)})


def archive(sessions: sessionmaker[Session], store: ObjectStore, before: datetime,
            batch: int = 1000, progress: Callable[[int], None] | None = None,
            duty: float = 0.2) -> ArchiveReport:
    """Write every result older than `before` to Parquet in `store`, check each file, then
    delete its rows `batch` at a time. A rerun after an interruption writes the rows left
    (a file whose rows were not all deleted is written again under its own name: its
    first and last ids, so a reader may see a row twice only if a run died between
    checking a file and deleting its rows). `duty`: the share of the time it works; it
    rests the rest after each file and batch, so that the service's own work (on the
    same cores and database) keeps its pace."""
    import pyarrow.parquet as pq

    report = ArchiveReport()
    pace = _Pace(duty)
    with sessions() as s:
        parts = list(_days(s, before))
    for group, day in parts:
        pace.rest()
        end = min(day + timedelta(days=1), before)
        f = ResultFilter(group=group, since=day, until=end)
        with sessions() as s:
            rows: list[tuple[object, ...]] = [
                row for chunk in stream_results(s, f, batch=batch) for row in chunk]
        if not rows:
            continue
        rows.reverse()  # oldest first
        buf = io.BytesIO()
        pq.write_table(_table(rows), buf, compression="zstd")
        data = buf.getvalue()
        key = (f"{PREFIX}group={group}/day={day:%Y-%m-%d}/"
               f"part-{rows[0][0]}-{rows[-1][0]}.parquet")
        store.put(key, data)
        back = store.get(key)
        if back is None or pq.read_metadata(io.BytesIO(back)).num_rows != len(rows):
            raise RuntimeError(f"{key}: the archived file does not read back with "
                               f"{len(rows)} rows; nothing of it was deleted")
        report.files.append(key)
        report.rows += len(rows)
        report.deleted += delete_results(sessions, [cast(int, r[0]) for r in rows], batch,
                                         pace)
        if progress is not None:
            progress(len(rows))
    return report


class _Pace:
    """Rest after each piece of work so that work takes `duty` of the time."""

    def __init__(self, duty: float) -> None:
        self.duty = min(1.0, max(0.05, duty))
        self.since = time.monotonic()

    def rest(self) -> None:
        worked = time.monotonic() - self.since
        time.sleep(worked * (1.0 / self.duty - 1.0))
        self.since = time.monotonic()


def delete_results(sessions: sessionmaker[Session], ids: list[int], batch: int = 5000,
                   pace: _Pace | None = None) -> int:
    """Delete these results (and their feedback, by cascade) `batch` per transaction."""
    deleted = 0
    for i in range(0, len(ids), batch):
        if pace is not None:
            pace.rest()
        with sessions.begin() as s:
            res = s.execute(delete(ClassificationResult)
                            .where(ClassificationResult.id.in_(ids[i:i + batch])))
            deleted += int(res.rowcount or 0)  # type: ignore[attr-defined]
    return deleted


def prune_results(sessions: sessionmaker[Session], older_than: datetime,
                  batch: int = 5000) -> int:
    """Delete results created before `older_than` (FSDI_RESULT_RETENTION_DAYS), oldest
    first, `batch` per transaction; replicas may prune at once."""
    r = ClassificationResult
    deleted = 0
    while True:
        with sessions() as s:
            ids = list(s.scalars(select(r.id).where(r.created_at < older_than)
                                 .order_by(r.id).limit(batch)))
        if not ids:
            return deleted
        deleted += delete_results(sessions, ids, batch)
