"""Start and stop a real `fsdi serve` process on a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None,
                 port: int | None = None, fsdi: list[str] | None = None) -> None:
        """`fsdi` is the command that runs the CLI (default: this interpreter's app.cli)."""
        self.data_dir = data_dir
        self.fsdi = fsdi or [sys.executable, "-m", "app.cli"]
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "FSDI_DATA_DIR": str(data_dir), **(env or {})}
        self.log = data_dir.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.fsdi, "serve", "--port", str(self.port)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("server never became ready:\n" + self.log.read_text()[-3000:])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def thread_times(self) -> dict[int, tuple[str, float]]:
        """Per thread of the server process (Linux /proc): its OS-level name and the CPU
        seconds (user + system) it has used so far; empty where there is no /proc."""
        tasks = Path(f"/proc/{self.pid}/task")
        if not tasks.is_dir():
            return {}
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for task in tasks.iterdir():
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended meanwhile
            out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
        return out

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def checkout(rev: str, where: Path) -> list[str]:
    """REV of this repository in a temporary git worktree at `where`; returns the command
    that runs its `fsdi` CLI with this interpreter (for Server(fsdi=...)). Remove it with
    remove_checkout."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), rev],
                   check=True, capture_output=True)
    return [sys.executable, "-c",
            f"import sys; sys.path.insert(0, {str(where)!r}); from app.cli import main; main()"]


def remove_checkout(where: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(where)],
                   capture_output=True)


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[tuple[Server, ...]]:
    """Start each server in turn; stop every one started, whatever happens."""
    started: list[Server] = []
    try:
        for srv in servers:
            started.append(srv.start())
        yield servers
    finally:
        for srv in reversed(started):
            srv.stop()
