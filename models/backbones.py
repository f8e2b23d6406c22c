"""Backbone types and their registry (name -> builder); models.zoo builds them by name.
Unknown names raise; weights never download.

Each backbone carries its own preprocessing config, so enrolment and classification
derive resize and normalisation from the same place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the network's input: squash-resize (no crop, so a defect at
    the border is never cut away), then per-channel normalisation."""

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Grey-scale input (one channel, replicated inside the network): invariant to the
    # sensor's colour, and a third of the decoding and resizing work.
    grey: bool = False

    @property
    def channels(self) -> int:
        return 1 if self.grey else 3


@dataclass
class Backbone:
    """A built embedding network plus the facts stored beside every embedding."""

    name: str
    net: nn.Module
    preprocess: PreprocessConfig
    weight_files: list[Path] = field(default_factory=list)
    weights_sha256: str = ""
    dim: int = 0
    # Leading dims that rank classes; the rest (if any) is an appearance embedding used
    # only to reject images unlike anything enrolled. 0 means "all of it".
    metric_dim: int = 0
    # Bumped when the same weights start to compute something else (a code fix): the
    # version, and with it every stored embedding and cached export, then changes too.
    revision: str = ""
    # How the network is served: "fp32", or "int8" (static quantisation, ONNX Runtime
    # only; models/quantize.py). INT8 embeddings differ, so the version differs too.
    precision: str = "fp32"
    # Trunk blocks whose feature maps give the local patch features of the good-parts
    # memory (models.patchcore); empty: this backbone serves no patch features.
    patch_layers: tuple[int, ...] = ()
    patch_shape: tuple[int, int, int] = (0, 0, 0)  # (h, w, C), set by models.zoo
    _version: tuple[tuple[object, ...], str] | None = field(
        default=None, init=False, repr=False, compare=False)

    def serving(self, patches: bool = False) -> ServingNet:
        """The served network; with `patches`, it also returns the patch features."""
        layers = self.patch_layers if patches else ()
        return ServingNet(self.net, self.preprocess, layers).eval()

    @property
    def patch_version(self) -> str:
        """What stored patch features are keyed by: the embedding version plus the patch
        recipe (blocks, neighbourhood, normalisation), so either changing means new ones."""
        from models.patchcore.feature_extractor import RECIPE

        layers = "+".join(str(i) for i in self.patch_layers)
        return f"{self.version}/patches-b{layers}-{RECIPE}"

    @property
    def version(self) -> str:
        """Weights, code revision, preprocessing *and* precision: any changing means new
        embeddings."""
        key = (self.name, self.weights_sha256, self.revision, self.preprocess, self.precision)
        if self._version is None or self._version[0] != key:  # read on every request
            served = "" if self.precision == "fp32" else f"|{self.precision}|{INT8_RECIPE}"
            h = hashlib.sha256(f"{self.weights_sha256}|{self.revision}|{self.preprocess!r}"
                               f"{served}".encode()).hexdigest()
            self._version = (key, f"{self.name}@{h[:12]}")
        return self._version[1]


class ServingNet(nn.Module):
    """The network as served: (N, S, S, 3) uint8 in -> (N, D) embeddings out, and with
    `patch_layers` also (N, h, w, C) patch features (models.patchcore), taken from the
    same forward pass.

    Normalisation lives inside the graph so ONNX Runtime does it vectorised, and the
    request path only decodes and resizes.
    """

    def __init__(self, net: nn.Module, cfg: PreprocessConfig,
                 patch_layers: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.net = net
        self.patch_layers = patch_layers
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(cfg.std))).view(1, 3, 1, 1))
        self.register_buffer("shift", (torch.tensor(cfg.mean) / torch.tensor(cfg.std)
                                       ).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = x.permute(0, 3, 1, 2).to(torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        scale, shift = self.get_buffer("scale"), self.get_buffer("shift")
        if not self.patch_layers:
            return self.net(x * scale - shift)  # type: ignore[no-any-return]
        from models.patchcore.feature_extractor import tapped

        with tapped(self.net, self.patch_layers) as taps:
            emb = self.net(x * scale - shift)
        return emb, taps.patches()


BackboneBuilder = Callable[[], Backbone]
_REGISTRY: dict[str, BackboneBuilder] = {}


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def deco(fn: BackboneBuilder) -> BackboneBuilder:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


PRECISIONS = ("fp32", "int8")
# Names models/quantize.py's recipe (calibration set, layers kept in float, ranges):
# change it with the recipe, so INT8 versions and cached INT8 files follow.
INT8_RECIPE = "qdq-perchannel-w7-minmax-syn128-stem+dw-float"


def files_sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def load_state_dict_safely(path: Path) -> dict[str, torch.Tensor]:
    """Load tensors only: safetensors, or torch.load(weights_only=True). No unsafe fallback."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path.name} is not a plain state dict of tensors")
    return obj
