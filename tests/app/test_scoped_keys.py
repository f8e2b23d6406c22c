"""Scoped keys: a key that names groups learns nothing about any other group through any
endpoint. Every operation in the OpenAPI document has a rule here (a new endpoint without
one fails the test), each is asked about another group's objects with scoped admin,
operator and machine keys, and ids enumerated from 1 to the highest answer 404 exactly
as missing ones do. On SQLite and PostgreSQL (the module's `client`)."""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from bench.imagegen import sample
from tests.app.conftest import as_files


@dataclass
class Line:
    group: str
    good: int
    defect: int
    image: int
    result: int
    feedback: int


def make_line(client: TestClient) -> Line:
    grp = f"s-{uuid.uuid4().hex[:8]}"
    good = client.post("/api/v1/classes", json={"name": "ok", "group": grp, "kind": "good"})
    defect = client.post("/api/v1/classes", json={"name": "scratch", "group": grp})
    assert good.status_code == defect.status_code == 201
    r = client.post(f"/api/v1/classes/{good.json()['id']}/images",
                    files=as_files([(f"g{i}.png", sample("brick", None, 300 + i))
                                    for i in range(4)]))
    assert r.status_code == 201, r.text
    r = client.post(f"/api/v1/classes/{defect.json()['id']}/images",
                    files=as_files([(f"d{i}.png", sample("brick", "scratch", 310 + i))
                                    for i in range(2)]))
    assert r.status_code == 201, r.text
    image = r.json()["images"][0]["id"]
    r = client.post("/api/v1/classify", params={"group": grp},
                    files=as_files([("q.png", sample("brick", "scratch", 320))]))
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]["id"]
    fb = client.post("/api/v1/feedback", json={"result_id": result, "correct": False,
                                               "class_id": defect.json()["id"]})
    assert fb.status_code == 201, fb.text
    return Line(grp, good.json()["id"], defect.json()["id"], image, result, fb.json()["id"])


def scoped(client: TestClient, role: str, groups: list[str]) -> dict[str, str]:
    r = client.post("/api/v1/keys", json={"role": role, "label": f"scoped {role}",
                                          "groups": groups})
    assert r.status_code == 201, r.text
    assert r.json()["groups"] == sorted(groups)
    return {"Authorization": f"Bearer {r.json()['key']}"}


def png(seed: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return as_files([("x.png", sample("brick", None, seed))])


Ask = Callable[[TestClient, dict[str, str], Line], Response]

# Every operation of the API, asked about `Line` (another group's objects). `expect`:
# "404" (as a missing object), "403" (the scoped key may not do this at all), or
# "filtered" (a list that must hold nothing of that group; checked below). None: the
# operation touches no group's data.
RULES: dict[tuple[str, str], tuple[str | None, Ask | None]] = {
    ("get", "/healthz"): (None, None),
    ("get", "/readyz"): (None, None),
    ("get", "/metrics"): (None, None),
    ("get", "/"): (None, None),
    ("get", "/api/v1/me"): (None, None),
    ("post", "/api/v1/verify"): ("404", lambda c, h, o: c.post(
        "/api/v1/verify", params={"group": o.group}, files=[
            ("a", ("a.png", sample("brick", None, 1), "image/png")),
            ("b", ("b.png", sample("brick", None, 2), "image/png"))], headers=h)),
    ("post", "/api/v1/keys"): ("403", lambda c, h, o: c.post(
        "/api/v1/keys", json={"role": "machine"}, headers=h)),
    ("get", "/api/v1/keys"): ("403", lambda c, h, o: c.get("/api/v1/keys", headers=h)),
    ("delete", "/api/v1/keys/{key_id}"): ("403", lambda c, h, o: c.delete(
        "/api/v1/keys/1", headers=h)),
    ("get", "/api/v1/audit"): ("403", lambda c, h, o: c.get("/api/v1/audit", headers=h)),
    ("post", "/api/v1/classes"): ("404", lambda c, h, o: c.post(
        "/api/v1/classes", json={"name": "intruder", "group": o.group}, headers=h)),
    ("get", "/api/v1/classes"): ("404", lambda c, h, o: c.get(
        "/api/v1/classes", params={"group": o.group}, headers=h)),
    ("get", "/api/v1/classes/{class_id}"): ("404", lambda c, h, o: c.get(
        f"/api/v1/classes/{o.defect}", headers=h)),
    ("delete", "/api/v1/classes/{class_id}"): ("404", lambda c, h, o: c.delete(
        f"/api/v1/classes/{o.defect}", headers=h)),
    ("get", "/api/v1/classes/{class_id}/images"): ("404", lambda c, h, o: c.get(
        f"/api/v1/classes/{o.defect}/images", headers=h)),
    ("post", "/api/v1/classes/{class_id}/images"): ("404", lambda c, h, o: c.post(
        f"/api/v1/classes/{o.good}/images", files=png(990), headers=h)),
    ("delete", "/api/v1/classes/{class_id}/images/{image_id}"): ("404", lambda c, h, o: c.delete(
        f"/api/v1/classes/{o.defect}/images/{o.image}", headers=h)),
    ("get", "/api/v1/groups"): ("filtered", lambda c, h, o: c.get("/api/v1/groups", headers=h)),
    ("get", "/api/v1/groups/{group}/report"): ("404", lambda c, h, o: c.get(
        f"/api/v1/groups/{o.group}/report", headers=h)),
    ("get", "/api/v1/groups/{group}/anomaly"): ("404", lambda c, h, o: c.get(
        f"/api/v1/groups/{o.group}/anomaly", headers=h)),
    ("put", "/api/v1/groups/{group}/anomaly"): ("404", lambda c, h, o: c.put(
        f"/api/v1/groups/{o.group}/anomaly", json={"false_alarm_rate": 0.3}, headers=h)),
    ("get", "/api/v1/groups/{group}/push"): ("404", lambda c, h, o: c.get(
        f"/api/v1/groups/{o.group}/push", headers=h)),
    ("put", "/api/v1/groups/{group}/push"): ("404", lambda c, h, o: c.put(
        f"/api/v1/groups/{o.group}/push", json={"webhook_url": "https://example.com/h"},
        headers=h)),
    ("delete", "/api/v1/groups/{group}/push"): ("404", lambda c, h, o: c.delete(
        f"/api/v1/groups/{o.group}/push", headers=h)),
    ("get", "/api/v1/images/{image_id}"): ("404", lambda c, h, o: c.get(
        f"/api/v1/images/{o.image}", headers=h)),
    ("post", "/api/v1/classify"): ("404", lambda c, h, o: c.post(
        "/api/v1/classify", params={"group": o.group}, files=png(991), headers=h)),
    ("post", "/api/v1/feedback"): ("404", lambda c, h, o: c.post(
        "/api/v1/feedback", json={"result_id": o.result, "correct": True}, headers=h)),
    ("get", "/api/v1/feedback/stats"): ("404", lambda c, h, o: c.get(
        "/api/v1/feedback/stats", params={"group": o.group}, headers=h)),
    ("post", "/api/v1/feedback/{feedback_id}/promote"): ("404", lambda c, h, o: c.post(
        f"/api/v1/feedback/{o.feedback}/promote", headers=h)),
    ("get", "/api/v1/results"): ("404", lambda c, h, o: c.get(
        "/api/v1/results", params={"group": o.group}, headers=h)),
    ("get", "/api/v1/results.csv"): ("404", lambda c, h, o: c.get(
        "/api/v1/results.csv", params={"group": o.group}, headers=h)),
    ("get", "/api/v1/results/{result_id}/image"): ("404", lambda c, h, o: c.get(
        f"/api/v1/results/{o.result}/image", headers=h)),
    ("get", "/api/v1/results/{result_id}/heatmap"): ("404", lambda c, h, o: c.get(
        f"/api/v1/results/{o.result}/heatmap", headers=h)),
}


@pytest.fixture(scope="module")
def lines(client: TestClient) -> tuple[Line, Line]:
    return make_line(client), make_line(client)


def operations(client: TestClient) -> set[tuple[str, str]]:
    paths = client.app.openapi()["paths"]  # type: ignore[attr-defined]
    return {(m, p) for p, ops in paths.items() for m in ops
            if m in ("get", "post", "put", "delete", "patch")}


def test_every_endpoint_has_a_scope_rule(client: TestClient) -> None:
    missing = operations(client) - set(RULES)
    assert not missing, f"endpoints without a scope rule: {sorted(missing)}"


@pytest.mark.parametrize("role", ["admin", "operator", "machine"])
def test_a_scoped_key_reaches_nothing_of_another_group(client: TestClient,
                                                       lines: tuple[Line, Line],
                                                       role: str) -> None:
    mine, other = lines
    h = scoped(client, role, [mine.group])
    before = refusals(client)
    for (method, path), (expect, ask) in sorted(RULES.items(), key=lambda kv: kv[0]):
        if ask is None:
            continue
        r = ask(client, h, other)
        where = f"{method.upper()} {path} as a scoped {role}"
        if r.status_code == 403 and expect != "403":
            assert "key may not do this" in r.text, where  # the role's limit, as before
            continue
        if expect == "404":
            assert r.status_code == 404, f"{where}: {r.status_code} {r.text[:200]}"
            assert other.group not in r.text or f"group {other.group!r}" in r.json()[
                "error"]["message"], where  # names only what the request itself named
        elif expect == "403":
            assert r.status_code == 403, f"{where}: {r.status_code}"
        else:
            assert r.status_code == 200 and other.group not in r.text, where
    assert refusals(client) > before
    # and the other group is untouched
    assert client.get(f"/api/v1/classes/{other.defect}").status_code == 200
    assert client.get(f"/api/v1/groups/{other.group}/anomaly").json()[
        "false_alarm_rate"] is None


def refusals(client: TestClient) -> float:
    text = client.get("/metrics").text
    m = re.search(r'fsdi_auth_refusals_total\{reason="scope"\} ([\d.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def test_a_scoped_key_works_in_its_own_group(client: TestClient,
                                             lines: tuple[Line, Line]) -> None:
    mine, other = lines
    op = scoped(client, "operator", [mine.group])
    me = client.get("/api/v1/me", headers=op).json()
    assert me["groups"] == [mine.group] and me["role"] == "operator"
    r = client.post("/api/v1/classify", params={"group": mine.group}, files=png(992),
                    headers=op)
    assert r.status_code == 200 and r.json()["results"][0]["verdict"] in ("ok", "defect")
    assert client.get(f"/api/v1/classes/{mine.defect}", headers=op).status_code == 200
    assert client.get(f"/api/v1/results/{mine.result}/heatmap", headers=op).status_code == 200
    assert client.get(f"/api/v1/groups/{mine.group}/report", headers=op).status_code == 200
    # lists hold only its groups
    groups = [g["name"] for g in client.get("/api/v1/groups", headers=op).json()["items"]]
    assert groups == [mine.group]
    classes = client.get("/api/v1/classes", headers=op).json()["items"]
    assert {c["group"] for c in classes} == {mine.group}
    page = client.get("/api/v1/results", headers=op).json()["items"]
    assert page and {x["group"] for x in page} == {mine.group}
    rows = list(csv.DictReader(io.StringIO(client.get("/api/v1/results.csv",
                                                      headers=op).text)))
    assert rows and {x["group"] for x in rows} == {mine.group}
    stats = client.get("/api/v1/feedback/stats", headers=op).json()
    assert stats["feedback"] == 1  # its own group's one feedback, none of the other's
    admin = scoped(client, "admin", [mine.group])
    r = client.post("/api/v1/classes", json={"name": "new", "group": mine.group},
                    headers=admin)
    assert r.status_code == 201
    # an unscoped key still sees both
    every = {g["name"] for g in client.get("/api/v1/groups").json()["items"]}
    assert {mine.group, other.group} <= every


def test_enumerated_ids_of_other_groups_answer_as_missing_ones(
        client: TestClient, lines: tuple[Line, Line]) -> None:
    mine, _ = lines
    h = scoped(client, "admin", [mine.group])
    top = {"result": 0, "class": 0, "image": 0, "feedback": 0}
    for item in client.get("/api/v1/results", params={"limit": 1}).json()["items"]:
        top["result"] = item["id"]
    for c in client.get("/api/v1/classes").json()["items"]:
        top["class"] = max(top["class"], c["id"])
        for i in client.get(f"/api/v1/classes/{c['id']}/images").json():
            top["image"] = max(top["image"], i["id"])
    top["feedback"] = top["result"]  # at most one feedback per result here, and fewer
    own_classes = {mine.good, mine.defect} | {
        c["id"] for c in client.get("/api/v1/classes", params={"group": mine.group}
                                    ).json()["items"]}
    own_images = {i["id"] for c in own_classes
                  for i in client.get(f"/api/v1/classes/{c}/images").json()}
    own_results = {x["id"] for x in client.get(
        "/api/v1/results", params={"group": mine.group, "limit": 1000}).json()["items"]}
    missing = client.get("/api/v1/classes/999999999", headers=h)
    assert missing.status_code == 404
    for cid in range(1, top["class"] + 1):
        r = client.get(f"/api/v1/classes/{cid}", headers=h)
        assert r.status_code == (200 if cid in own_classes else 404), cid
        if r.status_code == 404:
            assert r.json() == {"error": {"code": "not_found",
                                          "message": f"class {cid} not found"}}
    for iid in range(1, top["image"] + 1):
        r = client.get(f"/api/v1/images/{iid}", headers=h)
        assert r.status_code == (200 if iid in own_images else 404), iid
    for rid in range(1, top["result"] + 1):
        r = client.get(f"/api/v1/results/{rid}/image", headers=h)
        assert (r.status_code == 200) == (rid in own_results), rid
        if rid not in own_results:
            assert r.json()["error"]["message"] == f"result {rid} not found"
    for fid in range(1, top["feedback"] + 1):
        r = client.post(f"/api/v1/feedback/{fid}/promote", headers=h)
        if r.status_code == 404:
            assert r.json()["error"]["message"] == f"feedback {fid} not found"
        else:  # its own group's feedback: promoted, or refused for its own reasons
            assert fid == mine.feedback and r.status_code in (201, 409), (fid, r.text)
