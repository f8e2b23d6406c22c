"""Shared fixtures: real SQLite files, a real PostgreSQL database, a real app."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("FSDI_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ADMIN_KEY = "test-admin-key-0123456789"


def _pg_available() -> bool:
    try:
        import psycopg

        url = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export per test session."""
    return tmp_path_factory.mktemp("onnx")



def fresh_pg_database() -> Iterator[str]:
    """Create a throw-away database on the CI PostgreSQL; drop it afterwards."""
    import psycopg

    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is required in CI")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not running")
    name = f"fsdi_test_{uuid.uuid4().hex[:10]}"
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# The shared SeaweedFS S3 server .ci/test starts (bench/seaweed.py); tests use one bucket,
# each under a prefix of its own (every bucket costs SeaweedFS a set of volumes).
S3_ENDPOINT = os.environ.get("FSDI_TEST_S3", "http://127.0.0.1:8333")
S3_BUCKET = "fsdi-test"


def _s3_available() -> bool:
    from bench.seaweed import credentials_env

    try:
        import boto3

        boto3.client("s3", endpoint_url=S3_ENDPOINT, **_client_kw(credentials_env())
                     ).list_buckets()
        return True
    except Exception:
        return False


def _client_kw(env: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            "region_name": env["AWS_DEFAULT_REGION"]}


def s3_prefix_url() -> str:
    """`s3://fsdi-test/<fresh prefix>` on the shared server, with its credentials in this
    process's environment (where boto3 reads them, as the service does)."""
    from bench.seaweed import credentials_env

    if not _s3_available():
        if os.environ.get("CI"):
            pytest.fail(f"the SeaweedFS S3 server at {S3_ENDPOINT} is required in CI")
        pytest.skip(f"no S3 server at {S3_ENDPOINT} (.ci/test starts one)")
    os.environ.update(credentials_env())
    return f"s3://{S3_BUCKET}/t-{uuid.uuid4().hex[:12]}"


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
STORES = ["local", pytest.param("s3", marks=pytest.mark.s3)]


@pytest.fixture(params=STORES)
def blob_url(request: pytest.FixtureRequest) -> str | None:
    """Where image bytes go: None (the data directory) or a fresh prefix on the S3 server."""
    return None if request.param == "local" else s3_prefix_url()


@pytest.fixture(scope="module")
def module_blob_url(module_db_url: str) -> str | None:
    """The image store that goes with `module_db_url`: the data directory with SQLite
    (one host), the S3 server with PostgreSQL (many hosts), so every API test runs on
    both stores without running twice as often."""
    return s3_prefix_url() if module_db_url.startswith("postgresql") else None


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fsdi.db'}"
    else:
        yield from fresh_pg_database()


@pytest.fixture(scope="module", params=BACKENDS)
def module_db_url(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'fsdi.db'}"
    else:
        yield from fresh_pg_database()
