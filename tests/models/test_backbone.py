"""Backbone loading: strict, safe, and ONNX Runtime equal to torch."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.imagegen import CLASSES, sample
from models.embedder import OrtEmbedder, TorchEmbedder
from models.preprocess import to_input
from models.serving import load_state_dict_safely
from models.zoo import create_backbone


class Boom:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, ("raise SystemExit('payload ran')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's note on it
def test_malicious_checkpoint_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "evil.pth"
    with open(p, "wb") as fh:
        pickle.dump({"w": Boom()}, fh)
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict_safely(p)


def test_non_tensor_checkpoint_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "odd.pth"
    torch.save({"w": [1, 2, 3]}, p)
    with pytest.raises(ValueError, match="not a plain state dict"):
        load_state_dict_safely(p)


def test_tampered_safetensors_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    p = tmp_path / "head.safetensors"
    save_file({"w": torch.ones(4, 4)}, str(p))
    data = bytearray(p.read_bytes())
    data[10:20] = b"\xff" * 10  # corrupt the JSON header
    p.write_bytes(bytes(data))
    with pytest.raises(Exception):  # noqa: B017 - safetensors raises its own error type
        load_state_dict_safely(p)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "fsdi_lite0_meta"])
def test_onnx_matches_torch(model_cache: Path, name: str) -> None:
    import io

    from PIL import Image

    bb = create_backbone(name)
    assert len(bb.weights_sha256) == 64 and bb.dim >= bb.metric_dim > 0
    imgs = [sample(s, d, i) for i, (s, d) in enumerate(CLASSES.values())] * 3
    x = np.stack([to_input(Image.open(io.BytesIO(b)).convert("RGB"), bb.preprocess)
                  for b in imgs])
    ref = TorchEmbedder(bb).embed(x)
    ort = OrtEmbedder(bb, model_cache, threads=2).embed(x)
    assert np.abs(ref - ort).max() < 1e-4
    assert np.allclose(np.linalg.norm(ort[:, :bb.metric_dim], axis=1), 1, atol=1e-4)
    protos = ref[:3]
    assert ((ref @ protos.T).argmax(1) == (ort @ protos.T).argmax(1)).all()


def test_imagenet_trunk_recognises_photos() -> None:
    """The trunk computes what its weights were trained for: with the wrong activation
    (Swish instead of ReLU6) it called this espresso a toilet seat."""
    from PIL import Image
    from skimage import data

    from models.backbones import IMAGENET_MEAN, IMAGENET_STD
    from models.effnet import lite0_trunk

    net = lite0_trunk()[0].eval()
    expected = {"chelsea": range(281, 286), "coffee": (967, 968)}  # cats; espresso, cup
    for name, classes in expected.items():
        im = Image.fromarray(getattr(data, name)()).convert("RGB").resize((224, 224))
        x = (np.asarray(im, np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
        with torch.no_grad():
            logits = net(torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None])
        assert int(logits.argmax()) in classes, name
