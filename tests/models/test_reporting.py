"""The one report writer: JSON rows, a Markdown table and a PNG under one stem."""

from __future__ import annotations

import json
from pathlib import Path

from models import reporting


def test_accuracy_report_writes_json_markdown_and_png(tmp_path: Path) -> None:
    rows = [{"benchmark": b, "embedding": e, "shots": k, "accuracy": 0.5 + k / 100,
             "ci95": 0.01, "ms": k} for b in ("real", "synth") for e in ("ours", "frozen")
            for k in (1, 5)]
    table = reporting.write(tmp_path / "sub" / "evaluation", rows,
                            reporting.accuracy_table(rows, "benchmark", "embedding",
                                                     extra=("ms", "ms")),
                            plot=("benchmark", "embedding"))
    lines = table.splitlines()
    assert lines[0] == "| benchmark | embedding | 1-shot | 5-shot | ms |"
    assert lines[2] == "| real | ours | 51.0 ± 1.0 | 55.0 ± 1.0 | 1/5 |"
    assert len(lines) == 2 + 4
    stem = tmp_path / "sub" / "evaluation"
    assert json.loads(stem.with_suffix(".json").read_text()) == rows
    assert stem.with_suffix(".md").read_text() == table
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plain_table() -> None:
    md = reporting.markdown(["a", "b"], [["1", "2"]])
    assert md == "| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert reporting.pct({"x": 0.1234}, "x") == "12.3"
