"""Fully convolutional networks (FCN) for semantic segmentation.

:class:`FCN` scores every class at every location on a ResNet body and upsamples the scores to
the input size; the argmax over the channels is the class map. The heads (``FCNConfig.head``):
``32s``, ``16s`` and ``8s`` (Long, Shelhamer & Darrell) score ``c5``, FCN-16s adding skip scores
of ``c4`` and FCN-8s also of ``c3``; ``dilated`` (torchvision's ``fcn_resnet50`` /
``fcn_resnet101``) keeps stride 8 through dilated convolutions and scores ``c5`` (and optionally
``c4``, the auxiliary head).

See docs/models.md for each head's layers, upsampling and initialization.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.fcn import FCNHead

from pansight.errors import ConfigError, DataError
from pansight.models.backbones import (
    FEATURE_STRIDES,
    RESNET_BUILDERS,
    ResNetBody,
    check_resnet_settings,
)
from pansight.models.base import PansightModel, check_class_names, resize_to_square
from pansight.structures import IGNORE_LABEL, ImageBatch, SemanticMap, Size, Target

SKIP_HEADS = {"32s": ("c5",), "16s": ("c5", "c4"), "8s": ("c5", "c4", "c3")}
"""The feature maps each skip head scores, coarsest first."""
HEADS = (*SKIP_HEADS, "dilated")
UPSAMPLINGS = ("bilinear", "learned")
DILATABLE_BACKBONES = ("resnet50", "resnet101")
"""torchvision can dilate only bottleneck ResNets."""


@dataclass(frozen=True)
class FCNConfig:
    """Settings of :class:`FCN`.

    Attributes:
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101`` (``dilated`` needs
            ``resnet50`` or ``resnet101``).
        head: ``32s``, ``16s`` or ``8s`` (skip heads on a stride-32 body) or ``dilated``
            (torchvision's layout, output stride 8).
        upsampling: for skip heads: ``bilinear`` (fixed interpolation) or ``learned``
            (transposed convolutions initialized bilinear).
        aux_head: for ``dilated``: add torchvision's auxiliary head on ``c4``.
        aux_weight: weight of the auxiliary head's loss.
        input_size: side of the square every image is resized to, in pixels (>= 32).
        torchvision_weights: a torchvision state-dict file the zoo imports when it builds the
            model: an ``fcn_resnet50`` / ``fcn_resnet101`` file (``dilated``) or a ResNet
            classifier's (the body of any head). ``""``: random initialization.
    """

    backbone: str = "resnet18"
    head: str = "8s"
    upsampling: str = "bilinear"
    aux_head: bool = False
    aux_weight: float = 0.5
    input_size: int = 128
    torchvision_weights: str = ""

    def __post_init__(self) -> None:
        check_resnet_settings(self.backbone, self.input_size)
        if self.head not in HEADS:
            raise ConfigError(f"head={self.head!r} is unknown; choose one of {', '.join(HEADS)}")
        if self.upsampling not in UPSAMPLINGS:
            raise ConfigError(
                f"upsampling={self.upsampling!r} is unknown; choose one of {', '.join(UPSAMPLINGS)}"
            )
        if self.head == "dilated" and self.backbone not in DILATABLE_BACKBONES:
            raise ConfigError(
                f"head='dilated' needs backbone resnet50 or resnet101, not {self.backbone!r}"
            )
        if self.aux_head and self.head != "dilated":
            raise ConfigError("aux_head=true needs head='dilated'")
        if self.aux_weight < 0:
            raise ConfigError(f"aux_weight={self.aux_weight} must be >= 0")


@dataclass
class FCNOutputs:
    """Raw FCN outputs, in the input frame.

    Attributes:
        logits: ``(B, K, H, W)`` class scores at every input pixel (one channel per class).
        aux_logits: ``(B, K, H, W)`` scores of the auxiliary head, or ``None`` without one.
    """

    logits: Tensor
    aux_logits: Tensor | None = None


class FCN(PansightModel):
    """A class for every pixel (docs/models.md describes the heads).

    ``forward``: normalize pixels -> ResNet body -> head scores ``(B, K, H, W)`` at the input
    size. ``loss``: pixel-wise cross entropy against ``Target.semantic`` (``IGNORE_LABEL``
    pixels do not count). ``postprocess``: scores resized to each original image, argmax.

    Parameter names: ``body.*`` (torchvision ResNet names), ``head.*``, ``aux_head.*``.
    """

    task = "semantic"

    def __init__(self, config: FCNConfig, class_names: list[str]) -> None:
        super().__init__(config, class_names)
        check_class_names(class_names)
        num_classes = len(class_names)
        if config.head == "dilated":
            self.body = dilated_resnet_body(config.backbone)
            self.head = DilatedScoreHead(self.body.out_channels["c5"], num_classes, "c5")
        else:
            self.body = ResNetBody(config.backbone)
            learned = config.upsampling == "learned"
            levels = SKIP_HEADS[config.head]
            self.head = SkipScoreHead(self.body.out_channels, num_classes, levels, learned)
        self.aux_head = None
        if config.aux_head:
            self.aux_head = DilatedScoreHead(self.body.out_channels["c4"], num_classes, "c4")

    def preprocess(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> tuple[ImageBatch, list[Target] | None]:
        """Resize every image to ``input_size x input_size`` (semantic maps follow, nearest)."""
        return resize_to_square(images, targets, self.config.input_size)

    def forward(self, batch: ImageBatch, targets: list[Target] | None = None) -> FCNOutputs:
        """``batch.tensor`` ``(B, 3, H, W)`` in ``[0, 1]`` -> scores ``(B, K, H, W)``.

        Ignores targets.
        """
        size = (batch.tensor.shape[-2], batch.tensor.shape[-1])
        features = self.body(self.normalize(batch.tensor))
        logits = self.head(features, size)
        aux_logits = None if self.aux_head is None else self.aux_head(features, size)
        return FCNOutputs(logits=logits, aux_logits=aux_logits)

    def loss(self, outputs: FCNOutputs, targets: list[Target]) -> dict[str, Tensor]:
        """``{"seg": cross entropy}`` (and ``"aux"``, weighted) over the labeled pixels.

        ``targets`` are in the input frame; pixels outside an image (padding) are ignored.
        """
        size = (outputs.logits.shape[-2], outputs.logits.shape[-1])
        labels = semantic_labels(targets, self.num_classes, size).to(outputs.logits.device)
        losses = {"seg": pixel_cross_entropy(outputs.logits, labels)}
        if outputs.aux_logits is not None:
            aux = pixel_cross_entropy(outputs.aux_logits, labels)
            losses["aux"] = self.config.aux_weight * aux
        return losses

    def postprocess(
        self, outputs: FCNOutputs, batch: ImageBatch, with_scores: bool = False
    ) -> list[SemanticMap]:
        """One :class:`SemanticMap` per image in original-image pixels.

        Each image's scores are cropped to its input-frame size, resized bilinearly to its
        original size, and argmax'd. ``with_scores`` also keeps the softmax probabilities
        ``(K, H, W)`` (memory grows with ``K x H x W``, so they are off by default).
        """
        results = []
        for logits, (height, width), original in zip(
            outputs.logits, batch.image_sizes, batch.original_sizes
        ):
            scores = logits[None, :, :height, :width].float()
            scores = F.interpolate(scores, size=original, mode="bilinear", align_corners=False)[0]
            labels = scores.argmax(dim=0)
            results.append(SemanticMap(labels, scores.softmax(dim=0) if with_scores else None))
        return results


class SkipScoreHead(nn.Module):
    """FCN-32s/16s/8s: 1x1 class scores on ``levels``, fused coarse to fine, then upsampled.

    ``forward(features, size)`` maps ``{"c3": (B, C3, H/8, W/8), "c4": .., "c5": (B, C5, H/32,
    W/32)}`` to ``(B, K, H, W)`` with ``size = (H, W)``.
    """

    def __init__(
        self,
        in_channels: dict[str, int],
        num_classes: int,
        levels: tuple[str, ...],
        learned_upsampling: bool,
    ) -> None:
        super().__init__()
        self.levels = levels
        self.score = nn.ModuleDict(
            {level: nn.Conv2d(in_channels[level], num_classes, 1) for level in levels}
        )
        for level in levels[1:]:
            nn.init.zeros_(self.score[level].weight)
            nn.init.zeros_(self.score[level].bias)
        self.upsample_x2 = nn.ModuleList(
            [Upsample(num_classes, 2, learned_upsampling) for _ in levels[1:]]
        )
        finest_stride = FEATURE_STRIDES[levels[-1]]
        self.upsample_out = Upsample(num_classes, finest_stride, learned_upsampling)

    def forward(self, features: dict[str, Tensor], size: Size) -> Tensor:
        scores = self.score[self.levels[0]](features[self.levels[0]])
        for level, upsample in zip(self.levels[1:], self.upsample_x2):
            skip = self.score[level](features[level])
            scores = upsample(scores, skip.shape[-2:]) + skip
        return self.upsample_out(scores, size)


class Upsample(nn.Module):
    """Enlarge ``(B, C, h, w)`` scores by ``factor`` to a given size.

    Bilinear interpolation, or a transposed convolution (kernel ``2 * factor``, stride
    ``factor``) initialized to bilinear interpolation of each channel on its own and learned
    from there; its ``factor * h`` rows are cropped to the size asked for (at most ``h`` is
    ``ceil(size / factor)``, as in a ResNet).
    """

    def __init__(self, channels: int, factor: int, learned: bool) -> None:
        super().__init__()
        self.factor = factor
        self.deconv = None
        if learned:
            self.deconv = nn.ConvTranspose2d(
                channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False
            )
            with torch.no_grad():
                self.deconv.weight.copy_(bilinear_kernel(channels, factor))

    def forward(self, scores: Tensor, size: Size | torch.Size) -> Tensor:
        height, width = int(size[0]), int(size[1])
        if self.deconv is None:
            return F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
        return self.deconv(scores)[..., :height, :width]


def bilinear_kernel(channels: int, factor: int) -> Tensor:
    """``(C, C, 2f, 2f)`` transposed-convolution weights upsampling each channel bilinearly by
    ``f`` (channel ``c`` reads only channel ``c``)."""
    size = 2 * factor
    center = (size - 1) / 2
    taps = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = taps[:, None] * taps[None, :]
    return weight


class DilatedScoreHead(nn.Module):
    """torchvision's ``FCNHead`` on one feature map, upsampled bilinearly to the input size.

    ``forward(features, size)``: ``features[level]`` ``(B, C, h, w)`` -> ``(B, K, H, W)``.
    """

    def __init__(self, in_channels: int, num_classes: int, level: str) -> None:
        super().__init__()
        self.level = level
        self.classify = FCNHead(in_channels, num_classes)

    def forward(self, features: dict[str, Tensor], size: Size) -> Tensor:
        scores = self.classify(features[self.level])
        return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)


def dilated_resnet_body(name: str) -> ResNetBody:
    """A :class:`ResNetBody` whose ``c4`` and ``c5`` keep stride 8: its last two stages are those
    of torchvision's ResNet built with ``replace_stride_with_dilation=[False, True, True]``."""
    body = ResNetBody(name)
    dilated = RESNET_BUILDERS[name](weights=None, replace_stride_with_dilation=[False, True, True])
    body.layer3, body.layer4 = dilated.layer3, dilated.layer4
    return body


def semantic_labels(targets: list[Target], num_classes: int, size: Size) -> Tensor:
    """``(B, H, W)`` int64 class maps of ``targets``, padded with ``IGNORE_LABEL`` to ``size``.

    Raises:
        DataError: naming the image, if a target has no semantic map or a value that is neither
            a label ``0..K-1`` nor ``IGNORE_LABEL``.
    """
    labels = torch.full((len(targets), *size), IGNORE_LABEL, dtype=torch.int64)
    for index, target in enumerate(targets):
        semantic = target.semantic
        if semantic is None:
            raise DataError(f"image {target.image_id}: the target has no semantic map")
        bad = ((semantic >= num_classes) & (semantic != IGNORE_LABEL)) | (semantic < 0)
        if bad.any():
            raise DataError(
                f"image {target.image_id}: semantic value {int(semantic[bad][0])} is not a "
                f"label 0..{num_classes - 1} nor {IGNORE_LABEL} (ignore)"
            )
        height, width = semantic.shape
        labels[index, :height, :width] = semantic[: size[0], : size[1]]
    return labels


def pixel_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross entropy of ``(B, K, H, W)`` scores over the pixels of ``(B, H, W)`` labels
    that are not ``IGNORE_LABEL`` (zero, still connected to the graph, when all are ignored)."""
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL, reduction="sum")
    counted = (labels != IGNORE_LABEL).sum().clamp(min=1)
    return total / counted
