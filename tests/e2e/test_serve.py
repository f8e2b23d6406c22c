"""A real `fsdi serve` process: the contract walk, durability across restarts, first-start
admin key, OS-level thread names."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from bench.imagegen import CLASSES, sample
from bench.server import Server

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
KEY = "e2e-admin-key-0123456789abcdef"


def test_contract_check_holds(tmp_path: Path, model_cache: Path) -> None:
    script = SHARED / "contract_check.py"
    srv = Server(tmp_path / "data", {"FSDI_ADMIN_KEY": KEY,
                                     "FSDI_MODEL_CACHE_DIR": str(model_cache)}).start()
    try:
        out = subprocess.run([sys.executable, str(script), "--url", srv.url, "--key", KEY],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "contract holds" in out.stdout, out.stdout + out.stderr
    finally:
        srv.stop()


def test_enrolments_survive_restart(tmp_path: Path, model_cache: Path) -> None:
    env = {"FSDI_MODEL_CACHE_DIR": str(model_cache)}
    srv = Server(tmp_path / "data", env).start()
    try:
        key = re.search(r"(fsdi_[A-Za-z0-9_-]{20,})", srv.log.read_text())
        assert key, "first start must print a generated admin key"
        h = {"Authorization": f"Bearer {key.group(1)}"}
        for ci, (name, (surf, defect)) in enumerate(CLASSES.items()):
            cid = httpx.post(srv.url + "/api/v1/classes", json={"name": name}, headers=h
                             ).json()["id"]
            files = [("files", (f"{j}.png", sample(surf, defect, 50 * ci + j), "image/png"))
                     for j in range(4)]
            assert httpx.post(f"{srv.url}/api/v1/classes/{cid}/images", files=files,
                              headers=h, timeout=60).status_code == 201
        queries = [("files", (f"q{i}.png", sample(s, d, 900 + i), "image/png"))
                   for i, (s, d) in enumerate(CLASSES.values())]
        before = httpx.post(srv.url + "/api/v1/classify", files=queries, headers=h,
                            timeout=60).json()["results"]
    finally:
        srv.stop()
    log_size = srv.log.stat().st_size
    srv2 = Server(tmp_path / "data", env, port=srv.port).start()
    try:
        assert "generated an admin key" not in srv2.log.read_text()[log_size:]
        after = httpx.post(srv2.url + "/api/v1/classify", files=queries, headers=h,
                           timeout=60).json()["results"]
        strip = [{k: v for k, v in r.items() if k != "id"} for r in before]
        assert strip == [{k: v for k, v in r.items() if k != "id"} for r in after]
        assert [r["top_k"][0]["label"] for r in after] == list(CLASSES)
        if sys.platform.startswith("linux"):  # the service's threads carry OS-level names
            names = {name for name, _ in srv2.thread_times().values()}
            assert {"fsdi-infer-0", "fsdi-decode_0", "fsdi-results"} <= names, names
    finally:
        srv2.stop()
