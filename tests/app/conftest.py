"""A real app (real database, real backbone, ONNX Runtime) behind Starlette's TestClient."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import ADMIN_KEY, S3_ENDPOINT


def make_settings(data_dir: Path, db_url: str, model_cache: Path, **kw: object) -> Settings:
    return Settings(data_dir=data_dir, database_url=db_url, admin_key=ADMIN_KEY,
                    model_cache_dir=model_cache, **kw)  # type: ignore[arg-type]


@contextlib.contextmanager
def serving(app_settings: Settings) -> Iterator[TestClient]:
    """A started app, ready and holding the admin key; shut down on the way out."""
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service never became ready"
            time.sleep(0.05)
        client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        yield client


@pytest.fixture(scope="module")
def client(module_db_url: str, module_blob_url: str | None, model_cache: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with serving(make_settings(tmp_path_factory.mktemp("data"), module_db_url, model_cache,
                               blob_url=module_blob_url, s3_endpoint_url=S3_ENDPOINT,
                               max_request_bytes=4 * 1024 * 1024,
                               max_file_bytes=2 * 1024 * 1024, max_files_per_request=12,
                               max_image_pixels=4_000_000)) as c:
        yield c


@pytest.fixture(scope="module")
def quiet_client(module_db_url: str, module_blob_url: str | None, model_cache: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A second app on the same database with its replica sync loop off, for tests that
    call `sync_once` (or a cache refresh) themselves: a background sync between two of
    their steps would make them race it."""
    with serving(make_settings(tmp_path_factory.mktemp("quiet"), module_db_url, model_cache,
                               blob_url=module_blob_url, s3_endpoint_url=S3_ENDPOINT,
                               sync_interval_ms=0)) as c:
        yield c


def as_files(items: list[tuple[str, bytes]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "image/png")) for name, data in items]


def new_key(client: TestClient, role: str) -> str:
    r = client.post("/api/v1/keys", json={"role": role, "label": f"test-{role}"})
    assert r.status_code == 201, r.text
    return str(r.json()["key"])
