"""The served network in torch: the backbone with normalisation inside the graph (what
is exported to ONNX), and the safe weight loader."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from models.backbones import Backbone, PreprocessConfig


def serving_net(backbone: Backbone, patches: bool = False) -> ServingNet:
    """The backbone's network as served; with `patches`, it also returns the patch
    features."""
    if backbone.net is None:
        raise RuntimeError(f"{backbone.name} was described from its export; "
                           "build it with models.zoo.create_backbone to run it in torch")
    layers = backbone.patch_layers if patches else ()
    return ServingNet(backbone.net, backbone.preprocess, layers).eval()


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


def load_state_dict_safely(path: Path) -> dict[str, torch.Tensor]:
    """Load tensors only: safetensors, or torch.load(weights_only=True). No unsafe fallback."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path.name} is not a plain state dict of tensors")
    return obj
