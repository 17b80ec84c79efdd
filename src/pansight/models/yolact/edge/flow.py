"""The flow module of YolactEdge: motion between a frame's and its keyframe's features,
feature warping, and the spatial refinement (SPA) of warped features.

:class:`FlowNet` reads two reduced ``c3`` laterals and predicts, at three pyramid levels, a
flow and a per-channel scale and bias (:class:`FlowEstimate`); :func:`transfer` warps keyframe
features with one of them. See :mod:`pansight.models.yolact.edge.model` for how the model uses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FLOW_SCALE = 8.0
"""A flow value ``f`` moves the sampling point by ``f / FLOW_SCALE`` in ``grid_sample``'s
normalized coordinates (``-1..1`` across the map, ``align_corners=True``), i.e. by
``f (w - 1) / 16`` pixels of a map ``w`` pixels wide (the original's ``deform_op``)."""

LEAKY_SLOPE = 0.1
"""Negative slope of the LeakyReLU after every conv of the flow module and of SPA."""


@dataclass
class FlowEstimate:
    """The flow module's prediction at one pyramid level of size ``(h, w)``.

    Attributes:
        flow: ``(B, 2, h, w)`` displacement ``(x, y)`` from this frame to the keyframe, in the
            units of :data:`FLOW_SCALE`.
        scale: ``(B, C, h, w)`` factor applied to the warped features.
        bias: ``(B, C, h, w)`` added to the warped features after scaling.
    """

    flow: Tensor
    scale: Tensor
    bias: Tensor


def conv_leaky(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (padding 1, bias) followed by a LeakyReLU (slope :data:`LEAKY_SLOPE`)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    )


def warp(features: Tensor, flow: Tensor) -> Tensor:
    """Backward-warp ``features`` ``(B, C, h, w)`` by ``flow`` ``(B, 2, h, w)``.

    Output pixel ``(y, x)`` is ``features`` sampled bilinearly (zeros outside, as
    ``grid_sample(align_corners=True)``) at normalized position
    ``(-1 + 2 x / (w - 1) + flow_x / 8, -1 + 2 y / (h - 1) + flow_y / 8)``: a flow of
    ``16 d / (w - 1)`` in x reads the features ``d`` pixels to the right (:data:`FLOW_SCALE`).
    """
    batch, _, height, width = flow.shape
    rows = torch.linspace(-1, 1, height, device=flow.device, dtype=flow.dtype)
    cols = torch.linspace(-1, 1, width, device=flow.device, dtype=flow.dtype)
    grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
    grid = torch.stack([grid_x, grid_y], dim=-1).expand(batch, height, width, 2)
    grid = grid + flow.permute(0, 2, 3, 1) / FLOW_SCALE
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def transfer(features: Tensor, estimate: FlowEstimate) -> Tensor:
    """Keyframe ``features`` ``(B, C, h, w)`` carried to the current frame:
    ``warp(features, flow) * scale + bias``."""
    return warp(features, estimate.flow) * estimate.scale + estimate.bias


class FlowPrediction(nn.Module):
    """Flow (3x3 conv, no bias, 2 channels), scale and bias (1x1 convs to ``C`` channels) from
    ``(B, in_channels, h, w)`` decoder features."""

    def __init__(self, in_channels: int, feature_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2, 3, padding=1, bias=False)
        self.scale = nn.Conv2d(in_channels, feature_channels, 1)
        self.bias = nn.Conv2d(in_channels, feature_channels, 1)

    def forward(self, decoded: Tensor) -> FlowEstimate:
        return FlowEstimate(self.conv(decoded), self.scale(decoded), self.bias(decoded))


class FlowNet(nn.Module):
    """The original's FlowNetMini: a 3-level encoder/decoder on two reduced ``c3`` laterals.

    Encoder (two :func:`conv_leaky` per level): ``conv1`` ``2R -> E -> E`` at stride 1 of
    ``c3``, ``conv2`` ``E -> 2E -> 2E`` at stride 2 (first conv strided), ``conv3``
    ``2E -> 4E -> 4E`` at stride 4, so levels 1, 2, 3 have the sizes of ``p3``, ``p4``, ``p5``
    (3x3 stride-2 convs round up like the ResNet). Decoder, coarse to fine: ``pred3`` on
    ``conv3``; ``upfeat3``/``upflow3`` (bilinear resize to the finer size, ``align_corners=False``,
    then a 3x3 conv without bias or activation) bring ``conv3`` (to ``2E``) and ``flow3`` (to 2)
    to level 2, concatenated after ``conv2``: ``4E + 2`` channels for ``pred2``; likewise
    ``upfeat2`` (of that concatenation, to ``E``) and ``upflow2`` give ``2E + 2`` channels for
    ``pred1``.
    """

    def __init__(self, reduced_channels: int, width: int, feature_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            conv_leaky(2 * reduced_channels, width), conv_leaky(width, width)
        )
        self.conv2 = nn.Sequential(
            conv_leaky(width, 2 * width, 2), conv_leaky(2 * width, 2 * width)
        )
        self.conv3 = nn.Sequential(
            conv_leaky(2 * width, 4 * width, 2), conv_leaky(4 * width, 4 * width)
        )
        self.pred3 = FlowPrediction(4 * width, feature_channels)
        self.pred2 = FlowPrediction(4 * width + 2, feature_channels)
        self.pred1 = FlowPrediction(2 * width + 2, feature_channels)
        self.upfeat3 = nn.Conv2d(4 * width, 2 * width, 3, padding=1, bias=False)
        self.upflow3 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.upfeat2 = nn.Conv2d(4 * width + 2, width, 3, padding=1, bias=False)
        self.upflow2 = nn.Conv2d(2, 2, 3, padding=1, bias=False)

    def forward(
        self, current: Tensor, keyframe: Tensor, finest: bool = False
    ) -> dict[str, FlowEstimate]:
        """Reduced laterals ``(B, R, h, w)`` of the current frame and of the keyframe ->
        estimates at ``"p5"`` and ``"p4"`` size, and at ``"p3"`` size with ``finest`` (warping
        ``p4``/``p5`` does not need it; training the flow on ground-truth flow may)."""
        encoded1 = self.conv1(torch.cat([current, keyframe], dim=1))
        encoded2 = self.conv2(encoded1)
        encoded3 = self.conv3(encoded2)
        estimates = {"p5": self.pred3(encoded3)}
        decoded2 = _decoder_input(
            encoded2, encoded3, estimates["p5"].flow, self.upfeat3, self.upflow3
        )
        estimates["p4"] = self.pred2(decoded2)
        if finest:
            flow2 = estimates["p4"].flow
            decoded1 = _decoder_input(encoded1, decoded2, flow2, self.upfeat2, self.upflow2)
            estimates["p3"] = self.pred1(decoded1)
        return estimates


def _decoder_input(
    encoded: Tensor, coarser: Tensor, coarser_flow: Tensor, upfeat: nn.Module, upflow: nn.Module
) -> Tensor:
    """``encoded`` with the coarser level's features and flow resized to its size and convolved."""
    size = encoded.shape[-2:]
    features = F.interpolate(coarser, size=size, mode="bilinear", align_corners=False)
    flow = F.interpolate(coarser_flow, size=size, mode="bilinear", align_corners=False)
    return torch.cat([encoded, upfeat(features), upflow(flow)], dim=1)


class SPA(nn.Module):
    """The original's SPA: refines transferred ``p4`` and ``p5`` with the current frame's ``c3``
    lateral, ``level + conv_leaky(cat(level, lateral resized to the level))``.

    The lateral is resized (bilinear, ``align_corners=False``) in a chain, to ``p4``'s size and
    that to ``p5``'s, as the original does.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.refine_convs = nn.ModuleList(conv_leaky(2 * channels, channels) for _ in range(2))

    def forward(self, c3_lateral: Tensor, p4: Tensor, p5: Tensor) -> tuple[Tensor, Tensor]:
        refined = []
        guide = c3_lateral
        for refine, level in zip(self.refine_convs, (p4, p5)):
            guide = F.interpolate(
                guide, size=level.shape[-2:], mode="bilinear", align_corners=False
            )
            refined.append(level + refine(torch.cat([level, guide], dim=1)))
        return refined[0], refined[1]


def init_flow_weights(*modules: nn.Module) -> None:
    """Kaiming-normal convs (fan in, LeakyReLU slope 0.1) with zero biases, as the original
    initializes its flow encoder and SPA; every flow prediction starts with scale bias 1."""
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, LEAKY_SLOPE, mode="fan_in")
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        for layer in module.modules():
            if isinstance(layer, FlowPrediction):
                nn.init.ones_(layer.scale.bias)
