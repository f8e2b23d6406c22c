"""`fsdi watch`: a hot folder against a real `fsdi serve`. Each image is classified once
it is completely written and exactly once, across a restart of the service and a
watcher killed mid-run; a corrupt one lands in failed/ with the service's message."""

from __future__ import annotations

import collections
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.watch import KeyRefused, Watcher
from bench.imagegen import sample
from bench.server import Server

ROOT = Path(__file__).resolve().parents[2]
KEY = "watch-admin-key-0123456789"
H = {"Authorization": f"Bearer {KEY}"}
GROUP = "line"


@pytest.fixture
def server(tmp_path: Path, model_cache: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", {"FSDI_ADMIN_KEY": KEY,
                                     "FSDI_MODEL_CACHE_DIR": str(model_cache)}).start()
    for name, surf, defect in (("ok", "brick", None), ("scratch", "brick", "scratch")):
        c = httpx.post(f"{srv.url}/api/v1/classes", headers=H,
                       json={"name": name, "group": GROUP}).json()
        r = httpx.post(f"{srv.url}/api/v1/classes/{c['id']}/images", headers=H, timeout=60,
                       files=[("files", (f"{name}{i}.png", sample(surf, defect, i),
                                         "image/png")) for i in range(3)])
        assert r.status_code == 201, r.text
    yield srv
    srv.stop()


def small_png(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def classified(url: str) -> collections.Counter[str]:
    """How many results the service holds per file name in the group."""
    seen: collections.Counter[str] = collections.Counter()
    cursor = None
    while True:
        params: dict[str, str | int] = {"group": GROUP, "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = httpx.get(f"{url}/api/v1/results", params=params, headers=H, timeout=60).json()
        seen.update(item["filename"] for item in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return seen


def watch_in_thread(folder: Path, url: str) -> tuple[Watcher, threading.Thread,
                                                      threading.Event]:
    stop = threading.Event()
    w = Watcher(folder, GROUP, url, KEY, settle=0.3, poll=0.1, say=lambda m: None)
    t = threading.Thread(target=w.run, kwargs={"stop": stop.is_set}, daemon=True)
    t.start()
    return w, t, stop


def wait_for(cond, timeout: float = 180.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_burst_a_slow_writer_and_a_corrupt_file(server: Server, tmp_path: Path) -> None:
    folder = tmp_path / "camera"
    folder.mkdir()
    for i in range(1000):  # a burst: 1,000 files before the watcher starts
        (folder / f"burst-{i:04d}.png").write_bytes(small_png(i))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    w, t, stop = watch_in_thread(folder, server.url)
    # a file written slowly, in four chunks over more than the settle time
    whole = sample("brick", "scratch", 77)
    with (folder / "slow.png").open("wb") as fh:
        for k in range(4):
            fh.write(whole[k * len(whole) // 4:(k + 1) * len(whole) // 4])
            fh.flush()
            time.sleep(0.25)
    wait_for(lambda: w.tally.done + w.tally.failed == 1002)
    stop.set()
    t.join(30)
    assert w.tally.failed == 1
    assert sorted(p.name for p in folder.glob("*.png")) == []
    assert len(list((folder / "done").glob("*.png.json"))) == 1001
    assert (folder / "done" / "slow.png").read_bytes() == whole
    assert '"label"' in (folder / "done" / "slow.png.json").read_text()
    error = (folder / "failed" / "corrupt.png.error.txt").read_text()
    assert error.startswith("4") and "corrupt.png" in error, error
    assert (folder / "failed" / "corrupt.png").is_file()
    counts = classified(server.url)
    assert len(counts) == 1001 and set(counts.values()) == {1}
    assert list((folder / ".fsdi-watch").iterdir()) == []  # no key left behind


def test_each_file_once_across_a_service_restart_and_a_killed_watcher(
        server: Server, tmp_path: Path) -> None:
    folder = tmp_path / "camera"
    folder.mkdir()
    names = [f"part-{i:03d}.png" for i in range(240)]
    for i, n in enumerate(names):
        (folder / n).write_bytes(small_png(10_000 + i))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "app.cli", "watch", str(folder), "--group", GROUP,
           "--url", server.url, "--key", KEY, "--settle", "0.2", "--once"]
    done = folder / "done"

    def moved() -> int:
        return len(list(done.glob("*.png"))) if done.is_dir() else 0

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    wait_for(lambda: moved() >= 40)
    server.stop()  # the service goes away mid-run: the watcher waits and retries
    time.sleep(1.5)
    server.start()
    wait_for(lambda: moved() >= 120)
    first.send_signal(signal.SIGKILL)  # the watcher dies mid-request, as it may
    first.wait(30)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "summary:" in second.stderr
    assert sorted(p.name for p in done.glob("*.png")) == names
    assert not list(folder.glob("*.png"))
    counts = classified(server.url)
    assert {n: counts[n] for n in names} == {n: 1 for n in names}
    assert "trying again" in (first.stderr.read() if first.stderr else "")


def test_a_key_that_cannot_reach_the_group_stops_the_watcher_and_moves_nothing(
        server: Server, tmp_path: Path) -> None:
    """A scoped key for another line, or a key revoked mid-run: the watcher stops with the
    reason (exit 2) and every file stays where the camera put it."""
    folder = tmp_path / "camera"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.png").write_bytes(small_png(20_000 + i))
    other = httpx.post(f"{server.url}/api/v1/keys", headers=H,
                       json={"role": "machine", "groups": ["another-line"]}).json()["key"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "app.cli", "watch", str(folder), "--group", GROUP,
           "--url", server.url, "--settle", "0", "--once", "--key"]
    scoped = subprocess.run([*cmd, other], env=env, capture_output=True, text=True,
                            timeout=120)
    assert scoped.returncode == 2, scoped.stderr
    assert "another-line" in scoped.stderr and repr(GROUP) in scoped.stderr
    wrong = subprocess.run([*cmd, "not-a-key-0123456789"], env=env, capture_output=True,
                           text=True, timeout=120)
    assert wrong.returncode == 2 and "refuses this key" in wrong.stderr
    assert sorted(p.name for p in folder.glob("*.png")) == ["p0.png", "p1.png", "p2.png"]
    assert not list((folder / "failed").glob("*")) and not list((folder / "done").glob("*"))
    # revoked while it runs: the next file stops it, the rest stay
    made = httpx.post(f"{server.url}/api/v1/keys", headers=H,
                      json={"role": "machine", "groups": [GROUP]}).json()
    w = Watcher(folder, GROUP, server.url, made["key"], settle=0, say=lambda m: None)
    try:
        w.check()
        w.handle("p0.png")
        assert (folder / "done" / "p0.png").exists()
        httpx.delete(f"{server.url}/api/v1/keys/{made['id']}", headers=H)
        with pytest.raises(KeyRefused):
            w.handle("p1.png")
    finally:
        w.close()
    assert (folder / "p1.png").exists() and not list((folder / "failed").glob("*"))
