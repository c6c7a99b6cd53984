"""Backbone factory and heads. Feature sizes are read from the model, never hard-wired."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from fkt.errors import UserError

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet-tiny")


class TinyResNet(ResNet):
    """ResNet-18's shape (the stem, layer1-4, pooled features) at an eighth of its widths and one block a
    stage: about 300k parameters instead of 11M. For tests and planning probes, where the network's
    size is not the point but its structure is (Grad-CAM hooks layer4, the small stem swaps conv1)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), num_classes: int = 1000) -> None:
        nn.Module.__init__(self)  # torchvision's __init__ fixes the widths at 64-512; its layers and forward are reused
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, width in enumerate(widths):
            setattr(self, f"layer{i + 1}", self._make_layer(BasicBlock, width, 1, stride=1 if i == 0 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)


def build_backbone(name: str, stem: str = "imagenet", weights: Path | None = None) -> tuple[nn.Module, int]:
    """A torchvision ResNet without its fc layer, and its feature size.

    `stem="small"` swaps the 7x7/2 conv and max-pool for a 3x3/1 conv (for 32 px images).
    """
    if name not in BACKBONES:
        raise UserError(f"model.backbone={name}: choose from {', '.join(BACKBONES)}")
    net = TinyResNet() if name == "resnet-tiny" else getattr(torchvision.models, name)(weights=None)
    if stem == "small":
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    if weights is not None:
        load_backbone_weights(net, weights)
    return net, feat_dim


def load_backbone_weights(net: nn.Module, path: Path) -> None:
    """A local state dict: a plain torchvision one, or an fkt/Lightning checkpoint (`backbone.` keys)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise UserError(f"{path}: cannot load weights ({type(err).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a state dict")
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = net.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    if bad or missing:
        what = f"shape mismatch at {bad[0]}" if bad else f"missing {missing[0]}"
        raise UserError(f"{path}: weights do not fit this backbone ({what})")
    net.load_state_dict(state, strict=False)


def compile_backbone(net: nn.Module, mode: str = "default") -> None:
    """torch.compile in place, so the state-dict keys stay those of the plain backbone. On a GPU,
    mode reduce-overhead replays the backbone's kernels as CUDA graphs: a 32 px step is bound by
    launching them, not by the arithmetic (see the README's H100 bench)."""
    net.compile(mode=mode)


def classifier_head(feat_dim: int, num_classes: int) -> nn.Module:
    return nn.Linear(feat_dim, num_classes)
