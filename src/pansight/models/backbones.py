"""ResNet bodies from torchvision that return the feature maps ``c2..c5``.

The body keeps torchvision's parameter names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``), so a
torchvision ResNet state dict maps in by dropping its ``fc.*`` keys.
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision.models as tvm
from torch import Tensor, nn

from pansight.errors import ConfigError

RESNET_BUILDERS: dict[str, Callable[..., tvm.ResNet]] = {
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "resnet50": tvm.resnet50,
    "resnet101": tvm.resnet101,
}

FEATURE_STRIDES = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
"""Downsampling factor of each feature map relative to the network input."""


class ResNetBody(nn.Module):
    """A torchvision ResNet without its average pool and ``fc``, returning four feature maps.

    ``forward`` maps ``(B, 3, H, W)`` normalized images to
    ``{"c2": (B, C2, H/4, W/4), "c3": (.., H/8, ..), "c4": (.., H/16, ..), "c5": (.., H/32, ..)}``
    (sizes rounded up).

    Attributes:
        name: the torchvision architecture (``resnet18``, ``resnet34``, ``resnet50``,
            ``resnet101``).
        out_channels: channels of each feature map, e.g. ``{"c2": 64, ..., "c5": 512}`` for
            ``resnet18`` and ``{"c2": 256, ..., "c5": 2048}`` for ``resnet50``.
    """

    def __init__(self, name: str = "resnet18") -> None:
        super().__init__()
        if name not in RESNET_BUILDERS:
            raise ConfigError(
                f"backbone={name!r} is unknown; choose one of {', '.join(RESNET_BUILDERS)}"
            )
        resnet = RESNET_BUILDERS[name](weights=None)
        self.name = name
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        self.out_channels = {
            key: _stage_channels(stage) for key, stage in zip(FEATURE_STRIDES, stages)
        }

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        stem = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        c2 = self.layer1(stem)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return {"c2": c2, "c3": c3, "c4": c4, "c5": c5}


def _stage_channels(stage: nn.Sequential) -> int:
    """Output channels of a ResNet stage: those of its last block's last batch norm."""
    last_block = stage[-1]
    last_norm = last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2
    return last_norm.num_features


MIN_INPUT_SIZE = 32
"""The ResNet's total stride: smaller inputs leave nothing of ``c5``."""


def check_resnet_settings(backbone: str, input_size: int) -> None:
    """Raise ConfigError for an unknown backbone or an input smaller than the ResNet stride."""
    if backbone not in RESNET_BUILDERS:
        raise ConfigError(
            f"backbone={backbone!r} is unknown; choose one of {', '.join(RESNET_BUILDERS)}"
        )
    if input_size < MIN_INPUT_SIZE:
        raise ConfigError(f"input_size={input_size} is too small; use at least {MIN_INPUT_SIZE}")
