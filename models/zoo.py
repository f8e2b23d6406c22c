"""Build a registered backbone by name (the recipes live in models.backbones), or describe
it from its export without building it (no torch)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from models.backbones import _REGISTRY, PRECISIONS, Backbone, export_path, files_sha256, recipe


def available_backbones() -> list[str]:
    return sorted(_REGISTRY)


def _from_recipe(name: str, precision: str) -> Backbone:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use {' or '.join(PRECISIONS)}")
    r = recipe(name)
    files = r.weight_files()
    return Backbone(name=r.name, net=None, preprocess=r.preprocess, weight_files=files,
                    weights_sha256=files_sha256(files), revision=r.revision,
                    precision=precision, patch_layers=r.patch_layers)


def create_backbone(name: str, precision: str = "fp32") -> Backbone:
    """Build a registered backbone in torch; raise KeyError naming the valid ones otherwise."""
    import torch

    from models.serving import serving_net

    bb = _from_recipe(name, precision)
    module, fn = recipe(name).build.split(":")
    net, metric_dim = getattr(importlib.import_module(module), fn)()
    bb.net = net.eval()
    with torch.no_grad():
        size = bb.preprocess.input_size
        bb.dim = int(bb.net(torch.zeros(1, 3, size, size)).shape[1])
        if bb.patch_layers:
            _, patches = serving_net(bb, patches=True)(
                torch.zeros(1, size, size, bb.preprocess.channels, dtype=torch.uint8))
            bb.patch_shape = tuple(int(v) for v in patches.shape[1:])  # type: ignore[assignment]
    bb.metric_dim = metric_dim or bb.dim
    return bb


def shape_file(onnx_path: Path) -> Path:
    """Where an export's shapes are written beside it (models.embedder)."""
    return onnx_path.with_suffix(".shapes.json")


def write_shapes(backbone: Backbone, onnx_path: Path) -> None:
    shape_file(onnx_path).write_text(json.dumps({
        "version": backbone.version, "dim": backbone.dim, "metric_dim": backbone.metric_dim,
        "patch_shape": list(backbone.patch_shape)}))


def describe_backbone(name: str, precision: str, cache_dir: Path) -> Backbone | None:
    """The backbone as its export in `cache_dir` serves it — version from the recipe and
    the weight files' hashes, shapes from the file written beside the export — without
    building it; None when either file is missing or was written for another version."""
    bb = _from_recipe(name, precision)
    onnx_path = export_path(cache_dir, bb.version)
    try:
        shapes = json.loads(shape_file(onnx_path).read_text())
    except (OSError, ValueError):
        return None
    if not onnx_path.is_file() or shapes.get("version") != bb.version:
        return None
    bb.dim, bb.metric_dim = int(shapes["dim"]), int(shapes["metric_dim"])
    bb.patch_shape = tuple(int(v) for v in shapes["patch_shape"])  # type: ignore[assignment]
    return bb
