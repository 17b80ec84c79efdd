"""YOLACT's settings (:class:`YolactConfig`) and the raw outputs of its network
(:class:`YolactOutputs`), shared by the model, its loss and its exporter."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pansight.errors import ConfigError
from pansight.ops.nms import NMS_METHODS

YOLACT_PIXEL_MEAN = (123.68 / 255, 116.78 / 255, 103.94 / 255)
YOLACT_PIXEL_STD = (58.40 / 255, 57.12 / 255, 57.38 / 255)
"""RGB mean and std of the original (its BGR ``MEANS``/``STD`` in 0..255, reordered)."""

LEVELS = ("p3", "p4", "p5", "p6", "p7")


@dataclass(frozen=True)
class YolactConfig:
    """Settings of :class:`Yolact` (defaults: the original ``yolact_base``, ResNet-101).

    Attributes:
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        input_size: side of the square every image is resized to.
        fpn_channels: channels of every pyramid level, of the head and of the protonet input.
        proto_channels: channels of the protonet's hidden convs.
        num_prototypes: ``k``, prototype masks and coefficients per anchor.
        anchor_scales: anchor size in input pixels at ``p3..p7``.
        aspect_ratios: anchor ratios ``w / h`` at every location.
        square_anchors: make every anchor square (``h = w``), as the original's released models
            do by accident (``use_square_anchors``); their weights were trained that way.
        positive_iou, negative_iou: anchor matching thresholds (between them: neutral).
        crowd_iou: background anchors covered more than this by a crowd region are neutral.
        negatives_per_positive: hard negatives per positive in the class loss.
        masks_to_train: most positives per image in the mask loss.
        box_weight, class_weight, mask_weight, semantic_weight: loss weights.
        score_thresh: anchors whose best object-class probability is at most this are dropped
            before NMS.
        nms: ``fast`` (Fast NMS) or ``standard`` (torchvision's ``batched_nms``).
        nms_thresh: IoU above which NMS suppresses.
        top_k: candidates per class going into NMS.
        detections_per_img: detections kept after NMS.
        mask_threshold: probability above which an upsampled mask pixel is foreground.
        integer_boxes: truncate result boxes to whole pixels (the original's output does).
    """

    backbone: str = "resnet101"
    input_size: int = 550
    fpn_channels: int = 256
    proto_channels: int = 256
    num_prototypes: int = 32
    anchor_scales: tuple[float, ...] = (24, 48, 96, 192, 384)
    aspect_ratios: tuple[float, ...] = (1.0, 0.5, 2.0)
    square_anchors: bool = True
    positive_iou: float = 0.5
    negative_iou: float = 0.4
    crowd_iou: float = 0.7
    negatives_per_positive: int = 3
    masks_to_train: int = 100
    box_weight: float = 1.5
    class_weight: float = 1.0
    mask_weight: float = 6.125
    semantic_weight: float = 1.0
    score_thresh: float = 0.05
    nms: str = "fast"
    nms_thresh: float = 0.5
    top_k: int = 200
    detections_per_img: int = 100
    mask_threshold: float = 0.5
    integer_boxes: bool = True

    def __post_init__(self) -> None:
        if self.input_size < 32:
            raise ConfigError(f"input_size={self.input_size} must be at least 32")
        if len(self.anchor_scales) != len(LEVELS):
            raise ConfigError(f"anchor_scales needs 5 sizes (p3..p7), got {self.anchor_scales}")
        if not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            raise ConfigError(f"aspect_ratios={self.aspect_ratios} must be positive numbers")
        if self.nms not in NMS_METHODS:
            raise ConfigError(f"nms={self.nms!r}; choose one of {', '.join(NMS_METHODS)}")
        if not 0 <= self.negative_iou <= self.positive_iou <= 1:
            raise ConfigError("need 0 <= negative_iou <= positive_iou <= 1")


@dataclass
class YolactOutputs:
    """Raw outputs of :class:`Yolact`, the same in training and evaluation.

    ``A`` counts the anchors of all levels; boxes and priors are relative to the input side.

    Attributes:
        box_deltas: ``(B, A, 4)`` center-size deltas (variances 0.1, 0.2) on the priors.
        class_logits: ``(B, A, K + 1)``; logit 0 is the background.
        mask_coefficients: ``(B, A, k)`` in ``[-1, 1]`` (tanh).
        prototypes: ``(B, Hp, Wp, k)`` prototype masks (after ReLU), ``Hp = Wp`` a quarter of
            the input side (rounded up as the ResNet strides round).
        priors: ``(A, 4)`` anchors ``(cx, cy, w, h)``.
        semantic_logits: ``(B, K, H3, W3)`` auxiliary class maps on ``p3``.
    """

    box_deltas: Tensor
    class_logits: Tensor
    mask_coefficients: Tensor
    prototypes: Tensor
    priors: Tensor
    semantic_logits: Tensor
