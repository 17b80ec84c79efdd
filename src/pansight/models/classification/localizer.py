"""Single-object localizer: a ResNet classifier plus one box per image.

The class head is the classifier's (global average pool of ``c5``, linear ``fc``). The box head
keeps spatial information: a small conv tower on ``c4`` gives every grid cell a box (center inside
that cell, width and height relative to the frame, all via sigmoid) and an objectness logit; the
image's box is the softmax(objectness)-weighted mean of the cell boxes, i.e. normalized
``(cx, cy, w, h)`` in ``[0, 1]`` of the input frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, clip_boxes_to_image, generalized_box_iou_loss

from pansight.errors import ConfigError, DataError
from pansight.models.backbones import ResNetBody, check_resnet_settings
from pansight.models.base import PansightModel, check_class_names, resize_to_square
from pansight.models.classification.classifier import target_labels
from pansight.structures import ImageBatch, Localization, Target

SMOOTH_L1_BETA = 0.05
"""Smooth-L1 switches from quadratic to linear at this normalized coordinate error."""


@dataclass(frozen=True)
class LocalizerConfig:
    """Settings of :class:`Localizer`.

    Attributes:
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        input_size: side of the square every image is resized to, in pixels (>= 32).
        box_head_channels: width of the box head's conv tower.
        box_l1_weight: weight of the smooth-L1 loss on normalized ``(cx, cy, w, h)``.
        box_giou_weight: weight of the GIoU loss.
        torchvision_weights: path of a torchvision ResNet state-dict file whose weights the zoo
            imports when it builds the model (``""``: random initialization).
    """

    backbone: str = "resnet18"
    input_size: int = 64
    box_head_channels: int = 128
    box_l1_weight: float = 5.0
    box_giou_weight: float = 2.0
    torchvision_weights: str = ""

    def __post_init__(self) -> None:
        check_resnet_settings(self.backbone, self.input_size)
        if self.box_head_channels < 1:
            raise ConfigError(f"box_head_channels={self.box_head_channels} must be >= 1")
        if self.box_l1_weight < 0 or self.box_giou_weight < 0:
            raise ConfigError("box_l1_weight and box_giou_weight must be >= 0")


@dataclass
class LocalizerOutputs:
    """Raw localizer outputs.

    Attributes:
        logits: ``(B, K)`` unnormalized class scores.
        boxes: ``(B, 4)`` xyxy boxes in input-frame pixels.
    """

    logits: Tensor
    boxes: Tensor


class GridBoxHead(nn.Module):
    """One box per image from a feature grid, as an objectness-weighted mean of per-cell boxes.

    ``forward`` maps features ``(B, C, h, w)`` to normalized ``(cx, cy, w, h)`` ``(B, 4)`` in
    ``[0, 1]`` of the frame the grid covers.
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.tower = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.objectness = nn.Conv2d(channels, 1, 1)
        self.cell_boxes = nn.Conv2d(channels, 4, 1)

    def forward(self, features: Tensor) -> Tensor:
        hidden = self.tower(features)
        weights = self.objectness(hidden).flatten(1).softmax(dim=1)  # (B, h*w)
        boxes = self._decode_cells(self.cell_boxes(hidden))  # (B, 4, h*w)
        return (boxes * weights[:, None, :]).sum(dim=2)

    @staticmethod
    def _decode_cells(raw: Tensor) -> Tensor:
        """Raw ``(B, 4, h, w)`` -> normalized ``(B, 4, h*w)`` boxes, centers inside their cell."""
        height, width = raw.shape[-2:]
        rows = torch.arange(height, device=raw.device, dtype=raw.dtype).view(height, 1)
        cols = torch.arange(width, device=raw.device, dtype=raw.dtype).view(1, width)
        offsets = raw.sigmoid()
        center_x = (cols + offsets[:, 0]) / width
        center_y = (rows + offsets[:, 1]) / height
        boxes = torch.stack([center_x, center_y, offsets[:, 2], offsets[:, 3]], dim=1)
        return boxes.flatten(2)


class Localizer(PansightModel):
    """One class and one box per image.

    ``forward``: normalize pixels -> body -> class logits from pooled ``c5`` (``fc``) and a box
    from ``c4`` (:class:`GridBoxHead`), decoded to xyxy input-frame pixels.
    """

    task = "localize"

    def __init__(self, config: LocalizerConfig, class_names: list[str]) -> None:
        super().__init__(config, class_names)
        check_class_names(class_names)
        self.body = ResNetBody(config.backbone)
        self.fc = nn.Linear(self.body.out_channels["c5"], self.num_classes)
        self.box_head = GridBoxHead(self.body.out_channels["c4"], config.box_head_channels)

    def preprocess(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> tuple[ImageBatch, list[Target] | None]:
        """Resize every image to ``input_size x input_size`` (targets follow)."""
        return resize_to_square(images, targets, self.config.input_size)

    def forward(self, batch: ImageBatch, targets: list[Target] | None = None) -> LocalizerOutputs:
        """``batch.tensor`` ``(B, 3, S, S)`` in ``[0, 1]`` -> logits and boxes. Ignores targets."""
        features = self.body(self.normalize(batch.tensor))
        logits = self.fc(features["c5"].mean(dim=(2, 3)))
        normalized_boxes = self.box_head(features["c4"])
        boxes = box_convert(normalized_boxes * self.config.input_size, "cxcywh", "xyxy")
        return LocalizerOutputs(logits=logits, boxes=boxes)

    def loss(self, outputs: LocalizerOutputs, targets: list[Target]) -> dict[str, Tensor]:
        """``{"cls", "box_l1", "box_giou"}``; box losses on coordinates normalized by the frame."""
        device = outputs.logits.device
        labels = target_labels(targets, self.num_classes).to(device)
        target_boxes = _target_boxes(targets).to(device) / self.config.input_size
        pred_boxes = outputs.boxes.float() / self.config.input_size
        l1 = F.smooth_l1_loss(
            box_convert(pred_boxes, "xyxy", "cxcywh"),
            box_convert(target_boxes, "xyxy", "cxcywh"),
            beta=SMOOTH_L1_BETA,
        )
        giou = generalized_box_iou_loss(pred_boxes, target_boxes, reduction="mean")
        return {
            "cls": F.cross_entropy(outputs.logits, labels),
            "box_l1": self.config.box_l1_weight * l1,
            "box_giou": self.config.box_giou_weight * giou,
        }

    def postprocess(self, outputs: LocalizerOutputs, batch: ImageBatch) -> list[Localization]:
        """Most probable class and the box clipped and mapped back to original-image pixels."""
        probabilities = outputs.logits.float().softmax(dim=1)
        scores, labels = probabilities.max(dim=1)
        results = []
        for index in range(len(batch)):
            box = clip_boxes_to_image(outputs.boxes[index].float(), batch.image_sizes[index])
            scale_x, scale_y = batch.scale(index)
            box = box / box.new_tensor([scale_x, scale_y, scale_x, scale_y])
            results.append(
                Localization(
                    label=int(labels[index]),
                    score=float(scores[index]),
                    box=box,
                    scores=probabilities[index],
                )
            )
        return results


def _target_boxes(targets: list[Target]) -> Tensor:
    """``(B, 4)`` xyxy boxes of ``targets``; DataError naming the image if one has no box."""
    for target in targets:
        if target.box is None:
            raise DataError(f"image {target.image_id}: the target has no box to localize")
    return torch.stack([target.box.float() for target in targets])
