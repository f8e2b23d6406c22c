"""One served group: a group enrolled through the service and the same stored images put
through the pure builder (models.inference.build_served_group, as evaluators and benches
use it, with the service's own ServingConfig) decide the same queries identically:
labels, unknowns, verdicts, anomaly scores and scores."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from bench.imagegen import sample
from models.inference import EnrolledClass, ServingConfig, build_served_group
from storage import repositories as repo
from tests.app.conftest import as_files


def test_the_settings_defaults_are_the_serving_configs() -> None:
    assert Settings().serving_config() == ServingConfig()


def test_the_service_and_the_builder_decide_alike(client: TestClient) -> None:
    import uuid

    grp = f"parity-{uuid.uuid4().hex[:6]}"
    made = {}
    for name, kind, defect, seeds in (("ok", "good", None, range(400, 412)),
                                      ("scratch", "defect", "scratch", range(420, 424)),
                                      ("hole", "defect", "hole", range(430, 434))):
        r = client.post("/api/v1/classes", json={"name": name, "group": grp, "kind": kind})
        made[name] = r.json()["id"]
        r = client.post(f"/api/v1/classes/{made[name]}/images",
                        files=as_files([(f"{name}{i}.png", sample("brick", defect, i))
                                        for i in seeds]))
        assert r.status_code == 201, r.text
    queries = [sample("brick", d, 500 + i) for i, d in
               enumerate((None, None, "scratch", "hole", "stain", None, "scratch"))]
    r = client.post("/api/v1/classify", params={"group": grp, "top_k": 3},
                    files=as_files([(f"q{i}.png", q) for i, q in enumerate(queries)]))
    assert r.status_code == 200, r.text
    answers = r.json()["results"]

    rt = client.app.state.runtime  # type: ignore[attr-defined]
    bb = rt.backbone
    with rt.sessions() as s:
        classes = {c.id: c for c in repo.list_classes(s, grp)}
        vectors: dict[int, list[tuple[int, np.ndarray]]] = {}
        for e in repo.embeddings_for(s, bb.version, list(classes)):
            vectors.setdefault(e.class_id, []).append((e.image_id, e.vector))
        patches = {p.image_id: p.patches for p in repo.patches_for_images(
            s, bb.patch_version, [i for v in vectors.values() for i, _ in v])}
    enrolled = [EnrolledClass(cid, classes[cid].name, classes[cid].kind,
                              tuple(i for i, _ in rows), np.stack([v for _, v in rows]),
                              np.stack([patches[i] for i, _ in rows]))
                for cid, rows in vectors.items()]
    built = build_served_group(grp, enrolled, bb.metric_dim, rt.settings.serving_config())

    from app.services.uploads import decode_one

    x = np.stack([decode_one("q.png", q, bb.preprocess, 10**9).tensor for q in queries])
    emb, pat = rt.unpack(rt.embedder.embed_packed(x))
    got = built.inspect(emb, pat, top_k=3)
    for a, i in zip(answers, got, strict=True):
        assert a["verdict"] == i.verdict and a["unknown"] == i.unknown
        assert a["label"] == (i.entry.name if i.entry else None)
        assert a["anomaly"]["score"] == pytest.approx(i.anomaly.score, abs=1e-4)  # type: ignore[union-attr]
        assert a["anomaly"]["threshold"] == pytest.approx(i.anomaly.threshold, abs=1e-6)  # type: ignore[union-attr]
        assert a["score"] == pytest.approx(i.score, abs=1e-4)
        assert [t["label"] for t in a["top_k"]] == [
            i.index.entries[c.index].name for c in i.decision.top]  # type: ignore[union-attr]
    assert {a["verdict"] for a in answers} == {"ok", "defect"}  # both sides were asked
