"""INT8 serving (FSDI_PRECISION=int8): a real static quantisation, close to fp32."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from bench.imagegen import CLASSES, sample
from models.embedder import OrtEmbedder, make_embedder
from models.preprocess import to_input
from models.zoo import create_backbone


def test_int8_network_stays_close_to_fp32(model_cache: Path) -> None:
    fp32_bb = create_backbone("fsdi_lite0_meta")
    int8_bb = create_backbone("fsdi_lite0_meta", "int8")
    assert int8_bb.version != fp32_bb.version  # never mixed with fp32 embeddings
    int8 = OrtEmbedder(int8_bb, model_cache, threads=2)
    ops = {n.op_type for n in onnx.load(str(int8.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not list(model_cache.glob("*.fp32.onnx"))  # the intermediate export is gone
    fp32 = OrtEmbedder(fp32_bb, model_cache, threads=2)

    names = list(CLASSES)
    x = np.stack([to_input(Image.open(io.BytesIO(sample(*CLASSES[c], seed))).convert("RGB"),
                           fp32_bb.preprocess)
                  for seed in range(4) for c in names])
    a, b = fp32.embed(x), int8.embed(x)
    m = fp32_bb.metric_dim
    cos = (a[:, :m] * b[:, :m]).sum(1)  # both parts are unit vectors
    assert cos.mean() > 0.95 and cos.min() > 0.8
    # Nearest prototype (seed 0 of each class) decides the same way for most queries.
    labels = np.tile(np.arange(len(names)), 4)
    protos_a, protos_b = a[:len(names), :m], b[:len(names), :m]
    pick_a = (a[len(names):, :m] @ protos_a.T).argmax(1)
    pick_b = (b[len(names):, :m] @ protos_b.T).argmax(1)
    assert (pick_a == pick_b).mean() >= 0.9
    assert (pick_b == labels[len(names):]).mean() >= 0.6


def test_int8_is_refused_where_it_cannot_run(model_cache: Path) -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(ValueError, match="ONNX Runtime only"):
        make_embedder(create_backbone("fsdi_lite0_meta", "int8"), "torch", model_cache, 1)
    with pytest.raises(ValidationError, match="FSDI_RUNTIME=onnxruntime"):
        Settings(precision="int8", runtime="torch")
    with pytest.raises(ValueError, match="unknown precision"):
        create_backbone("fsdi_lite0_meta", "int4")
