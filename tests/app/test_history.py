"""Results history (contract: "Results history") on SQLite and PostgreSQL: newest first,
filters, cursor paging, and a CSV export that streams with flat memory."""

from __future__ import annotations

import csv
import io
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from app.services import history
from bench.imagegen import CLASSES, flat, sample
from storage import repositories as repo
from storage.repositories import ResultFilter
from tests.app.conftest import as_files, make_settings, new_key, serving


def classified(client: TestClient, grp: str) -> list[dict]:  # type: ignore[type-arg]
    ids = {}
    for ci, (name, (surf, defect)) in enumerate(CLASSES.items()):
        ids[name] = client.post("/api/v1/classes", json={"name": name, "group": grp}).json()["id"]
        files = as_files([(f"{name}{j}.png", sample(surf, defect, 300 * ci + j))
                          for j in range(3)])
        assert client.post(f"/api/v1/classes/{ids[name]}/images", files=files).status_code == 201
    queries = [(f"q{i}.png", sample(s, d, 9100 + i)) for i, (s, d) in enumerate(CLASSES.values())]
    queries.append(("odd.png", flat((250, 0, 250))))
    r = client.post("/api/v1/classify", params={"group": grp}, files=as_files(queries))
    assert r.status_code == 200
    return list(r.json()["results"])


def test_history_newest_first_with_filters_and_cursor(client: TestClient) -> None:
    grp = f"h-{uuid.uuid4().hex[:8]}"
    served = classified(client, grp)
    r = client.get("/api/v1/results", params={"group": grp})
    assert r.status_code == 200
    items = r.json()["items"]
    assert [i["id"] for i in items] == sorted((x["id"] for x in served), reverse=True)
    first = items[-1]
    assert first["filename"] == "q0.png" and first["group"] == grp and "feedback" in first
    assert datetime.fromisoformat(first["created_at"]).tzinfo is not None
    # paging: 2 at a time, the cursor carries on where the page ended
    seen, cursor = [], None
    while True:
        page = client.get("/api/v1/results", params={"group": grp, "limit": 2,
                                                     **({"cursor": cursor} if cursor else {})})
        seen += [i["id"] for i in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [i["id"] for i in items]
    # filters: label, unknown, feedback state, time window, verdict
    label = next(x["label"] for x in served if x["label"])
    by_label = client.get("/api/v1/results", params={"group": grp, "label": label}).json()
    assert by_label["items"] and all(i["label"] == label for i in by_label["items"])
    unknown = client.get("/api/v1/results", params={"group": grp, "unknown": "true"}).json()
    assert [i["filename"] for i in unknown["items"]] == ["odd.png"]
    target = served[0]
    cid = target["top_k"][0]["class_id"]
    assert client.post("/api/v1/feedback", json={"result_id": target["id"], "correct": False,
                                                 "class_id": cid}).status_code == 201
    wrong = client.get("/api/v1/results", params={"group": grp, "feedback": "wrong"}).json()
    assert [i["id"] for i in wrong["items"]] == [target["id"]]
    assert wrong["items"][0]["feedback"] == {"correct": False, "class_id": cid}
    none = client.get("/api/v1/results", params={"group": grp, "feedback": "none"}).json()
    assert target["id"] not in [i["id"] for i in none["items"]]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert client.get("/api/v1/results", params={"group": grp, "since": later}
                      ).json()["items"] == []
    assert len(client.get("/api/v1/results", params={"group": grp, "until": later}
                          ).json()["items"]) == len(served)
    assert client.get("/api/v1/results", params={"group": grp, "verdict": "defect"}
                      ).json()["items"] == []
    for bad in ({"cursor": "nope"}, {"since": "2026-11-29T08:00:00"}, {"verdict": "maybe"},
                {"feedback": "meh"}, {"limit": 0}, {"group": "a b"}):
        assert client.get("/api/v1/results", params=bad).status_code == 422, bad


def test_history_csv_and_roles(client: TestClient) -> None:
    grp = f"c-{uuid.uuid4().hex[:8]}"
    served = classified(client, grp)
    r = client.get("/api/v1/results.csv", params={"group": grp})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(x["id"]) for x in rows] == sorted((x["id"] for x in served), reverse=True)
    assert set(rows[0]) == set(history.CSV_COLUMNS)
    assert rows[-1]["filename"] == "q0.png" and rows[0]["unknown"] == "true"
    machine = new_key(client, "machine")
    h = {"Authorization": f"Bearer {machine}"}
    assert client.get("/api/v1/results", headers=h).status_code == 403
    assert client.get("/api/v1/results.csv", headers=h).status_code == 403
    operator = new_key(client, "operator")
    assert client.get("/api/v1/results", headers={"Authorization": f"Bearer {operator}"}
                      ).status_code == 200


def test_csv_of_100000_results_streams_with_flat_memory(client: TestClient) -> None:
    grp = f"big-{uuid.uuid4().hex[:8]}"
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    row: repo.ResultRow = {"group_name": grp, "filename": "f.jpg", "sha256": "0" * 64,
                           "class_id": None, "label": "scratch", "unknown": False,
                           "score": 0.9, "method": "protonet", "model_version": "m",
                           "key_id": None}
    for _ in range(10):
        with rt.sessions.begin() as s:
            repo.add_classifications(s, [dict(row) for _ in range(10_000)],  # type: ignore[misc]
                                     "bulk")
    tracemalloc.start()
    try:
        n, size = 0, 0
        for chunk in history.csv_lines(rt, ResultFilter(group=grp)):
            n += chunk.count("\n")
            size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 100_001
    # the CSV is several MB; streaming holds one page of rows at a time
    assert size > 5_000_000 and peak < 20 * 1024 * 1024, (size, peak)


def test_results_past_their_retention_are_removed_at_start_up(model_cache: Path,
                                                              tmp_path: Path) -> None:
    from storage.migrate import open_migrated
    from storage.tables import ClassificationResult

    url = f"sqlite:///{tmp_path / 'fsdi.db'}"
    _, sessions = open_migrated(url)
    with sessions.begin() as s:
        for age_days in (40, 20, 1):
            s.add(ClassificationResult(group_name="line", filename=f"{age_days}.png",
                                       sha256="0" * 64, unknown=False, score=1.0,
                                       method="protonet", model_version="m",
                                       created_at=datetime.now(UTC) - timedelta(days=age_days)))
    with serving(make_settings(tmp_path / "data", url, model_cache,
                               result_retention_days=30)) as c:
        names = [i["filename"] for i in c.get("/api/v1/results").json()["items"]]
    assert names == ["1.png", "20.png"]
