"""The committed lock files agree with pyproject.toml: every declared dependency is pinned at
a version it allows, and nothing is pinned as a direct dependency that pyproject no longer
declares. `bash .ci/lock` refreshes them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$", re.M)


def pins(lock: str) -> dict[str, Version]:
    return {canonicalize_name(n): Version(v) for n, v in PIN.findall(lock)}


def direct(lock: str) -> set[str]:
    """Packages the lock says it pinned because pyproject asked for them."""
    out: set[str] = set()
    for block in re.split(r"\n(?=\S)", lock):
        m = PIN.match(block)
        if m and "fsdi (pyproject.toml)" in block:
            out.add(canonicalize_name(m.group(1)))
    return out


LOCKS = {
    "requirements.txt": PYPROJECT["dependencies"],
    "requirements-test.txt": PYPROJECT["dependencies"]
    + PYPROJECT["optional-dependencies"]["test"],
}


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_lock_agrees_with_pyproject(name: str) -> None:
    text = (ROOT / name).read_text()
    pinned = pins(text)
    declared = [Requirement(r) for r in LOCKS[name]]
    for req in declared:
        key = canonicalize_name(req.name)
        assert key in pinned, f"{req.name} is declared but not in {name}: run bash .ci/lock"
        assert req.specifier.contains(pinned[key], prereleases=True), (
            f"{name} pins {req.name}=={pinned[key]}, pyproject asks {req.specifier}")
    stale = direct(text) - {canonicalize_name(r.name) for r in declared}
    assert not stale, f"{name} still pins {stale} for pyproject: run bash .ci/lock"


def test_every_pin_is_hashed_and_torch_is_the_cpu_build() -> None:
    for name in LOCKS:
        text = (ROOT / name).read_text()
        blocks = [b for b in re.split(r"\n(?=\S)", text) if PIN.match(b)]
        assert blocks
        for block in blocks:
            assert "--hash=sha256:" in block, f"{name}: {block.splitlines()[0]} has no hash"
        assert pins(text)["torch"].local == "cpu", f"{name}: torch must be the CPU build"


def test_test_lock_keeps_the_runtime_versions() -> None:
    runtime = pins((ROOT / "requirements.txt").read_text())
    test = pins((ROOT / "requirements-test.txt").read_text())
    assert {n: test.get(n) for n in runtime} == runtime
