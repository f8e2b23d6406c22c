"""`python -m bench.classify` end to end, in a short run: a real server, the load, the
baselines and every figure the README quotes (the figures themselves are the bench's
business, not a test's: only that each is printed and sane)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def figure(out: str, pattern: str) -> float:
    m = re.search(pattern, out)
    assert m, f"missing {pattern!r} in:\n{out}"
    return float(m.group(1))


def test_bench_runs_and_prints_every_figure(model_cache: Path) -> None:
    env = {**os.environ, "FSDI_MODEL_CACHE_DIR": str(model_cache)}
    out = subprocess.run(
        [sys.executable, "-m", "bench.classify", "--seconds", "1", "--rounds", "1",
         "--select-seconds", "0.2", "--raw-seconds", "0.2", "--scale", "10,50",
         "--clients", "2", "--per-request", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert figure(text, r"/classify end to end: ([\d.]+) img/s") > 0
    assert figure(text, r"p99 (\d+) ms") > 0
    assert 0 < figure(text, r"ratio e2e / fastest raw ORT = ([\d.]+)") < 1.5
    assert figure(text, r"ratio e2e / PyTorch eager, one model on all cores = ([\d.]+)") > 0
    for stage in ("network", "decode \\+ resize", "HTTP, multipart", "results store"):
        ms = figure(text, rf"\n  {stage}[^\n]*?\s([\d.]+)(?:\s|\n)")
        assert ms < 1000, f"{stage}: {ms} ms of CPU per image"  # a unit or split error
        assert ms > 0 or stage != "network", "the network pass cost no CPU"
    decode_ms = figure(text, r"decode step alone [^\n]*: ([\d.]+) ms of CPU per image")
    assert 0 < decode_ms < 100
    assert 0 < figure(text, r"could reach ([\d.]+) on this machine") < 1
    assert figure(text, r"classifiable: (\d+) ms") > 0
    assert figure(text, r"50 classes: [\d.]+ ms\s+\(([\d.]+)x") > 0
