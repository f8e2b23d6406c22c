"""/classify with an Idempotency-Key: a retry gets the first answer, the images are stored
once; a different request under the same key, or one still running, is refused."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from bench.imagegen import sample
from storage.tables import ClassificationResult, IdempotentRequest, utcnow
from tests.app.conftest import as_files, new_key
from tests.app.test_api import enrol, error_of, group


def results_named(client: TestClient, grp: str, name: str) -> int:
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    with rt.sessions() as s:
        return len(s.scalars(select(ClassificationResult.id).where(
            ClassificationResult.group_name == grp,
            ClassificationResult.filename == name)).all())


def test_a_retry_gets_the_first_answer_and_nothing_is_stored_twice(client: TestClient) -> None:
    grp = group()
    enrol(client, grp, shots=2)
    files = as_files([("part-1.png", sample("brick", "scratch", 501))])
    h = {"Idempotency-Key": "cam7-000001"}
    first = client.post("/api/v1/classify", params={"group": grp}, files=files, headers=h)
    assert first.status_code == 200, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = client.post("/api/v1/classify", params={"group": grp}, files=files, headers=h)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert results_named(client, grp, "part-1.png") == 1
    # the same key with other bytes, or other options, is another request: refused
    other = as_files([("part-1.png", sample("brick", "scratch", 502))])
    r = client.post("/api/v1/classify", params={"group": grp}, files=other, headers=h)
    assert r.status_code == 422 and error_of(r)["code"] == "idempotency_key_reused"
    r = client.post("/api/v1/classify", params={"group": grp, "top_k": 1}, files=files,
                    headers=h)
    assert r.status_code == 422
    # without a key, or with a new one, every request is classified
    client.post("/api/v1/classify", params={"group": grp}, files=files)
    client.post("/api/v1/classify", params={"group": grp}, files=files,
                headers={"Idempotency-Key": "cam7-000002"})
    assert results_named(client, grp, "part-1.png") == 3


def test_keys_are_per_api_key_and_a_running_claim_is_waited_for(client: TestClient) -> None:
    grp = group()
    enrol(client, grp, shots=2)
    files = as_files([("p.png", sample("grass", "stain", 601))])
    machine = {"Authorization": f"Bearer {new_key(client, 'machine')}"}
    h = {"Idempotency-Key": "same-key"}
    assert client.post("/api/v1/classify", params={"group": grp}, files=files,
                       headers=h).status_code == 200
    # another API key's "same-key" is its own
    r = client.post("/api/v1/classify", params={"group": grp}, files=files,
                    headers={**h, **machine})
    assert r.status_code == 200 and "Idempotent-Replayed" not in r.headers
    assert results_named(client, grp, "p.png") == 2
    # a claim still running (no answer yet): 409, retry shortly
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    with rt.sessions.begin() as s:
        s.execute(update(IdempotentRequest).where(IdempotentRequest.idem_key == "same-key")
                  .values(response=None))
    r = client.post("/api/v1/classify", params={"group": grp}, files=files, headers=h)
    assert r.status_code == 409 and error_of(r)["code"] == "in_progress"
    assert r.headers["Retry-After"] == "1"
    # ... unless its server died: an old claim is taken over and the request runs
    with rt.sessions.begin() as s:
        s.execute(update(IdempotentRequest).where(IdempotentRequest.idem_key == "same-key")
                  .values(created_at=utcnow() - timedelta(minutes=5)))
    r = client.post("/api/v1/classify", params={"group": grp}, files=files, headers=h)
    assert r.status_code == 200 and "Idempotent-Replayed" not in r.headers
    assert client.post("/api/v1/classify", params={"group": grp}, files=files,
                       headers=h).headers["Idempotent-Replayed"] == "true"


def test_a_failed_request_releases_its_key_and_old_answers_are_pruned(
        client: TestClient) -> None:
    empty = group()  # no classes: 409, nothing classified
    files = as_files([("x.png", sample("brick", None, 1))])
    h = {"Idempotency-Key": "will-fail-first"}
    r = client.post("/api/v1/classify", params={"group": empty}, files=files, headers=h)
    assert r.status_code == 409 and error_of(r)["code"] == "empty_group"
    enrol(client, empty, shots=2)  # now it can run: the key was released, not kept
    r = client.post("/api/v1/classify", params={"group": empty}, files=files, headers=h)
    assert r.status_code == 200 and "Idempotent-Replayed" not in r.headers
    rt = client.app.state.runtime  # type: ignore[attr-defined]
    with rt.sessions.begin() as s:
        s.execute(update(IdempotentRequest).values(created_at=utcnow() - timedelta(days=2)))
    assert rt.prune_idempotent() >= 1
    bad = client.post("/api/v1/classify", params={"group": empty}, files=files,
                      headers={"Idempotency-Key": "no spaces allowed"})
    assert bad.status_code == 422
