"""What can be checked of the Docker files without a Docker engine: the command they run
exists, every setting they pass is a real setting, the image runs as non-root with a
readiness healthcheck, and base images are pinned."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

from app.cli import cli
from app.settings import Settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_dockerfile_runs_fsdi_serve_as_non_root_with_readiness_check() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M)
    assert base
    if base.group(1) == "${BASE}":  # the default of `ARG BASE` is what a plain build uses
        base = re.search(r"^ARG BASE=(\S+)", text, re.M)
    assert base and re.search(r":\d+\.\d+", base.group(1)), "pin the base image"
    assert re.search(r"^USER (?!root)\S+", text, re.M)
    assert "/readyz" in text.split("HEALTHCHECK", 1)[1]
    cmd = re.search(r'^CMD \[(.*)\]', text, re.M)
    assert cmd
    argv = [a.strip().strip('"') for a in cmd.group(1).split(",")]
    assert argv[:2] == ["fsdi", "serve"]
    help_text = CliRunner().invoke(cli, ["serve", "--help"]).output
    for flag in (a for a in argv[2:] if a.startswith("--")):
        assert flag in help_text
    for copied in re.findall(r"^COPY (\S+)", text, re.M):
        assert (DOCKER.parent / copied).exists(), copied


def test_compose_runs_replicas_as_on_separate_hosts_behind_the_balancer() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    fields = {f"FSDI_{name.upper()}" for name in Settings.model_fields}
    services = compose["services"]
    replicas = {n: s for n, s in services.items() if n.startswith("fsdi")}
    assert len(replicas) >= 2
    volumes = set()
    for svc in replicas.values():
        env = svc["environment"]
        assert set(env) - {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= fields, \
            set(env) - fields
        assert env["FSDI_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["FSDI_BLOB_URL"].startswith("s3://")
        assert env["FSDI_S3_ENDPOINT_URL"] == "http://s3:8333"
        (volume,) = [v for v in svc["volumes"] if v.endswith(":/data")]
        volumes.add(volume)
    assert len(volumes) == len(replicas), "each replica has a data directory of its own"
    lb = services["lb"]
    assert {f"{n}:8000" for n in replicas} == {
        v for k, v in lb["environment"].items() if k.startswith("FSDI_REPLICA_")}
    assert any(v.startswith("./haproxy.cfg:") for v in lb["volumes"])
    for name in ("db", "s3", "lb"):
        assert re.search(r":\d+(\.\d+)*(-\w+)?$", services[name]["image"]), f"pin {name}"


def test_admin_key_has_no_default_and_blank_means_unset() -> None:
    assert Settings(admin_key=None).admin_key is None
    assert Settings(admin_key="  ").admin_key is None  # blank: a key is generated instead
    assert Settings(admin_key="short").admin_key == "short"  # allowed, warned at start-up


def test_every_shipped_weight_and_asset_is_package_data() -> None:
    """A non-editable install (the Docker image) must carry the trained weights, the
    console and the migrations, not only the code."""
    import tomllib

    root = DOCKER.parent
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]
    wanted = [*root.glob("models/weights/**/*.safetensors"), *root.glob("app/static/*"),
              *root.glob("storage/migrations/**/*.py")]
    assert len(wanted) >= 10
    shipped = {f for pkg, globs in data.items() for g in globs for f in (root / pkg).glob(g)}
    for path in wanted:  # setuptools globs: "*" never crosses a "/"
        assert path in shipped, f"{path} is not package data"


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (DOCKER.parent / "README.md").read_text()
    missing = [n.upper() for n in Settings.model_fields
               if f"`{n.upper()}`" not in readme and f"`FSDI_{n.upper()}`" not in readme
               and not n.startswith("calib_")]
    assert not missing, f"settings missing from the README: {missing}"
