"""The service serving the INT8 network (FSDI_PRECISION=int8) end to end."""

from __future__ import annotations

from pathlib import Path

from models.zoo import create_backbone
from tests.app.conftest import make_settings, serving
from tests.app.test_api import check_held_out_images


def test_int8_service_enrols_and_classifies(model_cache: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'fsdi.db'}"
    with serving(make_settings(tmp_path / "data", db, model_cache, precision="int8")) as client:
        body = check_held_out_images(client)  # same accuracy bar as fp32
        # Its own model version: INT8 and fp32 embeddings are never mixed (a switch
        # needs `fsdi reembed`, as a backbone change does: tests/app/test_reembed.py).
        assert body["model"]["version"] == create_backbone("fsdi_lite0_meta", "int8").version
        assert client.get("/readyz").json()["model"] == body["model"]["version"]
