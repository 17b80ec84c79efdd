"""Settings of the Faster/Mask R-CNN models (:mod:`pansight.models.rcnn.model`)."""

from __future__ import annotations

from dataclasses import dataclass

from pansight.errors import ConfigError
from pansight.models.rcnn.roi_heads import BOX_HEADS

PREPROCESSING = ("torchvision", "square")
SIZE_DIVISIBLE = 32


@dataclass(frozen=True)
class RCNNConfig:
    """Settings of :class:`MaskRCNN` / :class:`FasterRCNN` (defaults are torchvision's).

    Attributes:
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        with_masks: add the mask branch (Mask R-CNN).
        preprocessing: ``torchvision`` (shorter side to ``min_size``, longer side at most
            ``max_size``, pad to a multiple of 32) or ``square`` (longer side to
            ``square_size``, pad to ``square_size x square_size``).
        min_size, max_size, square_size: the resize sizes, in pixels.
        fpn_channels: channels of every pyramid level.
        fpn_norm: batch norm after every FPN conv (torchvision's v2 models).
        anchor_sizes: one anchor size per level ``p2..p6``.
        aspect_ratios: anchor ratios ``h / w`` at every level.
        rpn_conv_depth: 3x3 conv layers of the RPN head (1; 2 in torchvision's v2 models).
        rpn_*: proposal selection (pre/post-NMS top-n, NMS IoU, score threshold) and anchor
            matching/sampling for the RPN loss.
        box_head: ``mlp`` (two fully connected layers) or ``conv_fc`` (four 3x3 convs of
            ``fpn_channels``, then one fully connected layer; torchvision's v2 models).
        head_norm: batch norm after every conv of the ``conv_fc`` box head and the mask head
            (torchvision's v2 models).
        box_*: proposal matching/sampling for the RoI losses.
        representation_size: width of the box head's fully connected layers.
        mask_head_channels: channels of the mask head's convs (``0``: ``fpn_channels``).
        score_thresh, nms_thresh, detections_per_img: detection selection.
        mask_threshold: probability at which pasted masks become foreground.
    """

    backbone: str = "resnet18"
    with_masks: bool = True
    preprocessing: str = "torchvision"
    min_size: int = 800
    max_size: int = 1333
    square_size: int = 512
    fpn_channels: int = 256
    fpn_norm: bool = False
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_conv_depth: int = 1
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_score_thresh: float = 0.0
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    box_head: str = "mlp"
    head_norm: bool = False
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    representation_size: int = 1024
    mask_head_channels: int = 0
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    mask_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.preprocessing not in PREPROCESSING:
            raise ConfigError(
                f"preprocessing={self.preprocessing!r}; choose one of {', '.join(PREPROCESSING)}"
            )
        if not 32 <= self.min_size <= self.max_size:
            raise ConfigError(
                f"need 32 <= min_size <= max_size, got {self.min_size}, {self.max_size}"
            )
        if self.square_size < 32 or self.square_size % SIZE_DIVISIBLE:
            raise ConfigError(f"square_size={self.square_size} must be a multiple of 32")
        if self.rpn_conv_depth < 1:
            raise ConfigError(f"rpn_conv_depth={self.rpn_conv_depth} must be >= 1")
        if self.box_head not in BOX_HEADS:
            raise ConfigError(f"box_head={self.box_head!r}; choose one of {', '.join(BOX_HEADS)}")
        if len(self.anchor_sizes) != 5:
            raise ConfigError(f"anchor_sizes needs 5 sizes (p2..p6), got {self.anchor_sizes}")
