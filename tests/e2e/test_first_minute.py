"""The first minute as the README tells it: a started service, `fsdi demo`, then the
README's curl walk pasted as written. Every call answers 2xx, and the demo's defective
part is flagged with its heatmap's peak on the defect."""

from __future__ import annotations

import base64
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from app.check import LabelledFolder
from bench.server import Server

ROOT = Path(__file__).resolve().parents[2]
KEY = "first-minute-admin-key-0123456789"


def walk() -> str:
    """The README's curl walk, as written."""
    text = (ROOT / "README.md").read_text()
    return text.split("## Walk the API with curl", 1)[1].split("```bash", 1)[1].split(
        "```", 1)[0]


def run_walk(url: str, key: str, cwd: Path, fsdi: str | None = None) -> list[dict]:  # type: ignore[type-arg]
    """The README's walk in bash, as written but for the key and the address (and `fsdi`
    when not run from a checkout with command 1's .venv), every answer but a 2xx failing
    it; returns the JSON answers, in order, and checks what the demo part shows."""
    script = walk()
    for line in ("export KEY='<the admin key>'", ".venv/bin/fsdi demo",
                 "U=http://127.0.0.1:8000"):
        assert line in script, line
    script = (script.replace("<the admin key>", key)
              .replace("U=http://127.0.0.1:8000", f"U={url}")
              # any answer but a 2xx fails the walk, and each answer gets its own line
              .replace("curl -s ", "curl -sS --fail-with-body -w '\\n' "))
    if fsdi is not None:
        script = script.replace(".venv/bin/fsdi", fsdi)
    env = {**os.environ, "PYTHONPATH": str(ROOT)} if fsdi is not None else os.environ
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    answers = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    first = next(a for a in answers if "results" in a)  # the demo parts, classified
    scratch, ok = first["results"]
    assert (scratch["verdict"], scratch["label"], ok["verdict"]) == ("defect", "scratch", "ok")
    png = base64.b64decode(scratch["heatmap"].split(",", 1)[1])
    heat = np.asarray(Image.open(io.BytesIO(png)))
    y, x = np.unravel_index(int(heat.argmax()), heat.shape)
    x0, y0, x1, y1 = json.loads((cwd / "demo-images" / "defects.json").read_text())[
        "scratch-01.png"]
    scale = heat.shape[1] / 224
    assert x0 - 8 <= x / scale <= x1 + 8 and y0 - 8 <= y / scale <= y1 + 8, (x, y)
    return answers


def test_demo_then_the_readme_walk_as_written(tmp_path: Path, model_cache: Path) -> None:
    srv = Server(tmp_path / "data", {"FSDI_ADMIN_KEY": KEY,
                                     "FSDI_MODEL_CACHE_DIR": str(model_cache)}).start(300)
    try:
        answers = run_walk(srv.url, KEY, tmp_path, f"{shlex.quote(sys.executable)} -m app.cli")
    finally:
        srv.stop()
    # the demo's folders are what `fsdi check demo-images/` takes at its defaults
    folder = LabelledFolder.read(tmp_path / "demo-images")
    assert folder.names == ("good", "scratch", "stain") and folder.good == "good"
    assert min(np.bincount(folder.labels)) >= 10 + 15
    # the walk's own line: its classification, feedback and a key scoped to it
    assert any(a.get("groups") == ["line1"] and a.get("role") == "machine" for a in answers)
    assert any("correct" in a and a.get("correct") is True for a in answers)
