"""`fsdi check`: episodes on a folder of labelled images, through the REST API only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.check import CheckError, LabelledFolder, Service, episodes, report, run_check
from app.cli import cli
from bench.imagegen import sample
from models.data.episodes import EpisodeSampler


def make_folder(root: Path, per_class: int = 7) -> Path:
    """good: brick parts; gravel: another surface altogether (any good memory of brick
    flags it); a stray text file that is not an image."""
    for name, (surf, seed) in {"good": ("brick", 100), "gravel": ("gravel", 200)}.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i:03d}.png").write_bytes(sample(surf, None, seed + i))
    (root / "good" / "notes.txt").write_text("not an image")
    return root


def test_folder_reading(tmp_path: Path) -> None:
    folder = LabelledFolder.read(make_folder(tmp_path / "f"))
    assert folder.names == ("good", "gravel") and folder.good == "good"
    assert len(folder.paths) == 14 and list(np.bincount(folder.labels)) == [7, 7]
    assert all(p.suffix == ".png" for p in folder.paths)  # the text file is left out
    assert LabelledFolder.read(tmp_path / "f", good="ok").good is None  # no good class
    (tmp_path / "one" / "a").mkdir(parents=True)
    (tmp_path / "one" / "a" / "x.png").write_bytes(sample("brick", None, 1))
    with pytest.raises(CheckError, match="at least two sub-folders"):
        LabelledFolder.read(tmp_path / "one")
    with pytest.raises(CheckError, match="not a folder"):
        LabelledFolder.read(tmp_path / "missing")


def test_episodes_are_the_evaluations_episodes(tmp_path: Path) -> None:
    """The same draws as `fsdi evaluate real` on the same labels (EpisodeSampler, seed +
    shots), so a check through the API can be set beside the in-process evaluation."""
    folder = LabelledFolder.read(make_folder(tmp_path / "f"))
    ref = EpisodeSampler(folder.labels, 2, 2, 3, 7 + 2)
    for support, query in episodes(folder, 2, 3, 4, seed=7):
        ep = ref.sample()
        assert (support == ep.support).all() and (query == ep.query).all()


def test_check_through_the_api_measures_and_cleans_up(client: TestClient,
                                                      tmp_path: Path) -> None:
    folder = LabelledFolder.read(make_folder(tmp_path / "f"))
    # 2 files per request: enrolment and classification both go in several requests
    results = run_check(Service(client), folder, shots=(1, 3), count=3, queries=3,
                        seed=0, prefix="chk-ok", batch=2)
    assert [r.shots for r in results] == [1, 3]
    for r in results:
        assert len(r.label) == len(r.verdict) == len(r.unknown) == 3
        assert len(r.scores) == len(r.right) == 3 * 3 * 2
        assert all(0.0 <= s <= 1.0 for s in r.scores)
    # gravel against a memory of brick is an easy defect: every verdict is right
    assert results[1].verdict == [1.0, 1.0, 1.0]
    classes = client.get("/api/v1/classes").json()["items"]
    # every episode's group is gone again; its classifications stay in the history
    assert not any(c["group"].startswith("chk-ok") for c in classes)
    hist = client.get("/api/v1/results", params={"group": "chk-ok-3shot-0"}).json()["items"]
    assert len(hist) == 6 and all("verdict" in h for h in hist)
    table = report(results, folder, tmp_path / "f", tmp_path / "out")
    assert "OK/NG verdict" in table and "label" in table
    rows = json.loads((tmp_path / "out" / "check.json").read_text())
    assert {r["shots"] for r in rows} == {1, 3} and {r["answer"] for r in rows} == {
        "label", "OK/NG verdict"}
    assert (tmp_path / "out" / "check.png").stat().st_size > 0
    assert (tmp_path / "out" / "check_reliability.png").stat().st_size > 0


def test_without_a_good_folder_every_class_is_a_defect_class(client: TestClient,
                                                              tmp_path: Path) -> None:
    folder = LabelledFolder.read(make_folder(tmp_path / "f"), good="none")
    (res,) = run_check(Service(client), folder, shots=(2,), count=2, queries=3, seed=0,
                       prefix="chk-plain", batch=10)
    assert res.verdict == [] and len(res.label) == 2  # no good parts: no verdict
    rows = res.rows("f", 2)
    assert [r["answer"] for r in rows] == ["label"]
    hist = client.get("/api/v1/results", params={"group": "chk-plain-2shot-0"}).json()["items"]
    assert len(hist) == 6 and not any("verdict" in h for h in hist)


def test_a_refused_step_names_the_cause_and_leaves_nothing_enrolled(
        client: TestClient, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f")
    for p in (root / "gravel").glob("*.png"):
        p.write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # every defect image is broken
    folder = LabelledFolder.read(root)
    with pytest.raises(CheckError, match=r"enrolling \d images: HTTP 4\d\d"):
        run_check(Service(client), folder, shots=(2,), count=1, queries=3, seed=0,
                  prefix="chk-bad", batch=10)
    groups = {c["group"] for c in client.get("/api/v1/classes").json()["items"]}
    assert not any(g.startswith("chk-bad") for g in groups)


def test_too_few_images_are_named_before_anything_is_enrolled(tmp_path: Path) -> None:
    folder = LabelledFolder.read(make_folder(tmp_path / "f", per_class=7))

    class Untouchable(Service):
        def __init__(self) -> None:
            pass

        def create_class(self, name: str, group: str, kind: str) -> int:
            raise AssertionError("nothing may be enrolled")

    with pytest.raises(CheckError, match=r"need 8 images .* good \(7\), gravel \(7\)"):
        run_check(Untouchable(), folder, shots=(1, 5), count=1, queries=3)


def test_cli_reports_an_unreachable_service(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f")
    r = CliRunner().invoke(cli, ["check", str(root), "--url", "http://127.0.0.1:9",
                                 "--key", "k" * 24, "--episodes", "1", "--shots", "1",
                                 "--queries", "2", "--timeout", "5", "--batch", "2"])
    assert r.exit_code == 2 and "check failed" in r.output
