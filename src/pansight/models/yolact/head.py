"""The parts of YOLACT (Bolya et al., 2019): its FPN, the protonet, the shared prediction head,
the anchors ("priors"), the box coding and the mask assembly.

YOLACT works in *relative* coordinates of its square input: priors and decoded boxes are
fractions of the input side (``0..1``), priors in center-size form ``(cx, cy, w, h)``, boxes in
``xyxy`` form. Module and parameter names follow the original implementation, so
:mod:`pansight.models.yolact.original_import` maps its checkpoints by a few prefixes.

See docs/models.md for why a relative box holds for the original image, and the names kept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BOX_VARIANCES = (0.1, 0.2)
"""Scales of the center and of the log-size deltas (``dx = (cx - prior_cx) / (0.1 prior_w)``,
``dw = log(w / prior_w) / 0.2``)."""

CROP_PADDING = 1
"""Pixels of prototype resolution a mask crop extends beyond its box on every side."""

FPN_INPUTS = ("c5", "c4", "c3")
"""The backbone levels the FPN reads, coarsest first (the order of its layer lists)."""


class YolactFPN(nn.Module):
    """FPN over ``c3..c5`` giving ``p3..p7``, in two phases.

    :meth:`top_down` (phase 1): lateral 1x1 convs and top-down bilinear upsampling
    (``align_corners=False``) of each coarser sum to the finer level's size, added to its lateral
    (:func:`merge_top_down`). :meth:`smooth` (phase 2): a 3x3 conv (padding 1) followed by a ReLU
    on each level; ``p6`` and ``p7`` are stride-2 3x3 convs (padding 1, no ReLU) of ``p5`` and
    ``p6``. YolactEdge keeps the phase-1 sums of a keyframe and rebuilds phase 1 of the frames
    that follow from them.

    The lists run from the coarsest level: ``lat_layers[0]`` and ``pred_layers[0]`` belong to
    ``c5``/``p5``, index 2 to ``c3``/``p3`` (the original's order, which its checkpoints keep).

    ``forward`` maps ``{"c3", "c4", "c5"}`` to ``{"p3": (B, C, H/8, W/8), .., "p7": ..}``.
    """

    def __init__(self, in_channels: dict[str, int], channels: int) -> None:
        super().__init__()
        self.lat_layers = nn.ModuleList(
            nn.Conv2d(in_channels[level], channels, kernel_size=1) for level in FPN_INPUTS
        )
        self.pred_layers = nn.ModuleList(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1) for _ in FPN_INPUTS
        )
        self.downsample_layers = nn.ModuleList(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, stride=2) for _ in range(2)
        )

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        top_down, _ = self.top_down(features)
        return self.smooth(top_down)

    def lateral(self, level: str, feature: Tensor) -> Tensor:
        """The lateral 1x1 conv of ``level`` (``c3``, ``c4`` or ``c5``): ``(B, C, h, w)``."""
        return self.lat_layers[FPN_INPUTS.index(level)](feature)

    def top_down(self, features: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """Phase 1: ``{"p3", "p4", "p5"}`` top-down sums before the 3x3 convs, and the lateral
        of ``c3`` alone ``(B, C, H/8, W/8)``."""
        laterals = {level: self.lateral(level, features[level]) for level in FPN_INPUTS}
        sums: dict[str, Tensor] = {}
        coarser: Tensor | None = None
        for level in FPN_INPUTS:
            lateral = laterals[level]
            coarser = lateral if coarser is None else merge_top_down(coarser, lateral)
            sums["p" + level[1]] = coarser
        return sums, laterals["c3"]

    def smooth(self, top_down: dict[str, Tensor]) -> dict[str, Tensor]:
        """Phase 2: phase-1 sums ``{"p3", "p4", "p5"}`` -> ``{"p3", .., "p7"}``."""
        levels = {
            "p" + level[1]: F.relu(self.pred_layers[index](top_down["p" + level[1]]))
            for index, level in enumerate(FPN_INPUTS)
        }
        levels["p6"] = self.downsample(0, levels["p5"])
        levels["p7"] = self.downsample(1, levels["p6"])
        return {name: levels[name] for name in ("p3", "p4", "p5", "p6", "p7")}

    def downsample(self, index: int, feature: Tensor) -> Tensor:
        """``downsample_layers[index]`` on ``feature`` ``(B, C, h, w)`` -> ``(B, C, ⌈h/2⌉,
        ⌈w/2⌉)``, in float32 even under autocast: on maps of a pixel or two (small inputs),
        oneDNN's bfloat16 weight gradient of this strided channels-last 3x3 conv now and then
        comes out NaN (torch 2.14.1: 1 step in 200 at 1x1), and at these sizes float32 costs
        nothing."""
        with torch.autocast(feature.device.type, enabled=False):
            return self.downsample_layers[index](feature.float())


def merge_top_down(coarser: Tensor, lateral: Tensor) -> Tensor:
    """``lateral`` ``(B, C, h, w)`` plus ``coarser`` ``(B, C, h', w')`` upsampled bilinearly
    (``align_corners=False``) to ``(h, w)``: one top-down step of the FPN."""
    upsampled = F.interpolate(
        coarser, size=lateral.shape[-2:], mode="bilinear", align_corners=False
    )
    return lateral + upsampled


def build_protonet(channels: int, hidden: int, num_prototypes: int) -> nn.Sequential:
    """The protonet on ``p3``: three 3x3 convs (``hidden``, ReLU), bilinear upsampling x2 (ReLU),
    a 3x3 conv (ReLU) and a 1x1 conv to ``num_prototypes``; the caller applies the final ReLU.

    The layers sit at the original's indices (convs at 0, 2, 4, 8, 10). Maps
    ``(B, C, H3, W3)`` to ``(B, k, 2 H3, 2 W3)`` (``138 x 138`` for a 550-pixel input).
    """
    layers: list[nn.Module] = []
    in_channels = channels
    for _ in range(3):
        layers += [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True)]
        in_channels = hidden
    layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.ReLU()]
    layers += [nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True)]
    layers += [nn.Conv2d(hidden, num_prototypes, 1)]
    return nn.Sequential(*layers)


class PredictionHead(nn.Module):
    """One head shared by every pyramid level: a 3x3 conv + ReLU (``upfeature``), then three
    3x3 convs giving, per anchor, class logits, box deltas and mask coefficients (tanh).

    ``forward`` maps a level ``(B, C, h, w)`` to deltas ``(B, h*w*A, 4)``, logits
    ``(B, h*w*A, K + 1)`` and coefficients ``(B, h*w*A, k)``; anchors are ordered by row, then
    column, then anchor of the location (the order of :func:`yolact_priors`).
    """

    def __init__(
        self, channels: int, anchors_per_location: int, num_logits: int, num_prototypes: int
    ) -> None:
        super().__init__()
        self.num_logits = num_logits
        self.num_prototypes = num_prototypes
        self.upfeature = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)
        )
        anchors = anchors_per_location
        self.bbox_layer = nn.Conv2d(channels, anchors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(channels, anchors * num_logits, 3, padding=1)
        self.mask_layer = nn.Conv2d(channels, anchors * num_prototypes, 3, padding=1)

    def forward(self, level: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        features = self.upfeature(level)
        deltas = _per_anchor(self.bbox_layer(features), 4)
        logits = _per_anchor(self.conf_layer(features), self.num_logits)
        coefficients = torch.tanh(_per_anchor(self.mask_layer(features), self.num_prototypes))
        return deltas, logits, coefficients


def _per_anchor(maps: Tensor, values: int) -> Tensor:
    """``(B, A * values, h, w)`` -> ``(B, h * w * A, values)``."""
    return maps.permute(0, 2, 3, 1).reshape(maps.shape[0], -1, values)


def yolact_priors(
    feature_sizes: list[tuple[int, int]],
    scales: tuple[float, ...],
    aspect_ratios: tuple[float, ...],
    input_size: int,
    square: bool,
    device: torch.device | None = None,
) -> Tensor:
    """``(A_total, 4)`` priors in relative center-size form ``(cx, cy, w, h)``.

    At level ``i`` of size ``(h_i, w_i)``, location ``(row, col)`` has center
    ``((col + 0.5) / w_i, (row + 0.5) / h_i)`` and one prior per aspect ratio ``r`` with
    ``w = scales[i] * sqrt(r) / input_size`` and ``h = scales[i] / sqrt(r) / input_size``; with
    ``square`` (the original's ``use_square_anchors``, kept for its trained models) ``h = w``.
    Order: level, row, column, ratio.
    """
    roots = torch.tensor([math.sqrt(ratio) for ratio in aspect_ratios], device=device)
    priors = []
    for (height, width), scale in zip(feature_sizes, scales):
        center_y = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        center_x = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid_y, grid_x = torch.meshgrid(center_y, center_x, indexing="ij")
        widths = scale * roots / input_size
        heights = widths if square else scale / roots / input_size
        shape = (height, width, len(aspect_ratios))
        level = torch.stack(
            [
                grid_x[..., None].expand(shape),
                grid_y[..., None].expand(shape),
                widths.expand(shape),
                heights.expand(shape),
            ],
            dim=-1,
        )
        priors.append(level.reshape(-1, 4))
    return torch.cat(priors)


def decode_boxes(deltas: Tensor, priors: Tensor) -> Tensor:
    """Relative xyxy boxes ``(..., N, 4)`` from deltas ``(..., N, 4)`` on priors ``(N, 4)``
    (center-size form, :data:`BOX_VARIANCES`; sizes are not clamped)."""
    center = priors[:, :2] + deltas[..., :2] * BOX_VARIANCES[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(deltas[..., 2:] * BOX_VARIANCES[1])
    return torch.cat([center - size / 2, center + size / 2], dim=-1)


def encode_boxes(boxes: Tensor, priors: Tensor) -> Tensor:
    """Deltas ``(N, 4)`` taking priors ``(N, 4)`` (center-size) onto relative xyxy ``boxes``."""
    center = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    center_deltas = (center - priors[:, :2]) / (BOX_VARIANCES[0] * priors[:, 2:])
    size_deltas = torch.log(size / priors[:, 2:]) / BOX_VARIANCES[1]
    return torch.cat([center_deltas, size_deltas], dim=1)


def prior_boxes(priors: Tensor) -> Tensor:
    """Center-size priors ``(N, 4)`` as relative xyxy boxes."""
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)


def assemble_masks(prototypes: Tensor, coefficients: Tensor, boxes: Tensor) -> Tensor:
    """Masks of all detections at once: ``sigmoid(prototypes @ coefficients^T)`` cropped to the
    boxes.

    Args:
        prototypes: ``(Hp, Wp, k)`` prototypes of one image.
        coefficients: ``(D, k)`` mask coefficients of its detections.
        boxes: ``(D, 4)`` relative xyxy boxes the masks are cropped to.

    Returns:
        ``(D, Hp, Wp)`` mask probabilities, zero outside each box (see :func:`crop_to_boxes`).
    """
    masks = torch.sigmoid(prototypes @ coefficients.t())
    return crop_to_boxes(masks.permute(2, 0, 1), boxes)


def crop_to_boxes(masks: Tensor, boxes: Tensor, padding: int = CROP_PADDING) -> Tensor:
    """Zero ``(D, H, W)`` masks outside their relative xyxy ``boxes`` ``(D, 4)``.

    A box keeps pixel ``(y, x)`` (integer pixel indices) when ``x0 <= x < x1`` and
    ``y0 <= y < y1``, with ``x0 = max(W * min(left, right) - padding, 0)``,
    ``x1 = min(W * max(left, right) + padding, W)`` and likewise for rows.
    """
    height, width = masks.shape[-2:]
    x0, x1 = _pixel_span(boxes[:, 0], boxes[:, 2], width, padding)
    y0, y1 = _pixel_span(boxes[:, 1], boxes[:, 3], height, padding)
    cols = torch.arange(width, device=masks.device, dtype=boxes.dtype)
    rows = torch.arange(height, device=masks.device, dtype=boxes.dtype)
    inside_cols = (cols[None] >= x0[:, None]) & (cols[None] < x1[:, None])
    inside_rows = (rows[None] >= y0[:, None]) & (rows[None] < y1[:, None])
    return masks * (inside_rows[:, :, None] & inside_cols[:, None, :])


def _pixel_span(start: Tensor, end: Tensor, length: int, padding: int) -> tuple[Tensor, Tensor]:
    """Relative coordinates -> ordered pixel bounds, grown by ``padding`` and clipped."""
    start, end = start * length, end * length
    low, high = torch.minimum(start, end), torch.maximum(start, end)
    return (low - padding).clamp(min=0), (high + padding).clamp(max=length)


def init_head_weights(modules: list[nn.Module]) -> None:
    """Xavier-uniform weights and zero biases for every conv of ``modules`` (as the original
    initializes everything outside the backbone)."""
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
