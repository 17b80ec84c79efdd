"""RoI heads of Faster/Mask R-CNN: box heads and predictor, mask head and predictor, proposal
sampling, training targets, losses, and per-class detection selection.

Two box heads exist: ``mlp`` (two fully connected layers, torchvision's v1 ``TwoMLPHead``) and
``conv_fc`` (four 3x3 convs, optionally batch-normed, then one fully connected layer,
torchvision's v2 ``FastRCNNConvFCHead``).

Labels inside these heads are ``0..K`` with ``0`` the background; the model maps them from and
to pansight's contiguous ``0..K-1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, clip_boxes_to_image, remove_small_boxes, roi_align

from pansight.ops.boxes import BalancedSampler, BoxCoder, Matcher
from pansight.ops.grouped_nms import best_after_grouped_nms

SMOOTH_L1_BETA = 1.0 / 9
MIN_DETECTION_SIDE = 1e-2
"""Detections narrower or shorter than this many pixels are dropped."""
BOX_HEADS = ("mlp", "conv_fc")
HEAD_CONVS = 4
"""3x3 conv layers of the ``conv_fc`` box head and of the mask head."""


def conv_norm_layers(
    in_channels: int, channels: int, count: int, norm: bool
) -> tuple[nn.ModuleList, nn.ModuleList]:
    """``count`` 3x3 convs (``in_channels`` -> ``channels`` -> ... ``channels``) and the layer
    after each: a batch norm with ``norm`` (the conv then has no bias), else an identity.

    Convs start from Kaiming-normal weights (fan out) and zero bias.
    """
    widths = [in_channels] + [channels] * count
    convs = nn.ModuleList(
        nn.Conv2d(a, b, 3, padding=1, bias=not norm) for a, b in zip(widths[:-1], widths[1:])
    )
    norms = nn.ModuleList(nn.BatchNorm2d(channels) if norm else nn.Identity() for _ in convs)
    for conv in convs:
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    return convs, norms


class TwoMLPHead(nn.Module):
    """Flattened RoI features ``(R, C, S, S)`` -> ``(R, hidden)`` through fc6, fc7 (ReLU)."""

    def __init__(self, in_features: int, hidden: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, hidden)
        self.fc7 = nn.Linear(hidden, hidden)

    def forward(self, roi_features: Tensor) -> Tensor:
        hidden = F.relu(self.fc6(roi_features.flatten(1)), inplace=True)
        return F.relu(self.fc7(hidden), inplace=True)


class ConvFCHead(nn.Module):
    """RoI features ``(R, C, S, S)`` -> ``(R, hidden)``: four 3x3 conv (+ batch norm) + ReLU
    layers keeping ``(R, channels, S, S)``, then flatten, ``fc`` and ReLU."""

    def __init__(
        self, in_channels: int, roi_size: int, channels: int, hidden: int, norm: bool
    ) -> None:
        super().__init__()
        self.convs, self.norms = conv_norm_layers(in_channels, channels, HEAD_CONVS, norm)
        self.fc = nn.Linear(channels * roi_size**2, hidden)

    def forward(self, roi_features: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms):
            roi_features = F.relu(norm(conv(roi_features)), inplace=True)
        return F.relu(self.fc(roi_features.flatten(1)), inplace=True)


def build_box_head(
    kind: str, in_channels: int, roi_size: int, hidden: int, norm: bool
) -> TwoMLPHead | ConvFCHead:
    """The ``mlp`` or ``conv_fc`` box head for ``(R, in_channels, roi_size, roi_size)`` RoI
    features, giving ``(R, hidden)``; ``norm`` batch-normalizes the ``conv_fc`` convs."""
    if kind == "mlp":
        return TwoMLPHead(in_channels * roi_size**2, hidden)
    return ConvFCHead(in_channels, roi_size, in_channels, hidden, norm)


class BoxPredictor(nn.Module):
    """``(R, hidden)`` -> class logits ``(R, K + 1)`` and box deltas ``(R, 4 * (K + 1))``."""

    def __init__(self, hidden: int, num_classes_with_background: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(hidden, num_classes_with_background)
        self.bbox_pred = nn.Linear(hidden, 4 * num_classes_with_background)

    def forward(self, box_features: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(box_features), self.bbox_pred(box_features)


class MaskHead(nn.Module):
    """Four 3x3 conv (+ batch norm with ``norm``) + ReLU layers on ``(R, C, 14, 14)`` RoI
    features, giving ``(R, channels, 14, 14)``."""

    def __init__(self, in_channels: int, channels: int = 256, norm: bool = False) -> None:
        super().__init__()
        self.convs, self.norms = conv_norm_layers(in_channels, channels, HEAD_CONVS, norm)

    def forward(self, roi_features: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms):
            roi_features = F.relu(norm(conv(roi_features)), inplace=True)
        return roi_features


class MaskPredictor(nn.Module):
    """``(R, C, 14, 14)`` -> ``(R, K + 1, 28, 28)`` mask logits (2x deconv, ReLU, 1x1 conv)."""

    def __init__(self, in_channels: int, num_classes_with_background: int) -> None:
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(in_channels, num_classes_with_background, 1)
        for layer in (self.conv5_mask, self.mask_fcn_logits):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, mask_features: Tensor) -> Tensor:
        return self.mask_fcn_logits(F.relu(self.conv5_mask(mask_features), inplace=True))


def sample_proposals(
    proposals: list[Tensor],
    gt_boxes: list[Tensor],
    gt_labels: list[Tensor],
    matcher: Matcher,
    sampler: BalancedSampler,
    coder: BoxCoder,
) -> tuple[list[Tensor], Tensor, Tensor, list[Tensor]]:
    """Training RoIs: proposals plus ground truth, matched and sampled per image.

    Args:
        proposals: per image ``(P_i, 4)`` RPN proposals.
        gt_boxes: per image ``(G_i, 4)`` boxes (no crowd, no empty boxes).
        gt_labels: per image ``(G_i,)`` labels in ``1..K``.

    Returns:
        sampled RoIs per image ``(S_i, 4)``; their labels ``(sum S_i,)`` (0 background);
        regression targets ``(sum S_i, 4)``; per image the matched ground-truth index ``(S_i,)``
        (meaningful where the label is positive).
    """
    sampled, labels, targets, matched = [], [], [], []
    for boxes, image_gt, image_labels in zip(proposals, gt_boxes, gt_labels):
        boxes = torch.cat([boxes.detach(), image_gt])
        matches = matcher(box_iou(image_gt, boxes))
        index = matches.clamp(min=0)
        roi_labels = image_labels[index] if image_gt.numel() else torch.zeros_like(index)
        roi_labels = torch.where(matches == -1, 0, roi_labels)
        roi_labels = torch.where(matches == -2, -1, roi_labels)
        positive, negative = sampler(roi_labels)
        keep = positive | negative
        matched_gt = image_gt[index[keep]] if image_gt.numel() else boxes[keep]
        sampled.append(boxes[keep])
        labels.append(roi_labels[keep])
        targets.append(coder.encode(matched_gt, boxes[keep]))
        matched.append(index[keep])
    return sampled, torch.cat(labels), torch.cat(targets), matched


def box_losses(
    class_logits: Tensor, box_regression: Tensor, labels: Tensor, regression_targets: Tensor
) -> dict[str, Tensor]:
    """``{"cls", "box"}``: cross-entropy over sampled RoIs; smooth-L1 on the positives' deltas
    of their own class, summed and divided by the number of sampled RoIs.

    Args:
        class_logits: ``(R, K + 1)``; box_regression ``(R, 4 * (K + 1))``; labels ``(R,)``;
            regression_targets ``(R, 4)``.
    """
    positive = torch.nonzero(labels > 0).flatten()
    deltas = box_regression.reshape(box_regression.shape[0], -1, 4)[positive, labels[positive]]
    box_loss = F.smooth_l1_loss(
        deltas, regression_targets[positive], beta=SMOOTH_L1_BETA, reduction="sum"
    )
    return {
        "cls": F.cross_entropy(class_logits, labels),
        "box": box_loss / max(labels.numel(), 1),
    }


def mask_targets(
    gt_masks: list[Tensor], rois: list[Tensor], matched: list[Tensor], side: int
) -> Tensor:
    """``(sum R_i, side, side)`` float ground-truth masks cut out at ``rois`` by RoIAlign.

    Args:
        gt_masks: per image ``(G_i, H, W)`` masks in the input frame.
        rois: per image ``(R_i, 4)`` positive RoIs.
        matched: per image ``(R_i,)`` index of each RoI's ground-truth mask.
    """
    targets = []
    for masks, boxes, index in zip(gt_masks, rois, matched):
        indexed_boxes = torch.cat([index[:, None].to(boxes.dtype), boxes], dim=1)
        cut = roi_align(masks[:, None].to(boxes.dtype), indexed_boxes, (side, side), 1.0)
        targets.append(cut[:, 0])
    return torch.cat(targets)


def mask_loss(mask_logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Mean per-pixel BCE of each positive RoI's mask of its own class.

    Args:
        mask_logits: ``(R, K + 1, M, M)``; labels ``(R,)`` in ``1..K``; targets ``(R, M, M)``.
    """
    if labels.numel() == 0:
        return mask_logits.sum() * 0
    own_class = mask_logits[torch.arange(labels.numel(), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(own_class, targets)


def select_detections(
    class_logits: Tensor,
    box_regression: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
    coder: BoxCoder,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Per-class boxes of every RoI, thresholded and NMS-ed per class, best first.

    Args:
        class_logits: ``(R, K + 1)``; box_regression ``(R, 4 * (K + 1))``.
        proposals: per image ``(P_i, 4)`` RoIs with ``sum P_i = R``.
        image_sizes: ``(h, w)`` of each image inside the padding.

    Returns:
        per image boxes ``(D_i, 4)`` in input-frame pixels, scores ``(D_i,)`` and labels
        ``(D_i,)`` in ``1..K``.
    """
    counts = [len(p) for p in proposals]
    boxes_per_class = coder.decode(box_regression, torch.cat(proposals)).split(counts)
    probabilities = F.softmax(class_logits, -1).split(counts)
    all_boxes, all_scores, all_labels = [], [], []
    for boxes, scores, size in zip(boxes_per_class, probabilities, image_sizes):
        boxes = clip_boxes_to_image(boxes, size)[:, 1:].reshape(-1, 4)
        labels = torch.arange(1, scores.shape[1], device=scores.device).repeat(scores.shape[0])
        scores = scores[:, 1:].reshape(-1)
        keep = torch.nonzero(scores > score_thresh).flatten()
        keep = keep[remove_small_boxes(boxes[keep], MIN_DETECTION_SIDE)]
        kept = best_after_grouped_nms(
            boxes[keep], scores[keep], labels[keep], nms_thresh, detections_per_img
        )
        keep = keep[kept]
        all_boxes.append(boxes[keep])
        all_scores.append(scores[keep])
        all_labels.append(labels[keep])
    return all_boxes, all_scores, all_labels
