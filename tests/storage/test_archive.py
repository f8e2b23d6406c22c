"""Result rows out of the database: archived to Parquet on both stores, or pruned past
their retention; on SQLite and PostgreSQL."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from storage import repositories as repo
from storage.archive import archive, prune_results
from storage.db import make_engine, make_sessionmaker
from storage.migrate import upgrade
from storage.objects import LocalObjects, open_objects
from storage.tables import ClassificationResult, Feedback
from tests.conftest import S3_ENDPOINT

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def results(db_url: str):  # type: ignore[no-untyped-def]
    """A database with 3 days x 2 groups x 4 results (6 h apart), one with feedback."""
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as s:
        for h in range(0, 72, 6):
            for g in ("line-a", "line-b"):
                s.add(ClassificationResult(
                    group_name=g, filename=f"{g}-{h}.png", sha256="0" * 64, label="scratch",
                    unknown=False, score=0.9, method="protonet", model_version="m",
                    created_at=T0 + timedelta(hours=h), verdict="defect",
                    anomaly_score=0.5, anomaly_threshold=0.4))
        s.flush()
        first = s.scalar(select(func.min(ClassificationResult.id)))
        s.add(Feedback(result_id=first, correct=False))
    return engine, sessions


def count(sessions, **where) -> int:  # type: ignore[no-untyped-def]
    with sessions() as s:
        q = select(func.count()).select_from(ClassificationResult)
        for k, v in where.items():
            q = q.where(getattr(ClassificationResult, k) < v)
        return int(s.scalar(q) or 0)


def test_archive_writes_parquet_by_group_and_day_checks_it_then_deletes(
        db_url: str, blob_url: str | None, tmp_path: Path) -> None:
    engine, sessions = results(db_url)
    store = open_objects(blob_url or str(tmp_path / "archive"), tmp_path, S3_ENDPOINT)
    cutoff = T0 + timedelta(days=2)  # the first two days
    report = archive(sessions, store, cutoff, batch=3)
    assert report.rows == report.deleted == 16 and len(report.files) == 4
    assert sorted(k.split("/")[1:3] for k in report.files) == [
        ["group=line-a", "day=2026-11-01"], ["group=line-a", "day=2026-11-02"],
        ["group=line-b", "day=2026-11-01"], ["group=line-b", "day=2026-11-02"]]
    assert count(sessions) == 8 and count(sessions, created_at=cutoff) == 0
    with sessions() as s:  # the archived result's feedback went with it
        assert s.scalar(select(func.count()).select_from(Feedback)) == 0
    tables = [pq.read_table(io.BytesIO(store.get(k) or b"")) for k in report.files]
    assert sum(t.num_rows for t in tables) == 16
    row = min((r for t in tables for r in t.to_pylist()), key=lambda r: r["id"])
    assert row["filename"] == "line-a-0.png" and row["feedback_correct"] is False
    assert row["verdict"] == "defect" and row["created_at"] == T0
    if isinstance(store, LocalObjects):  # readers take the layout as it stands
        table = ds.dataset(str(store.root / "results"), partitioning="hive").to_table()
        assert table.num_rows == 16 and set(table.column("day").to_pylist()) == {
            "2026-11-01", "2026-11-02"}
    again = archive(sessions, store, cutoff)  # nothing left to archive
    assert again.rows == 0 and again.files == []
    engine.dispose()


def test_an_unreadable_archive_deletes_nothing(db_url: str, tmp_path: Path) -> None:
    engine, sessions = results(db_url)
    store = open_objects(str(tmp_path / "archive"), tmp_path)
    store.get = lambda key: b"not parquet at all"  # type: ignore[method-assign]
    with pytest.raises(Exception):  # noqa: B017  (pyarrow's own error for a bad file)
        archive(sessions, store, T0 + timedelta(days=3))
    assert count(sessions) == 24
    engine.dispose()


def test_retention_prunes_old_results_in_batches(db_url: str) -> None:
    engine, sessions = results(db_url)
    assert prune_results(sessions, T0 + timedelta(hours=30), batch=4) == 10
    assert count(sessions) == 14 and count(sessions, created_at=T0 + timedelta(hours=30)) == 0
    with sessions() as s:
        page = repo.results_page(s, repo.ResultFilter(group="line-a"), None, 100)
    assert len(page) == 7
    engine.dispose()
