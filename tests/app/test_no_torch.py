"""A serving process whose ONNX export is cached never loads torch: it starts, enrols a
good class and a defect class (ProtoNet, the default), classifies with a verdict and a
heatmap, verifies a pair, and torch is still not in sys.modules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.settings import Settings
from models.embedder import make_embedder
from models.zoo import create_backbone, describe_backbone

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys, time
from fastapi.testclient import TestClient
from app.main import create_app
from app.settings import Settings
from bench.imagegen import sample

assert "torch" not in sys.modules, "importing the app loaded torch"
s = Settings(data_dir=sys.argv[1], model_cache_dir=sys.argv[2], admin_key="k" * 24)
with TestClient(create_app(s)) as c:
    deadline = time.monotonic() + 120
    while c.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.05)
    c.headers["Authorization"] = "Bearer " + "k" * 24
    def files(kind, seeds):
        return [("files", (f"{i}.png", sample("brick", kind, i), "image/png")) for i in seeds]
    good = c.post("/api/v1/classes", json={"name": "ok", "group": "g", "kind": "good"}).json()
    bad = c.post("/api/v1/classes", json={"name": "scratch", "group": "g"}).json()
    assert c.post(f"/api/v1/classes/{good['id']}/images",
                  files=files(None, range(6))).status_code == 201
    assert c.post(f"/api/v1/classes/{bad['id']}/images",
                  files=files("scratch", range(10, 13))).status_code == 201
    r = c.post("/api/v1/classify", params={"group": "g", "heatmap": "true"},
               files=files("scratch", [20]) + files(None, [21]))
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["verdict"] for x in res] == ["defect", "ok"], res
    assert res[0]["label"] == "scratch" and res[0].get("heatmap"), res[0].keys()
    for params in ({}, {"group": "g"}):  # the global and the group's calibration
        v = c.post("/api/v1/verify", params=params, files=[
            ("a", ("a.png", sample("brick", "scratch", 30), "image/png")),
            ("b", ("b.png", sample("brick", "scratch", 31), "image/png"))])
        assert v.status_code == 200, v.text
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, f"serving loaded torch: {loaded[:5]}"
print("served without torch")
"""


def test_a_cached_export_serves_without_loading_torch(tmp_path: Path, model_cache: Path
                                                       ) -> None:
    s = Settings()
    if describe_backbone(s.backbone, s.precision, model_cache) is None:  # export it once
        make_embedder(create_backbone(s.backbone, s.precision), "onnxruntime", model_cache, 1)
    described = describe_backbone(s.backbone, s.precision, model_cache)
    built = create_backbone(s.backbone, s.precision)
    assert described is not None and described.net is None
    for field in ("version", "patch_version", "dim", "metric_dim", "patch_shape",
                  "patch_layers", "preprocess"):
        assert getattr(described, field) == getattr(built, field), field
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FSDI_DATABASE_URL", None)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "data"),
                          str(model_cache)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and "served without torch" in out.stdout, \
        out.stdout[-2000:] + out.stderr[-4000:]
