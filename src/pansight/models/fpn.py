"""Feature pyramid (FPN) over the ResNet body's ``c2..c5``, giving ``p2..p6``."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

INPUT_LEVELS = ("c2", "c3", "c4", "c5")
OUTPUT_LEVELS = ("p2", "p3", "p4", "p5", "p6")


class FPN(FeaturePyramidNetwork):
    """torchvision's FPN: lateral 1x1 convs, top-down nearest upsampling and sum, 3x3 smoothing
    convs give ``p2..p5``; ``p6`` is a stride-2 max-pool (1x1 kernel) of ``p5``.

    With ``norm`` every lateral and smoothing conv drops its bias and is followed by a batch
    norm, as in torchvision's v2 detectors.

    Parameter names are torchvision's (``inner_blocks.i.0`` conv, ``inner_blocks.i.1`` norm,
    ``layer_blocks.i.*`` likewise), so a torchvision detection backbone's ``fpn.*`` weights load
    unchanged.

    ``forward`` maps ``{"c2".."c5"}`` to ``{"p2": (B, C, H/4, W/4), .., "p6": (B, C, H/64, ..)}``.

    Args:
        in_channels: channels of ``c2..c5``.
        out_channels: channels of every pyramid level.
        norm: add batch norm after each conv.
    """

    def __init__(
        self, in_channels: dict[str, int], out_channels: int = 256, norm: bool = False
    ) -> None:
        super().__init__(
            [in_channels[level] for level in INPUT_LEVELS],
            out_channels,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=nn.BatchNorm2d if norm else None,
        )
        self.out_channels = out_channels

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:  # type: ignore[override]
        pyramid = super().forward(OrderedDict((level, features[level]) for level in INPUT_LEVELS))
        return dict(zip(OUTPUT_LEVELS, pyramid.values()))
