"""A fresh machine installs and runs it: the README's first command in a fresh venv with no
extras, and the Docker image built from docker/Dockerfile, each serving until /readyz is 200
(the venv one also walks ../shared/contract_check.py)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.server import Server, free_port
from tests.e2e.test_first_minute import run_walk

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
KEY = "install-admin-key-0123456789abcdef"


def readme_commands() -> list[str]:
    """The command lines of the README's "Two commands" block, in order."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_has_two_commands_and_ci_runs_the_second() -> None:
    serve, test = readme_commands()
    assert serve.endswith("fsdi serve") and "requirements.txt" in serve
    assert "[test]" not in serve and "requirements-test" not in serve
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"exec {test}" in ci


def source_copy(dest: Path) -> Path:
    """The working tree as a fresh clone would have it: tracked and untracked-but-not-ignored
    files only, so nothing installed here (.venv, build/, caches) leaks into the check."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def outside_env() -> dict[str, str]:
    """The environment of a new shell: no venv of ours active, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(sys.prefix))
    return env


@pytest.mark.slow
def test_readme_first_command_serves_the_contract_without_extras(tmp_path: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to copy the tree as a clone has it")
    serve, _ = readme_commands()
    install, start = serve.rsplit(" && ", 1)
    assert start == ".venv/bin/fsdi serve"
    src = source_copy(tmp_path / "clone")
    out = subprocess.run(["bash", "-c", install], cwd=src, env=outside_env(),
                         capture_output=True, text=True, timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    venv_py = str(src / ".venv" / "bin" / "python")
    for extra in ("pytest", "schemathesis", "selenium"):  # no extras came along
        probe = subprocess.run([venv_py, "-c", f"import {extra}"], capture_output=True)
        assert probe.returncode != 0, f"{extra} is installed: the first command took extras"
    # The serving process loads no torch (it stays installed, for export and training).
    bare = subprocess.run([venv_py, "-c", "import app.main, sys; assert 'torch' not in "
                           "sys.modules, 'import app.main loaded torch'"],
                          cwd=src, capture_output=True, text=True)
    assert bare.returncode == 0, bare.stderr[-2000:]
    srv = Server(tmp_path / "data", {**outside_env(), "FSDI_ADMIN_KEY": KEY},
                 fsdi=[str(src / ".venv" / "bin" / "fsdi")]).start(timeout=300)
    try:
        script = SHARED / "contract_check.py"
        if not script.exists():
            if os.environ.get("CI"):
                pytest.fail(f"{script} is missing in CI")
            pytest.skip(f"{script} is not here")
        walk = subprocess.run([sys.executable, str(script), "--url", srv.url, "--key", KEY],
                              capture_output=True, text=True, timeout=300)
        assert walk.returncode == 0 and "contract holds" in walk.stdout, walk.stdout + walk.stderr
        # the first minute: the demo, then the README's curl walk pasted as written, with
        # this clone's .venv/bin/fsdi
        run_walk(srv.url, KEY, src)
    finally:
        srv.stop()


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is required in CI (.ci/test installs it)")
        pytest.skip(f"{tool} is not installed: the image build check needs podman + mmdebstrap")


def run(*argv: str, timeout: float = 900) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{argv[:3]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout.strip()


BASE = "localhost/fsdi-ci-base:bookworm"


def local_base(workdir: Path) -> str:
    """No registry is reachable here: a Debian bookworm base made by mmdebstrap and imported
    into podman, kept between runs."""
    if subprocess.run(["podman", "image", "exists", BASE]).returncode != 0:
        tar = workdir / "base.tar"
        run("mmdebstrap", "--quiet", "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates", "bookworm", str(tar))
        run("podman", "import", str(tar), BASE)
        tar.unlink()
    return BASE


@pytest.fixture
def built_image(tmp_path: Path) -> Iterator[str]:
    _need("podman")
    _need("mmdebstrap")
    if os.geteuid() != 0:
        pytest.skip("the chroot smoke test needs root")
    tag = f"localhost/fsdi-ci:{uuid.uuid4().hex[:8]}"
    args = ["podman", "build", "--isolation=chroot", "--format", "docker", "-f",
            str(ROOT / "docker" / "Dockerfile"), "-t", tag,
            "--build-arg", f"BASE={local_base(tmp_path)}"]
    if Path("/opt/wheels").is_dir():  # these machines' CPU torch wheel, instead of its index
        args += ["--volume", "/opt/wheels:/wheels:ro", "--build-arg",
                 "PIP_EXTRA=--find-links /wheels"]
    ca = Path("/etc/ssl/certs/ca-certificates.crt")
    if ca.exists():  # PyPI through this network's proxy; a build secret stays out of layers
        args += ["--secret", f"id=ca,src={ca}"]
    run(*args, str(ROOT), timeout=1500)
    try:
        yield tag
    finally:
        subprocess.run(["podman", "image", "unmount", tag], capture_output=True)
        subprocess.run(["podman", "rmi", "-f", tag], capture_output=True)


@pytest.mark.slow
def test_docker_image_builds_and_serves_under_chroot(built_image: str, tmp_path: Path) -> None:
    """`podman run` is refused here (crun cannot set rlimits), so the image's own filesystem
    is mounted and its `fsdi serve` started under chroot as the image's user, in a private
    mount namespace (a writable /data and /proc), until /readyz answers 200."""
    root = run("podman", "image", "mount", built_image)
    user = run("podman", "image", "inspect", built_image, "--format", "{{.Config.User}}")
    env = run("podman", "image", "inspect", built_image, "--format",
              "{{range .Config.Env}}{{println .}}{{end}}").split()
    assert re.fullmatch(r"\d+:\d+", user) and not user.startswith("0:"), user
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, *map(int, user.split(":")))
    port = free_port()
    inner = (f"mount --bind {data} {root}/data && mount -t proc proc {root}/proc && "
             f"exec chroot --userspec={user} {root} /usr/bin/env -i {' '.join(env)} "
             f"FSDI_ADMIN_KEY={KEY} fsdi serve --host 127.0.0.1 --port {port}")
    log = tmp_path / "image-serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["unshare", "--mount", "--fork", "sh", "-c", inner],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, ready = time.monotonic() + 300, False
        while time.monotonic() < deadline and not ready:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)
        assert ready, log.read_text()[-3000:]
        me = httpx.get(f"http://127.0.0.1:{port}/api/v1/me",
                       headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        assert me.json()["role"] == "admin"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    assert (data / "fsdi.db").exists(), "the image's service kept its data under /data"
