"""Run a backbone on preprocessed batches: ONNX Runtime for serving, torch as fallback.

The ONNX file is exported from the torch network and cached on disk under a name that
contains the weights' sha256, so new weights always mean a new export.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.backbones import Backbone, export_path


class Embedder(Protocol):
    backbone: Backbone
    runtime: str

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, C) uint8 -> (N, D) float32 unit vectors."""
        ...

    def embed_packed(self, batch: np.ndarray, wide: bool = False) -> np.ndarray:
        """(N, S, S, C) uint8 -> (N, D + h*w*C) float32: the embedding, then the patch
        features (models.patchcore) of the same forward pass, flattened (`unpack`).
        `wide`: on every core the embedder was given for a pass that runs alone."""
        ...


def unpack(rows: np.ndarray, backbone: Backbone) -> tuple[np.ndarray, np.ndarray]:
    """Packed rows (N, D + h*w*C) -> embeddings (N, D) and patch features (N, h, w, C)."""
    d = backbone.dim
    return rows[:, :d], rows[:, d:].reshape(len(rows), *backbone.patch_shape)


def _pack(emb: np.ndarray, patches: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(emb, np.float32),
                           np.asarray(patches, np.float32).reshape(len(patches), -1)], axis=1)


def pin_threads(threads: int) -> None:
    """One runtime, sized to the cores: runtimes that oversubscribe them thrash."""
    import sys

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if "torch" not in sys.modules:  # the ONNX Runtime path never loads it
        return
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set once in this process
        torch.set_num_interop_threads(1)


class TorchEmbedder:
    runtime = "torch"

    def __init__(self, backbone: Backbone) -> None:
        from models.serving import serving_net

        self.backbone = backbone
        self.net = serving_net(backbone)
        self.net_patches = serving_net(backbone, patches=True) if backbone.patch_layers else None

    def embed(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.net(torch.from_numpy(np.ascontiguousarray(batch, np.uint8)))
        return out.numpy().astype(np.float32, copy=False)  # type: ignore[union-attr]

    def embed_packed(self, batch: np.ndarray, wide: bool = False) -> np.ndarray:
        import torch

        if self.net_patches is None:
            raise ValueError(f"{self.backbone.name} serves no patch features")
        with torch.inference_mode():
            emb, patches = self.net_patches(
                torch.from_numpy(np.ascontiguousarray(batch, np.uint8)))
        return _pack(emb.numpy(), patches.numpy())


def export_onnx(backbone: Backbone, target: Path) -> None:
    """Export with a dynamic batch axis; write to a temp file and rename atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    s = backbone.preprocess.input_size
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # The tracer's notes (constant folding, int() of a traced shape) are expected
            # for this fixed-size network; they are not actionable by an operator.
            warnings.simplefilter("ignore")
            _export(backbone, tmp, s, backbone.preprocess.channels)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _export(backbone: Backbone, path: str, s: int, channels: int) -> None:
    """One graph, two outputs where the backbone serves patches: a caller that asks only
    for the embeddings gets only what they need computed."""
    import torch

    from models.serving import serving_net

    outputs = ["embeddings"] + (["patches"] if backbone.patch_layers else [])
    torch.onnx.export(
        serving_net(backbone, patches=bool(backbone.patch_layers)),
        (torch.zeros(2, s, s, channels, dtype=torch.uint8),),
        path,
        input_names=["images"],
        output_names=outputs,
        dynamic_axes={"images": {0: "n"}, **{o: {0: "n"} for o in outputs}},
        opset_version=17,
        dynamo=False,
    )


def _has_outputs(session: object, backbone: Backbone) -> bool:
    names = {o.name for o in session.get_outputs()}  # type: ignore[attr-defined]
    return "embeddings" in names and (not backbone.patch_layers or "patches" in names)


class OrtEmbedder:
    runtime = "onnxruntime"

    def __init__(self, backbone: Backbone, cache_dir: Path, threads: int,
                 wide_threads: int | None = None) -> None:
        """`threads` per pass; `wide_threads`, when more, for a pass that runs alone
        (`embed_packed(wide=True)`): one camera's image gets every core, while concurrent
        passes keep their narrower sessions (a second session of the same file)."""
        self.backbone = backbone
        self.path = export_path(cache_dir, backbone.version)
        if not self.path.is_file():
            self._build()
        try:
            self.session = self._session(threads)
            if not _has_outputs(self.session, backbone):
                raise ValueError("a cached export from before the patch output")
        except Exception:
            # A damaged or outdated cache file: rebuild it once from the torch weights.
            self._build()
            self.session = self._session(threads)
        self.wide = (self._session(wide_threads)
                     if wide_threads is not None and wide_threads > threads else self.session)
        from models.zoo import shape_file, write_shapes

        if not shape_file(self.path).is_file():  # what lets a later start skip torch
            write_shapes(self.backbone, self.path)

    def _session(self, threads: int) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning intra-op threads burn the cores that decode the next request's images
        # (and, after a pass alone, the cores its patch search runs on: measured).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])

    def _build(self) -> None:
        """Export the served file; for INT8, export fp32 beside it and quantise that. A
        backbone described from an earlier export is built in torch first."""
        from models.zoo import create_backbone, shape_file

        shape_file(self.path).unlink(missing_ok=True)
        if self.backbone.net is None:
            self.backbone = create_backbone(self.backbone.name, self.backbone.precision)
        if self.backbone.precision == "fp32":
            export_onnx(self.backbone, self.path)
            return
        from models.quantize import calibration_images, quantize_int8

        fp32 = self.path.with_suffix(".fp32.onnx")
        export_onnx(self.backbone, fp32)
        try:
            quantize_int8(fp32, self.path, calibration_images(self.backbone.preprocess))
        finally:
            fp32.unlink(missing_ok=True)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.uint8)
        (out,) = self.session.run(["embeddings"], {"images": x})
        return np.asarray(out, dtype=np.float32)

    def embed_packed(self, batch: np.ndarray, wide: bool = False) -> np.ndarray:
        if not self.backbone.patch_layers:
            raise ValueError(f"{self.backbone.name} serves no patch features")
        x = np.ascontiguousarray(batch, dtype=np.uint8)
        session = self.wide if wide else self.session
        emb, patches = session.run(["embeddings", "patches"], {"images": x})
        return _pack(emb, patches)


def make_embedder(backbone: Backbone, runtime: str, cache_dir: Path, threads: int,
                  wide_threads: int | None = None) -> Embedder:
    pin_threads(threads)
    if runtime == "torch":
        if backbone.precision != "fp32":
            raise ValueError(f"precision {backbone.precision} runs in ONNX Runtime only; "
                             f"the torch runtime serves fp32")
        return TorchEmbedder(backbone)
    if runtime == "onnxruntime":
        return OrtEmbedder(backbone, cache_dir, threads, wide_threads)
    raise ValueError(f"unknown runtime {runtime!r}; use 'onnxruntime' or 'torch'")
