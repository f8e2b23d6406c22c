"""The `fsdi` command as an operator uses it: key management and readable help."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.settings import get_settings


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("FSDI_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("FSDI_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def fsdi(*argv: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(argv), env={"COLUMNS": "100"})
    return r.exit_code, r.output


def test_keys_create_list_revoke(data_dir: Path) -> None:
    code, out = fsdi("keys", "create", "--role", "machine", "--label", "line1 PLC")
    assert code == 0, out
    key_id = int(re.search(r"id=(\d+)", out).group(1))  # type: ignore[union-attr]
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("fsdi_")
    code, out = fsdi("keys", "list")
    assert code == 0 and secret not in out and secret[:10] in out
    row = next(ln for ln in out.splitlines() if ln.startswith(f"{key_id}\t"))
    assert row.split("\t")[1:3] == ["machine", "active"] and row.endswith("line1 PLC")
    assert fsdi("keys", "revoke", str(key_id)) == (0, f"revoked key {key_id}\n")
    row = next(ln for ln in fsdi("keys", "list")[1].splitlines() if ln.startswith(f"{key_id}\t"))
    assert row.split("\t")[2] == "revoked"
    code, out = fsdi("keys", "revoke", "999")
    assert code == 1 and "not found" in out
    code, out = fsdi("keys", "create", "--role", "root")
    assert code != 0


def test_keys_create_scoped_to_groups(data_dir: Path) -> None:
    code, out = fsdi("keys", "create", "--role", "operator", "--groups", "line1, line2",
                     "--label", "station")
    assert code == 0 and "groups=line1,line2" in out, out
    key_id = int(re.search(r"id=(\d+)", out).group(1))  # type: ignore[union-attr]
    rows = fsdi("keys", "list")[1].splitlines()
    row = next(ln for ln in rows if ln.startswith(f"{key_id}\t"))
    assert row.split("\t")[5] == "line1,line2" and row.endswith("station")
    code, out = fsdi("keys", "create", "--role", "machine")
    assert code == 0
    unscoped = int(re.search(r"id=(\d+)", out).group(1))  # type: ignore[union-attr]
    row = next(ln for ln in fsdi("keys", "list")[1].splitlines()
               if ln.startswith(f"{unscoped}\t"))
    assert row.split("\t")[5] == "all groups"
    for bad in ("", "line 1", "a,b/c"):
        code, out = fsdi("keys", "create", "--role", "machine", "--groups", bad)
        assert code != 0 and "groups" in out, (bad, out)


def test_help_reflows_paragraphs_instead_of_cutting_them() -> None:
    code, out = fsdi("evaluate", "synthetic", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "vs the frozen ImageNet global pool vs a random-init network" in text
    code, listing = fsdi("evaluate", "--help")
    for sub in ("synthetic", "real", "anomaly", "scores", "methods", "precision"):
        assert re.search(rf"│ {sub}\s+\S", listing), sub
    description = out.split("╭", 1)[0]  # the text above the options table
    for line in description.splitlines():  # no line of a paragraph stops after one word
        words = line.split()
        assert len(words) != 1 or words[0].startswith("Usage"), line
    code, out = fsdi("--help")
    for command in ("serve", "train", "evaluate", "reembed", "keys"):
        assert re.search(rf"│ {command}\s+\S", out), command


def test_results_archive_moves_old_rows_to_parquet(data_dir: Path) -> None:
    from datetime import UTC, datetime

    from storage.migrate import open_migrated
    from storage.tables import ClassificationResult

    _, sessions = open_migrated(f"sqlite:///{data_dir / 'fsdi.db'}")
    with sessions.begin() as s:
        for day in (1, 2, 20):
            s.add(ClassificationResult(group_name="line", filename=f"{day}.png",
                                       sha256="0" * 64, unknown=False, score=1.0,
                                       method="protonet", model_version="m",
                                       created_at=datetime(2026, 11, day, 9, tzinfo=UTC)))
    out_dir = data_dir / "archive"
    code, out = fsdi("results", "archive", "--before", "2026-11-10", "--to", str(out_dir))
    assert code == 0, out
    assert "archived 2 result(s) in 2 file(s)" in out and "deleted 2" in out
    assert sorted(p.parent.name for p in out_dir.rglob("*.parquet")) == [
        "day=2026-11-01", "day=2026-11-02"]
    code, out = fsdi("results", "archive", "--before", "last week", "--to", str(out_dir))
    assert code != 0 and "ISO 8601" in out
