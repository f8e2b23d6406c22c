"""Pooled trunk descriptors for whole data sets, run by ONNX Runtime in batches."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from models.backbones import PreprocessConfig
from models.meta import DescriptorTrunk
from models.serving import ServingNet


def grey_to_input(imgs: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) grey uint8 -> (N, S, S, 3) uint8, the serving input format."""
    out = np.empty((len(imgs), size, size, 3), np.uint8)
    for i, a in enumerate(imgs):
        im = Image.fromarray(a)
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(im)[:, :, None]
    return out


def served_input(imgs: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """(N, h, w) grey uint8 -> (N, S, S, C) uint8 as the served network takes it: one
    channel for a grey backbone, three otherwise."""
    x = grey_to_input(imgs, cfg.input_size)
    return np.ascontiguousarray(x[:, :, :, :1]) if cfg.grey else x


def descriptors(trunk: torch.nn.Module, imgs: np.ndarray, cfg: PreprocessConfig,
                batch: int = 32, threads: int = 2, desc: str = "features") -> np.ndarray:
    """(N, h, w) grey uint8 images -> (N, 2784) float32 descriptors."""
    import onnxruntime as ort

    net = ServingNet(DescriptorTrunk(trunk), cfg).eval()
    s = cfg.input_size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "desc.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on this fixed-size network
            torch.onnx.export(net, (torch.zeros(2, s, s, 3, dtype=torch.uint8),), str(path),
                              input_names=["images"], output_names=["desc"],
                              dynamic_axes={"images": {0: "n"}, "desc": {0: "n"}},
                              opset_version=17, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        out = []
        for i in tqdm(range(0, len(imgs), batch), desc=desc, unit="batch", leave=False):
            x = grey_to_input(imgs[i:i + batch], s)
            out.append(sess.run(["desc"], {"images": x})[0])
    return np.concatenate(out).astype(np.float32)
