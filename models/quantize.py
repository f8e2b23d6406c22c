"""INT8 static quantisation of the served network (`FSDI_PRECISION=int8`).

ONNX Runtime's QDQ format, weights int8 per output channel in 7 bits (`reduce_range`),
activations uint8 per tensor with min/max ranges from calibration images. The 7 bits
are for x86 CPUs without VNNI (AVX2 only): there ONNX
Runtime multiplies uint8 by int8 with VPMADDUBSW, whose int16 pair sums saturate with
full 8-bit weights. With 8 bits the metric embedding's mean cosine to fp32 was 0.98 on
the machines this was first built on but 0.91 on an AVX2-only one; with 7 bits it is
0.97 there (ONNX Runtime's quantisation guide names this remedy). The stem convolution
and the depthwise convolutions stay in float: quantised, they cost the metric embedding
most of its fidelity (8-bit weights, first machines: mean cosine to fp32 0.79 with
everything quantised, 0.94 with the stem in float, 0.98 with the depthwise layers too)
for little speed. The calibration images are
generated (the synthetic meta-train defect types), so nothing downloads and every
machine builds the same file. Accuracy against fp32: `fsdi evaluate precision`
(models/MODEL_CARD.md). Changing this recipe means changing `INT8_RECIPE` in
models/backbones.py: it is part of the INT8 model version.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from models.backbones import PreprocessConfig

CALIBRATION_PER_TYPE = 16
CALIBRATION_SEED = 3


def calibration_images(cfg: PreprocessConfig, per_type: int = CALIBRATION_PER_TYPE
                       ) -> np.ndarray:
    """(N, S, S, C) uint8 serving input: synthetic meta-train images (grey, replicated to
    three channels for a colour backbone)."""
    from models.data import synthetic
    from models.features import served_input

    imgs, _, _ = synthetic.make_set(synthetic.TRAIN_TYPES, per_type, CALIBRATION_SEED)
    return served_input(imgs, cfg)


def quantize_int8(src: Path, dst: Path, calibration: np.ndarray) -> None:
    """fp32 ONNX at `src` -> INT8 QDQ ONNX at `dst`, written atomically."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration[i:i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {"images": x}

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        convs = [n for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
        keep_float = [convs[0].name] + [
            n.name for n in convs
            if any(a.name == "group" and a.i > 1 for a in n.attribute)]
        out = Path(tmp) / "int8.onnx"
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                        nodes_to_exclude=keep_float,
                        calibrate_method=CalibrationMethod.MinMax, reduce_range=True,
                        extra_options={"ActivationSymmetric": False,
                                       "WeightSymmetric": True})
        os.replace(out, dst)
