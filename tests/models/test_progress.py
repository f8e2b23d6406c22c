"""Progress goes to a terminal as a bar; to a file or a pipe as one line per stage."""

from __future__ import annotations

import subprocess
import sys

import pytest

from models.progress import Lines, progress


def test_no_terminal_gets_one_line_when_a_stage_starts_and_one_when_it_ends(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert sum(progress(range(1000), desc="3-shot", unit="episode")) == sum(range(1000))
    with progress(total=50, desc="objects", unit="B") as bar:
        for _ in range(50):
            bar.update(1)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == [
        "3-shot: 1,000 episode …", err.splitlines()[1], "objects: 50 B …",
        err.splitlines()[3]]
    assert err.splitlines()[1].startswith("3-shot: done, 1,000 episode in ")
    assert err.splitlines()[3].startswith("objects: done, 50 B in ")
    with progress(range(3), desc="quiet", disable=True) as bar:
        list(bar)
    assert capsys.readouterr().err == ""


def test_a_check_piped_to_a_file_prints_no_carriage_returns(tmp_path: object) -> None:
    code = ("from models.progress import progress\n"
            "for _ in progress(range(300), desc='stage', unit='step'): pass\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stderr.count("\n") == 2 and "\r" not in out.stderr
    assert isinstance(progress(range(1), desc="x"), Lines)  # pytest's stderr is no tty
