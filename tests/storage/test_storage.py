"""Blob store and repositories on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from storage import repositories as repo
from storage.blobs import BlobStore, blob_key, sha256_hex
from storage.db import make_engine, make_sessionmaker
from storage.migrate import upgrade
from storage.objects import LocalObjects, StoreUnavailable
from storage.packs import PackStore, PackUnavailable
from storage.stores import open_stores
from storage.tables import (
    AuditEvent,
    ClassificationResult,
    DefectClass,
    Embedding,
    SupportImage,
)
from tests.conftest import S3_ENDPOINT, fresh_pg_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from fresh_pg_database()


def test_blob_store_dedups_and_sweeps(tmp_path: Path, blob_url: str | None) -> None:
    store, _ = open_stores(blob_url, tmp_path, S3_ENDPOINT)
    d1, new1 = store.put(b"abc")
    d2, new2 = store.put(b"abc")
    assert d1 == d2 == sha256_hex(b"abc") and new1 and not new2
    assert store.get(d1) == b"abc" and store.get(sha256_hex(b"never")) is None
    orphan, _ = store.put(b"orphan")
    leftover = None
    if isinstance(store.objects, LocalObjects):  # an object store has no half-written files
        leftover = store.objects.path(blob_key(d1)).parent / ".tmp-crash"
        leftover.write_bytes(b"half")
    asked: list[set[str]] = []

    def referenced(ds: set[str]) -> set[str]:
        asked.append(ds)
        return ds & {d1}

    assert store.sweep(referenced, min_age_s=3600) == 0  # too young: maybe another replica's
    assert asked == []  # nothing old enough to ask about
    assert store.sweep(referenced) == 1 + (leftover is not None)
    assert asked == [{d1, orphan}]
    assert store.exists(d1) and not store.exists(orphan)
    assert leftover is None or not leftover.exists()
    assert store.all_digests() == {d1}
    with pytest.raises(ValueError):
        blob_key("../../etc/passwd")
    if isinstance(store.objects, LocalObjects):
        assert oct(os.stat(store.objects.path(blob_key(d1))).st_mode)[-3:] in {"600", "644"}


def test_blob_put_leaves_nothing_when_it_fails(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path / "blobs")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StoreUnavailable):
        store.put(b"other")
    folder = tmp_path / blob_key(sha256_hex(b"other"))
    assert not store.exists(sha256_hex(b"other")) and list(folder.parent.iterdir()) == []


def test_pack_store_appends_reads_back_and_rolls_over(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    packs = PackStore(tmp_path / "packs", max_bytes=100)
    datas = [bytes([i]) * n for i, n in enumerate((60, 50, 10, 0, 120))]
    refs = [packs.append(d) for d in datas]
    assert [packs.read(r) for r in refs] == datas
    names = [r.split(":")[0] for r in refs]
    assert names[0] == names[1] != names[2] == names[3] == names[4]  # rolled over at 100 B
    assert sorted(p.name for p in (tmp_path / "packs").iterdir()) == sorted(set(names))
    for bad in ("", "x:1:2", f"{names[0]}:0", f"../{names[0]}:0:1", f"{names[0]}:-1:5",
                f"{names[0]}:108:5", f"{'1' * 19}-{'a' * 12}.pack:0:1"):
        assert packs.read(bad) is None  # malformed, outside the pack, or no such pack

    def disk_full(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError):
        packs.append(b"lost")
    monkeypatch.undo()
    opened: list[object] = []
    real_open = os.open

    def counting_open(*args: Any, **kwargs: Any) -> int:
        opened.append(args)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    with pytest.raises(PackUnavailable):  # paused: a full disk is not retried per image
        packs.append(b"paused")
    assert opened == []
    later = time.monotonic() + packs.retry_s + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    after = packs.append(b"next")  # a new pack: never append after a torn tail
    assert after.split(":")[0] not in names and packs.read(after) == b"next"
    assert len(opened) == 1
    packs.close()


def test_pack_store_prunes_packs_last_written_before_the_cutoff(tmp_path: Path) -> None:
    root = tmp_path / "packs"
    other = PackStore(root, max_bytes=10)  # another replica's packs on the same volume
    old_refs = [other.append(b"x" * 10) for _ in range(2)]
    other.close()
    packs = PackStore(root)
    current = packs.append(b"now")
    stranger = root / "notes.txt"
    stranger.write_text("not a pack")
    day_ago = time.time() - 86_400
    for p in (*root.glob("*.pack"), stranger):
        os.utime(p, (day_ago, day_ago))  # the current pack too: it is still never pruned
    assert packs.prune(older_than_s=2 * 86_400) == 0
    assert packs.prune(older_than_s=3600) == 2
    assert [packs.read(r) for r in old_refs] == [None, None]
    assert packs.read(current) == b"now" and stranger.exists()
    assert PackStore(tmp_path / "none").prune(0) == 0  # no folder yet
    packs.close()


def test_schema_and_repositories(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    upgrade(engine)  # idempotent
    assert {"classes", "support_images", "embeddings", "api_keys"} <= set(
        inspect(engine).get_table_names())
    sessions = make_sessionmaker(engine)
    vec = np.arange(8, dtype=np.float32) / 7
    with sessions.begin() as s:
        c = DefectClass(name="scratch", group_name="line1", description="")
        img = SupportImage(sha256="a" * 64, original_name="a.png", byte_size=3, width=1,
                           height=1)
        img.embeddings.append(Embedding(backbone="b", weights_sha256="f" * 64,
                                        model_version="b@ff", dim=8,
                                        vector=repo.vector_to_bytes(vec)))
        c.images.append(img)
        s.add(c)
    with sessions() as s:
        rows = repo.embeddings_for(s, "b@ff")
        assert len(rows) == 1 and np.array_equal(rows[0].vector, vec)
        assert repo.embeddings_for(s, "other@00") == []
        assert repo.count_images_missing_version(s, "other@00") == 1
        assert repo.image_counts(s, [c.id]) == {c.id: 1}
    with pytest.raises(IntegrityError), sessions.begin() as s:
        s.add(DefectClass(name="scratch", group_name="line1", description=""))
    with sessions.begin() as s:
        cls = repo.find_class(s, "line1", "scratch")
        assert cls is not None
        assert repo.delete_class(s, cls) == ["a" * 64]
    with sessions() as s:  # the database cascades images and embeddings
        assert repo.embeddings_for(s, "b@ff") == []
        assert not repo.sha_referenced(s, "a" * 64)
    engine.dispose()


def add_class(sessions: Any, name: str, group: str) -> int:
    """A committed class; its id."""
    with sessions.begin() as s:
        cls = DefectClass(name=name, group_name=group, description="")
        s.add(cls)
        s.flush()
        return int(cls.id)


def test_add_classifications_bulk_returns_ids_in_order_with_audit(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    cid = add_class(sessions, "scratch", "bulk")
    rows: list[repo.ResultRow] = [
        {"group_name": "bulk", "filename": f"{i}.jpg", "sha256": f"{i:064d}",
         "class_id": None if i == 1 else cid, "label": None if i == 1 else "scratch",
         "unknown": i == 1, "score": 0.5 + i / 10, "method": "protonet",
         "model_version": "m@1", "key_id": None} for i in range(3)]
    with sessions.begin() as s:
        ids = repo.add_classifications(s, rows, "tester")
    assert len(ids) == 3 and ids == sorted(ids)
    with sessions() as s:
        for rid, row in zip(ids, rows, strict=True):
            got = s.get(ClassificationResult, rid)
            assert got is not None and got.filename == row["filename"]
            assert got.unknown == row["unknown"] and got.created_at is not None
        details = [e.detail for e in s.scalars(
            select(AuditEvent).where(AuditEvent.actor == "tester").order_by(AuditEvent.id))]
    assert details[-3:] == [
        f"result={ids[i]} group=bulk sha256={i:064d} model=m@1 method=protonet "
        f"decision={'unknown' if i == 1 else f'class={cid}'}" for i in range(3)]
    gone: list[repo.ResultRow] = [{**rows[0], "class_id": 10**6}]  # deleted meanwhile
    with sessions.begin() as s:
        (rid,) = repo.add_classifications(s, gone, "tester")
    with sessions() as s:
        got = s.get(ClassificationResult, rid)
        assert got is not None and got.class_id is None and got.label == "scratch"
    engine.dispose()


def test_times_read_back_are_utc_on_every_backend(db_url: str) -> None:
    """SQLite keeps no time zone: a time read back must still be the aware UTC it was
    written as, or the API would print it without its zone (read as local time)."""
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    written = datetime(2026, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    with sessions.begin() as s:
        s.add(DefectClass(name="dent", group_name="g", description="", created_at=written))
        s.add(AuditEvent(actor="t", action="test", detail=""))
    with sessions() as s:
        c = s.scalars(select(DefectClass)).one()
        assert c.created_at.utcoffset() == timedelta(0) and c.created_at == written
        at = s.scalars(select(AuditEvent.at)).one()
        assert at.utcoffset() == timedelta(0)
        assert abs((datetime.now(UTC) - at).total_seconds()) < 60
        assert s.scalars(select(DefectClass).where(DefectClass.created_at < written
                                                   + timedelta(seconds=1))).one() is c
    engine.dispose()


def test_referenced_digests_finds_support_and_pre_pack_query_images(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    support, legacy_query, orphan, other, packed = (f"{c}" * 64 for c in "abcde")
    with sessions.begin() as s:
        c = DefectClass(name="scratch", group_name="g", description="")
        c.images.append(SupportImage(sha256=support, original_name="s.png", byte_size=1,
                                     width=1, height=1))
        s.add(c)
        repo.add_classifications(s, [
            {"group_name": "g", "filename": f"{d[0]}.jpg", "sha256": d, "class_id": None,
             "label": None, "unknown": True, "score": 0.5, "method": "protonet",
             "model_version": "m@1", "key_id": None, "image_ref": ref}
            for d, ref in ((legacy_query, None), (other, None), (packed, "p.pack:0:9"))], "t")
    with sessions() as s:
        # A result whose image lies in a pack owns no blob: a blob of that digest is an
        # orphan unless a support image claims it.
        asked = {support, legacy_query, orphan, packed}
        assert repo.referenced_digests(s, asked, chunk=2) == {support, legacy_query}
        assert repo.referenced_digests(s, set()) == set()
    engine.dispose()


def test_migrated_schema_matches_the_tables(db_url: str) -> None:
    """What the migrations build is what storage/tables.py declares (alembic's own diff)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from storage.tables import Base

    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert [d for d in diff if d[0] != "modify_nullable"] == [], diff


def test_class_ids_are_never_reused_and_references_are_real(db_url: str) -> None:
    """Finding E: delete the newest class, create another: it gets a new id, and results or
    feedback that named the deleted class now name no class."""
    from storage.tables import Feedback

    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    old_id = add_class(sessions, "x", "line1")
    with sessions.begin() as s:
        res = ClassificationResult(group_name="line1", filename="q.png", sha256="b" * 64,
                                   class_id=old_id, label="x", unknown=False, score=0.9,
                                   method="protonet", model_version="m")
        s.add(res)
        s.flush()
        s.add(Feedback(result_id=res.id, correct=False, class_id=old_id))
        res_id = res.id
    with sessions.begin() as s:
        s.delete(s.get(DefectClass, old_id))
    assert add_class(sessions, "y", "other-line") > old_id
    with sessions() as s:
        assert s.get(ClassificationResult, res_id).class_id is None  # type: ignore[union-attr]
        assert s.scalar(select(Feedback.class_id).where(Feedback.result_id == res_id)) is None
    with pytest.raises(IntegrityError) as err, sessions.begin() as s:  # no dangling refs
        s.add(Feedback(result_id=res_id, correct=False, class_id=10**6))
    # a failed statement never carries its bound values into a log line (finding H)
    assert "parameters hidden" in str(err.value) and "[parameters:" not in str(err.value)
    engine.dispose()


def test_migration_0006_keeps_support_sets_and_skips_every_id_ever_referenced(
        tmp_path: Path) -> None:
    """An existing SQLite database from before 0006: recreating the classes table must not
    cascade to its images, orphaned references are cleared, and the next class id is above
    every id a result or feedback ever named."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from storage.migrate import MIGRATIONS

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
        conn.execute(text("INSERT INTO classes (id, name, group_name, description, created_at)"
                          " VALUES (1, 'a', 'g', '', '2026-01-01'), (2, 'b', 'g', '', "
                          "'2026-01-01')"))
        conn.execute(text("INSERT INTO support_images (id, class_id, sha256, original_name, "
                          "byte_size, width, height, created_at) VALUES (1, 2, :h, 'i.png', 1,"
                          " 1, 1, '2026-01-01')"), {"h": "c" * 64})
        conn.execute(text("INSERT INTO classification_results (id, group_name, filename, "
                          "sha256, class_id, unknown, score, method, model_version, "
                          "created_at) VALUES (1, 'g', 'q', :h, 7, 0, 0.5, 'p', 'm', "
                          "'2026-01-01'), (2, 'g', 'q', :h, 2, 0, 0.5, 'p', 'm', "
                          "'2026-01-01')"), {"h": "d" * 64})
    upgrade(engine)
    with make_sessionmaker(engine).begin() as s:
        assert s.get(SupportImage, 1) is not None, "recreating classes cascaded to images"
        assert s.get(ClassificationResult, 1).class_id is None  # type: ignore[union-attr]
        assert s.get(ClassificationResult, 2).class_id == 2  # type: ignore[union-attr]
        new = DefectClass(name="c", group_name="g", description="")
        s.add(new)
        s.flush()
        assert new.id > 7
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_results_outgrow_32_bit_ids_after_the_upgrade(db_url: str) -> None:
    """A database at revision 0008 with a result and its feedback: after the upgrade both
    are intact, and a result past 2^31 is stored, found, and given feedback."""
    from alembic import command
    from alembic.config import Config

    from storage.migrate import MIGRATIONS
    from storage.tables import Feedback

    engine = make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0008")
    sessions = make_sessionmaker(engine)
    row: repo.ResultRow = {"group_name": "g", "filename": "f", "sha256": "0" * 64,
                           "class_id": None, "label": None, "unknown": True, "score": 0.0,
                           "method": "protonet", "model_version": "m", "key_id": None}
    with sessions.begin() as s:
        (old,) = repo.add_classifications(s, [dict(row)], "a")  # type: ignore[list-item]
        s.add(Feedback(result_id=old, correct=True))
    upgrade(engine)
    big = 2**31 + 7
    with sessions.begin() as s:
        s.add(ClassificationResult(id=big, **row))
        s.flush()
        s.add(Feedback(result_id=big, correct=False))
    with sessions() as s:
        assert repo.get_result(s, old) is not None and repo.get_result(s, big) is not None
        page = repo.results_page(s, repo.ResultFilter(group="g"), None, 10)
        assert [h.result.id for h in page] == [big, old]
        assert [h.feedback_correct for h in page] == [False, True]
    engine.dispose()


def test_a_time_window_finds_exactly_its_rows_when_ids_and_clocks_disagree(db_url: str
                                                                           ) -> None:
    """Replicas' clocks differ: a later id may carry an earlier time. A window still
    returns every row whose time lies in it, newest id first, page by page."""
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    minutes = [5, 1, 9, 3, 7, 2, 8, 4, 6, 0]  # in id order: times jump back and forth
    with sessions.begin() as s:
        for m in minutes:
            s.add(ClassificationResult(group_name="g", filename=f"{m}", sha256="0" * 64,
                                       unknown=False, score=1.0, method="protonet",
                                       model_version="m", created_at=t0 + timedelta(minutes=m)))
        s.add(ClassificationResult(group_name="other", filename="x", sha256="0" * 64,
                                   unknown=False, score=1.0, method="protonet",
                                   model_version="m", created_at=t0 + timedelta(minutes=4)))
    f = repo.ResultFilter(group="g", since=t0 + timedelta(minutes=2),
                          until=t0 + timedelta(minutes=7))
    with sessions() as s:
        first = repo.results_page(s, f, None, 2)
        rest = repo.results_page(s, f, first[-1].result.id, 10)
        every = list(repo.stream_results(s, f))
    got = [h.result.filename for h in first + rest]
    assert got == ["6", "4", "2", "3", "5"]  # minutes 2..6, newest id first
    assert [r[3] for part in every for r in part] == got
    engine.dispose()


def test_history_merges_a_keys_groups_and_both_verdicts_by_the_latest_feedback(
        db_url: str) -> None:
    """A scoped key's groups and "any feedback" are read as one walk per group and
    verdict, merged: pages come newest first across them, without gaps or repeats, and a
    result's verdict is its latest feedback's (a second judgement overrides the first)."""
    from storage.tables import Feedback

    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    row: repo.ResultRow = {"group_name": "g", "filename": "f", "sha256": "0" * 64,
                           "class_id": None, "label": "a", "unknown": False, "score": 0.5,
                           "method": "protonet", "model_version": "m", "key_id": None}
    with sessions.begin() as s:
        ids = repo.add_classifications(
            s, [{**row, "group_name": "abc"[i % 3]} for i in range(40)], "a")
        for i, rid in enumerate(ids):
            if i % 4 == 0:
                s.add(Feedback(result_id=rid, correct=i % 8 == 0))
        s.flush()
        s.add(Feedback(result_id=ids[8], correct=False))  # judged again: now wrong
    latest = {rid: i % 8 == 0 and i != 8 for i, rid in enumerate(ids) if i % 4 == 0}
    in_ab = [rid for i, rid in enumerate(ids) if i % 3 != 2]

    def every_page(f: repo.ResultFilter) -> list[tuple[int, bool | None]]:
        got: list[tuple[int, bool | None]] = []
        cursor = None
        with sessions() as s:
            while page := repo.results_page(s, f, cursor, 3):
                got += [(h.result.id, h.feedback_correct) for h in page]
                cursor = page[-1].result.id
        return got

    ab = ("a", "b")
    assert every_page(repo.ResultFilter(groups=ab)) == [
        (r, latest.get(r)) for r in reversed(in_ab)]
    assert every_page(repo.ResultFilter(groups=ab, feedback="any")) == [
        (r, latest[r]) for r in reversed(in_ab) if r in latest]
    assert every_page(repo.ResultFilter(groups=ab, feedback="wrong")) == [
        (r, False) for r in reversed(in_ab) if latest.get(r) is False]
    assert every_page(repo.ResultFilter(feedback="correct")) == [
        (r, True) for r in reversed(ids) if latest.get(r) is True]
    assert every_page(repo.ResultFilter(group="c", feedback="none")) == [
        (r, None) for i, r in reversed(list(enumerate(ids))) if i % 3 == 2 and r not in latest]
    assert every_page(repo.ResultFilter(group="c", groups=ab)) == []
    # merged walks each with a time window (the window's bounds once per walk)
    since = datetime(2000, 1, 1, tzinfo=UTC)
    assert every_page(repo.ResultFilter(groups=ab, feedback="any", since=since)) == [
        (r, latest[r]) for r in reversed(in_ab) if r in latest]
    wrong_c = every_page(repo.ResultFilter(group="c", feedback="wrong"))
    assert wrong_c == [(r, False) for i, r in reversed(list(enumerate(ids)))
                       if i % 3 == 2 and latest.get(r) is False]
    assert (ids[8], False) in wrong_c  # right at first, judged wrong since
    engine.dispose()


def test_ids_widen_to_64_bit_while_results_keep_being_written_and_read(pg_url: str) -> None:
    """PostgreSQL at 0008 with results, feedback and audit rows: the upgrade to head runs
    while two writers store classifications with feedback and a reader pages the history
    as the previous release does (each with the service's own engine, prepared statements
    and all). No write or read fails, every row keeps its id and its feedback, each result
    carries its latest feedback's verdict, ids past 2^31 are stored afterwards, the audit
    log still refuses changes, and no index or constraint is left behind."""
    import threading

    from sqlalchemy import text

    from storage.tables import Feedback

    url = pg_url
    engine = make_engine(url)
    upgrade(engine, "0008")
    sessions = make_sessionmaker(engine)
    row: repo.ResultRow = {"group_name": "g", "filename": "f", "sha256": "0" * 64,
                           "class_id": None, "label": "a", "unknown": False,
                           "score": 0.5, "method": "protonet", "model_version": "m",
                           "key_id": None}
    with sessions.begin() as s:
        first = repo.add_classifications(s, [row] * 30_000, "a")
        for rid in first[::100]:
            s.add(Feedback(result_id=rid, correct=rid % 2 == 0))
        repo.audit(s, "admin", "seed", "before")
    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                with sessions.begin() as s:
                    (rid,) = repo.add_classifications(s, [row], "a")
                    s.add(Feedback(result_id=rid, correct=True))
                    repo.audit(s, "machine", "classify", str(rid))
                written.append(rid)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def reader() -> None:
        try:
            while not stop.is_set():
                with sessions() as s:  # the columns every revision on the way has
                    r = ClassificationResult
                    page = s.execute(select(r.id, r.label).where(r.group_name == "g")
                                     .order_by(r.id.desc()).limit(50)).all()
                    assert page and page[0].id >= first[-1]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=f) for f in (writer, writer, reader)]
    for t in threads:
        t.start()
    try:
        upgrade(make_engine(url))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert len(written) > 0
    with engine.connect() as conn:
        types: dict[str, str] = dict(conn.execute(text(
            "SELECT table_name || '.' || column_name, data_type FROM "
            "information_schema.columns WHERE column_name IN ('id', 'result_id') AND "
            "table_name IN ('classification_results', 'feedback', 'audit_events')")).all())
        assert set(types.values()) == {"bigint"}, types
        leftovers = conn.execute(text(
            "SELECT column_name FROM information_schema.columns WHERE column_name LIKE "
            "'%\\_wide' UNION ALL SELECT relname FROM pg_class WHERE relname LIKE '%\\_w' "
            "UNION ALL SELECT conname FROM pg_constraint WHERE NOT convalidated "
            "UNION ALL SELECT proname FROM pg_proc WHERE proname LIKE 'fsdi_widen%' "
            "UNION ALL SELECT c.relname FROM pg_index i JOIN pg_class c ON "
            "c.oid = i.indexrelid WHERE NOT i.indisvalid")).scalars().all()
        assert leftovers == []
        # the swapped-in columns are analysed: the planner has statistics for them
        stats = conn.execute(text(
            "SELECT tablename || '.' || attname FROM pg_stats WHERE attname IN ('id', "
            "'result_id') AND tablename IN ('classification_results', 'feedback', "
            "'audit_events')")).scalars().all()
        assert set(stats) == {"classification_results.id", "feedback.id",
                              "feedback.result_id", "audit_events.id"}, stats
        n = conn.execute(text("SELECT count(*), count(DISTINCT id) FROM "
                              "classification_results")).one()
        assert n == (30_000 + len(written), 30_000 + len(written))
        assert conn.execute(text("SELECT count(*) FROM feedback")).scalar() == \
            300 + len(written)
        # copied over for the rows judged before, set by the trigger for those judged since
        assert conn.execute(text(
            "SELECT count(*) FILTER (WHERE feedback_correct IS NOT NULL), count(*) FILTER "
            "(WHERE feedback_correct IS DISTINCT FROM (SELECT f.correct FROM feedback f "
            "WHERE f.result_id = r.id ORDER BY f.id DESC LIMIT 1)) FROM "
            "classification_results r")).one() == (300 + len(written), 0)
    with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET detail = 'x'"))
    big = 2**31 + 7
    with sessions.begin() as s:
        s.add(ClassificationResult(id=big, **row))
        s.flush()
        s.add(Feedback(result_id=big, correct=False))
    with sessions.begin() as s:
        (after,) = repo.add_classifications(s, [row], "a")
        repo.audit(s, "admin", "after", "")
        assert repo.get_result(s, first[0]) is not None
        page = repo.results_page(s, repo.ResultFilter(group="g"), None, 3)
        assert [h.result.id for h in page][:1] == [big]
        wrong = repo.results_page(s, repo.ResultFilter(group="g", feedback="wrong"), None, 3)
        assert [(h.result.id, h.feedback_correct) for h in wrong][:1] == [(big, False)]
        assert after > max(written)
    with engine.begin() as conn:  # the foreign key still cascades
        conn.execute(text("DELETE FROM classification_results WHERE id = :i"), {"i": big})
        assert conn.execute(text("SELECT count(*) FROM feedback WHERE result_id = :i"),
                            {"i": big}).scalar() == 0
    engine.dispose()


def test_replicas_starting_together_on_a_new_database_both_come_up(pg_url: str) -> None:
    """Two replicas migrate a new PostgreSQL database at once: one migrates (the 64-bit
    ids migration builds indexes CONCURRENTLY), the other waits for the migration lock,
    then finds the work done. Neither waits forever: a replica blocked on the lock
    inside a statement would hold a snapshot that the concurrent index build waits for."""
    import threading

    from storage.migrate import MIGRATION_LOCK

    holder = make_engine(pg_url)
    done: list[str] = []
    errors: list[BaseException] = []

    def replica() -> None:
        engine = make_engine(pg_url)
        try:
            upgrade(engine)
            done.append("up")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            engine.dispose()

    with holder.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
        # both replicas are waiting for the lock before either may take it
        lock.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK})")
        threads = [threading.Thread(target=replica, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        lock.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
    for t in threads:
        t.join(timeout=90)
    assert not errors, errors
    assert done == ["up", "up"], "a replica never finished migrating"
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from storage.migrate import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with holder.connect() as conn:
        at = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    assert at == ScriptDirectory.from_config(cfg).get_current_head()
    holder.dispose()
