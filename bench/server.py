"""Start and stop a real `fsdi serve` process on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


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
