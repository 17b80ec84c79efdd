"""Panoptic FPN (Kirillov, Girshick, He & Dollar, 2019): Mask R-CNN plus a semantic branch.

One ResNet-FPN feeds a whole :class:`MaskRCNN` over the thing classes and a semantic branch on
``p2..p5`` (:class:`SemanticFPNHead`) scoring the stuff classes plus one class "thing";
:func:`~pansight.models.panoptic.fusion.fuse_panoptic` merges the two into a
:class:`~pansight.structures.PanopticMap`. ``class_names`` are the panoptic label space and
``config.thing_flags`` says which are things. Parameter names: ``rcnn.*``, ``semantic_head.*``.

See docs/models.md for the semantic branch's stages and the label spaces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pansight.errors import ConfigError, DataError
from pansight.models.base import PansightModel, check_class_names
from pansight.models.panoptic.fusion import NO_STUFF, fuse_panoptic
from pansight.models.rcnn.config import RCNNConfig
from pansight.models.rcnn.model import MaskRCNN, RCNNOutputs
from pansight.structures import IGNORE_LABEL, ImageBatch, PanopticMap, Size, Target

SEMANTIC_STAGES = {"p2": 0, "p3": 1, "p4": 2, "p5": 3}
"""Upsampling stages of each level in the semantic branch (``p2`` gets one conv, no upsampling)."""
GROUP_NORM_GROUPS = 32
SEMANTIC_UPSAMPLING = 4
"""From the branch's 1/4 scale to the input scale."""


@dataclass(frozen=True)
class PanopticFPNConfig(RCNNConfig):
    """Settings of :class:`PanopticFPN`: those of Mask R-CNN (:class:`RCNNConfig`) and:

    Attributes:
        thing_flags: one flag per class of the model, ``True`` for things (countable objects)
            and ``False`` for stuff; ``pansight.train`` sets it from the data set.
        semantic_channels: channels of the semantic branch's convs (a multiple of 32, the
            GroupNorm groups).
        semantic_loss_weight: weight of the semantic cross entropy among the Mask R-CNN losses.
        instance_score_threshold: least score of an instance in the panoptic map.
        overlap_threshold: least fraction of an instance's mask that better instances must
            leave unclaimed for it to enter the panoptic map.
        stuff_min_area_fraction: least area of a stuff segment, as a fraction of the image's
            pixels (0.004 is the 4,096 pixels of an 800 x 1,280 COCO image).
    """

    thing_flags: tuple[bool, ...] = ()
    semantic_channels: int = 128
    semantic_loss_weight: float = 0.5
    instance_score_threshold: float = 0.5
    overlap_threshold: float = 0.5
    stuff_min_area_fraction: float = 0.004

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.with_masks:
            raise ConfigError("Panoptic FPN needs the mask branch; set with_masks=true")
        if self.semantic_channels < 1 or self.semantic_channels % GROUP_NORM_GROUPS:
            raise ConfigError(
                f"semantic_channels={self.semantic_channels} must be a positive multiple of "
                f"{GROUP_NORM_GROUPS}"
            )
        if self.semantic_loss_weight < 0:
            raise ConfigError(f"semantic_loss_weight={self.semantic_loss_weight} must be >= 0")
        for name in ("instance_score_threshold", "overlap_threshold", "stuff_min_area_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name}={getattr(self, name)} must lie in [0, 1]")


@dataclass
class PanopticFPNOutputs(RCNNOutputs):
    """:class:`RCNNOutputs` of the instance branch and the semantic branch's scores.

    Attributes:
        semantic_logits: ``(B, S + 1, H, W)`` scores at every pixel of the padded input:
            channels ``0..S-1`` the stuff classes in label order, channel ``S`` "thing".
            Always set by :meth:`PanopticFPN.forward`.
    """

    semantic_logits: Tensor | None = None


class SemanticFPNHead(nn.Module):
    """``p2..p5`` (``in_channels`` each) -> ``(B, num_classes, H, W)`` scores at the input size
    (``H, W`` = 4x the size of ``p2``)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.levels = nn.ModuleDict(
            {
                name: _semantic_level(in_channels, channels, stages)
                for name, stages in SEMANTIC_STAGES.items()
            }
        )
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, p_levels: dict[str, Tensor]) -> Tensor:
        fused = sum(level(p_levels[name]) for name, level in self.levels.items())
        logits = self.classifier(fused)
        return F.interpolate(
            logits, scale_factor=SEMANTIC_UPSAMPLING, mode="bilinear", align_corners=False
        )


def _semantic_level(in_channels: int, channels: int, stages: int) -> nn.Sequential:
    """``max(stages, 1)`` blocks of 3x3 conv, GroupNorm and ReLU, each (if ``stages``)
    followed by 2x bilinear upsampling."""
    layers: list[nn.Module] = []
    for stage in range(max(stages, 1)):
        layers += [
            nn.Conv2d(in_channels if stage == 0 else channels, channels, 3, padding=1, bias=False),
            nn.GroupNorm(GROUP_NORM_GROUPS, channels),
            nn.ReLU(inplace=True),
        ]
        if stages:
            layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
    return nn.Sequential(*layers)


class PanopticFPN(PansightModel):
    """Panoptic FPN: a :class:`MaskRCNN` over the thing classes plus a semantic branch on its
    pyramid (docs/models.md describes the label spaces).

    ``forward(batch, targets)`` needs ``targets`` (input frame) in training mode, as Mask R-CNN
    does; ``loss`` adds ``"semantic"`` to Mask R-CNN's losses; ``postprocess`` returns one
    :class:`PanopticMap` per image in original-image pixels, labels in ``class_names``.
    """

    task = "panoptic"

    def __init__(self, config: PanopticFPNConfig, class_names: list[str]) -> None:
        super().__init__(config, class_names)
        check_class_names(class_names)
        flags = list(config.thing_flags)
        if len(flags) != len(class_names) or not any(flags):
            raise ConfigError(
                f"thing_flags has {len(flags)} flags ({sum(flags)} things) for "
                f"{len(class_names)} classes; give one per class, at least one of them true"
            )
        thing_labels = [label for label, is_thing in enumerate(flags) if is_thing]
        stuff_labels = [label for label, is_thing in enumerate(flags) if not is_thing]
        self.rcnn = MaskRCNN(config, [class_names[label] for label in thing_labels])
        self.semantic_head = SemanticFPNHead(
            config.fpn_channels, config.semantic_channels, len(stuff_labels) + 1
        )
        self._register_label_maps(thing_labels, stuff_labels)

    def _register_label_maps(self, thing_labels: list[int], stuff_labels: list[int]) -> None:
        """The label maps between the model's and the branches' label spaces, as buffers.

        They are made on the CPU even when the model is built on the ``meta`` device (as the
        ONNX predictor builds its weightless copy), since ``postprocess`` reads them; moving
        the model moves them.
        """
        cpu = torch.device("cpu")
        semantic_class_of = torch.full(
            (len(thing_labels) + len(stuff_labels),),
            len(stuff_labels),
            dtype=torch.int64,
            device=cpu,
        )
        semantic_class_of[stuff_labels] = torch.arange(len(stuff_labels), device=cpu)
        self.register_buffer("thing_label_of", torch.tensor(thing_labels, device=cpu), False)
        stuff_label_of = torch.tensor([*stuff_labels, NO_STUFF], device=cpu)
        self.register_buffer("stuff_label_of", stuff_label_of, False)
        self.register_buffer("semantic_class_of", semantic_class_of, False)

    def preprocess(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> tuple[ImageBatch, list[Target] | None]:
        """Mask R-CNN's resize and pad (:meth:`MaskRCNN.preprocess`); targets follow."""
        return self.rcnn.preprocess(images, targets)

    def forward(self, batch: ImageBatch, targets: list[Target] | None = None) -> PanopticFPNOutputs:
        """``batch.tensor`` ``(B, 3, H, W)`` in ``[0, 1]`` -> :class:`PanopticFPNOutputs`.

        ``targets`` (input frame) are required in training mode and ignored otherwise.
        """
        p_levels = self.rcnn.pyramid_levels(self.rcnn.backbone_levels(batch))
        instance_outputs = self.rcnn.forward_heads(p_levels, batch, targets)
        return PanopticFPNOutputs(
            **vars(instance_outputs), semantic_logits=self.semantic_head(p_levels)
        )

    def loss(self, outputs: PanopticFPNOutputs, targets: list[Target]) -> dict[str, Tensor]:
        """Mask R-CNN's losses and ``"semantic"``: the pixel cross entropy of the semantic
        branch times ``semantic_loss_weight``. ``outputs`` must come from a training-mode
        forward with ``targets``."""
        losses = self.rcnn.loss(outputs, targets)
        logits = outputs.semantic_logits
        semantic = self.semantic_targets(targets, (int(logits.shape[-2]), int(logits.shape[-1])))
        losses["semantic"] = self.config.semantic_loss_weight * semantic_loss(logits, semantic)
        return losses

    def semantic_targets(self, targets: list[Target], padded_size: Size) -> Tensor:
        """``(B, H, W)`` int64 semantic-branch classes of the input-frame ``targets``: stuff
        ``0..S-1``, things ``S``, ``IGNORE_LABEL`` for ignored and padding pixels.

        Raises:
            DataError: a target without a semantic map, or with a label outside the classes.
        """
        classes = torch.full(
            (len(targets), *padded_size), IGNORE_LABEL, dtype=torch.int64, device=self.device
        )
        for index, target in enumerate(targets):
            if target.semantic is None:
                raise DataError(f"image {target.image_id}: Panoptic FPN needs a semantic target")
            labels = target.semantic.to(self.device)
            known = labels != IGNORE_LABEL
            if known.any() and (labels[known].min() < 0 or labels[known].max() >= self.num_classes):
                raise DataError(
                    f"image {target.image_id}: semantic labels must lie in "
                    f"0..{self.num_classes - 1} or be {IGNORE_LABEL}"
                )
            height, width = labels.shape
            region = classes[index, :height, :width]
            region[known] = self.semantic_class_of[labels[known]]
        return classes

    def postprocess(self, outputs: PanopticFPNOutputs, batch: ImageBatch) -> list[PanopticMap]:
        """One :class:`PanopticMap` per image in original-image pixels, fused from Mask R-CNN's
        detections and the semantic branch's stuff (see :func:`fuse_panoptic`)."""
        config = self.config
        maps = []
        for index, detections in enumerate(self.rcnn.postprocess(outputs, batch)):
            original_size = batch.original_sizes[index]
            stuff = self.stuff_map(
                outputs.semantic_logits[index], batch.image_sizes[index], original_size
            )
            maps.append(
                fuse_panoptic(
                    detections.masks,
                    detections.scores,
                    self.thing_label_of[detections.labels],
                    stuff,
                    instance_score_threshold=config.instance_score_threshold,
                    overlap_threshold=config.overlap_threshold,
                    stuff_min_area=round(
                        config.stuff_min_area_fraction * original_size[0] * original_size[1]
                    ),
                )
            )
        return maps

    def stuff_map(self, semantic_logits: Tensor, image_size: Size, original_size: Size) -> Tensor:
        """``(H, W)`` int64 stuff label of every original-image pixel (:data:`NO_STUFF` where
        "thing" wins) from one image's ``(S + 1, H_pad, W_pad)`` input-frame scores."""
        height, width = image_size
        logits = F.interpolate(
            semantic_logits[None, :, :height, :width].float(),
            size=original_size,
            mode="bilinear",
            align_corners=False,
        )[0]
        return self.stuff_label_of[logits.argmax(0)]


def semantic_loss(logits: Tensor, classes: Tensor) -> Tensor:
    """Mean cross entropy of ``(B, C, H, W)`` logits against ``(B, H, W)`` classes over the
    pixels that are not ``IGNORE_LABEL`` (0 when every pixel is ignored)."""
    total = F.cross_entropy(logits.float(), classes, ignore_index=IGNORE_LABEL, reduction="sum")
    return total / (classes != IGNORE_LABEL).sum().clamp(min=1)
