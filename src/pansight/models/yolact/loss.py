"""YOLACT's training targets and losses.

Priors are matched to the ground truth (:func:`match_priors`; anchor labels ``1..K`` for objects,
``0`` for background, ``-1`` for neutral anchors that no loss sees) and :func:`yolact_losses`
returns four scalars: ``box`` (smooth-L1), ``cls`` (cross-entropy with online hard negative
mining), ``mask`` (binary cross-entropy of the assembled masks) and ``semantic`` (of the
auxiliary class maps on ``p3``). Boxes are relative, as in :mod:`pansight.models.yolact.head`.

See docs/models.md for each loss's exact definition and normalization.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_area, box_iou

from pansight.errors import DataError
from pansight.models.yolact.config import YolactConfig, YolactOutputs
from pansight.models.yolact.head import crop_to_boxes, encode_boxes, prior_boxes
from pansight.structures import Target

OUTSIDE_CROP_LOSS = 100.0
"""Loss of a foreground pixel outside the crop, where the cropped mask is 0 (the value binary
cross-entropy gives for a probability of 0, whose log it clamps at -100)."""


@dataclass
class ImageTargets:
    """One image's ground truth in YOLACT's frame.

    Attributes:
        boxes: ``(G, 4)`` relative xyxy boxes of the non-crowd objects.
        labels: ``(G,)`` int64 labels ``0..K-1``.
        masks: ``(G, H, W)`` bool masks in input pixels.
        crowd_boxes: ``(C, 4)`` relative xyxy boxes of crowd regions.
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor
    crowd_boxes: Tensor


def image_targets(target: Target, num_classes: int, device: torch.device) -> ImageTargets:
    """The matching ground truth of one input-frame ``target``; empty boxes are dropped.

    Raises:
        DataError: naming the image, for labels outside ``0..num_classes - 1`` or objects
            without masks.
    """
    labels = target.labels
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"image {target.image_id}: labels must lie in 0..{num_classes - 1}")
    height, width = target.size
    boxes = target.boxes.float() / torch.tensor([width, height, width, height])
    boxes = boxes.to(device)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    crowd = torch.zeros_like(valid)
    if target.iscrowd is not None:
        crowd = target.iscrowd.bool().to(device)
    keep = valid & ~crowd
    if target.masks is None:
        if keep.any():
            raise DataError(f"image {target.image_id}: YOLACT needs target masks")
        masks = torch.zeros((0, height, width), dtype=torch.bool, device=device)
    else:
        masks = target.masks.to(device)[keep]
    return ImageTargets(boxes[keep], labels.to(device)[keep], masks, boxes[valid & crowd])


def match_priors(
    truth: ImageTargets, priors: Tensor, config: YolactConfig
) -> tuple[Tensor, Tensor]:
    """Label every prior of one image and name its ground-truth object.

    A prior is positive when its IoU with its best object reaches ``positive_iou``, background
    below ``negative_iou``, neutral in between. Every object also claims one prior: repeatedly
    the (object, prior) pair of highest remaining IoU is made positive. Background priors
    covering a crowd region by more than ``crowd_iou`` (of the prior's area) become neutral.

    Args:
        priors: ``(A, 4)`` relative center-size priors.

    Returns:
        ``labels`` ``(A,)`` int64 (``1..K``, ``0`` background, ``-1`` neutral) and ``matched``
        ``(A,)`` int64 index of each prior's object (0 where there is none).
    """
    boxes = prior_boxes(priors)
    num_priors = boxes.shape[0]
    matched = torch.zeros(num_priors, dtype=torch.int64, device=priors.device)
    labels = torch.zeros(num_priors, dtype=torch.int64, device=priors.device)
    if len(truth.boxes):
        overlaps = box_iou(truth.boxes, boxes)
        best_overlap, matched = overlaps.max(dim=0)
        for _ in range(len(truth.boxes)):
            best_per_object, best_prior = overlaps.max(dim=1)
            obj = int(best_per_object.argmax())
            prior = int(best_prior[obj])
            overlaps[:, prior] = -1
            overlaps[obj, :] = -1
            best_overlap[prior] = 2.0
            matched[prior] = obj
        labels = truth.labels[matched] + 1
        labels[best_overlap < config.positive_iou] = -1
        labels[best_overlap < config.negative_iou] = 0
    if len(truth.crowd_boxes):
        covered = _intersection(boxes, truth.crowd_boxes) / box_area(boxes)[:, None]
        labels[(labels <= 0) & (covered.max(dim=1).values > config.crowd_iou)] = -1
    return labels, matched


def _intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``(N, M)`` intersection areas of xyxy boxes."""
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    return (bottom_right - top_left).clamp(min=0).prod(dim=2)


def yolact_losses(
    outputs: YolactOutputs, targets: list[Target], config: YolactConfig, num_classes: int
) -> dict[str, Tensor]:
    """``{"box", "cls", "mask", "semantic"}`` for input-frame ``targets``, weighted by the
    config's ``*_weight`` fields."""
    device = outputs.box_deltas.device
    truths = [image_targets(target, num_classes, device) for target in targets]
    matches = [match_priors(truth, outputs.priors, config) for truth in truths]
    labels = torch.stack([image_labels for image_labels, _ in matches])
    num_positive = (labels > 0).sum().clamp(min=1)
    box_sum = outputs.box_deltas.new_zeros(())
    mask_sum = outputs.box_deltas.new_zeros(())
    for index, (truth, (image_labels, matched)) in enumerate(zip(truths, matches)):
        positive = image_labels > 0
        matched_boxes = truth.boxes[matched[positive]]
        box_sum = box_sum + _box_loss(outputs, index, positive, matched_boxes)
        mask_sum = mask_sum + _mask_loss(outputs, index, truth, positive, matched, config)
    return {
        "box": config.box_weight * box_sum / num_positive,
        "cls": config.class_weight
        * _class_loss(outputs.class_logits, labels, config)
        / num_positive,
        "mask": config.mask_weight * mask_sum / num_positive,
        "semantic": config.semantic_weight * _semantic_loss(outputs.semantic_logits, truths),
    }


def _box_loss(outputs: YolactOutputs, index: int, positive: Tensor, boxes: Tensor) -> Tensor:
    """Summed smooth-L1 of one image's positive deltas against their objects' deltas."""
    encoded = encode_boxes(boxes, outputs.priors[positive])
    return F.smooth_l1_loss(outputs.box_deltas[index][positive], encoded, reduction="sum")


def _class_loss(logits: Tensor, labels: Tensor, config: YolactConfig) -> Tensor:
    """Summed cross-entropy over positives and hard negatives.

    ``logits`` ``(B, A, K + 1)``, ``labels`` ``(B, A)``. Each image takes up to
    ``negatives_per_positive`` times its positives as negatives: the background anchors whose
    background loss ``logsumexp(logits) - logits[0]`` is largest.
    """
    with torch.no_grad():
        background_loss = torch.logsumexp(logits, dim=-1) - logits[..., 0]
        background_loss[labels != 0] = 0
        rank = background_loss.argsort(dim=1, descending=True).argsort(dim=1)
        num_negative = (
            config.negatives_per_positive * (labels > 0).sum(dim=1, keepdim=True)
        ).clamp(max=labels.shape[1] - 1)
        negative = (rank < num_negative) & (labels == 0)
    chosen = (labels > 0) | negative
    return F.cross_entropy(logits[chosen], labels[chosen], reduction="sum")


def _mask_loss(
    outputs: YolactOutputs,
    index: int,
    truth: ImageTargets,
    positive: Tensor,
    matched: Tensor,
    config: YolactConfig,
) -> Tensor:
    """Summed, box-area-normalized mask BCE of one image's ``positive`` ``(A,)`` anchors, each
    compared with its ``matched`` ``(A,)`` object. At most ``masks_to_train`` random positives
    are used, their loss scaled up by ``P / masks_to_train``."""
    prototypes = outputs.prototypes[index]
    coefficients = outputs.mask_coefficients[index][positive]
    objects = matched[positive]
    if objects.numel() == 0:
        return prototypes.sum() * 0 + coefficients.sum() * 0
    total = objects.numel()
    if total > config.masks_to_train:
        chosen = torch.randperm(total, device=objects.device)[: config.masks_to_train]
        objects, coefficients = objects[chosen], coefficients[chosen]
    height, width = prototypes.shape[:2]
    gt_masks = _downsampled_masks(truth.masks, (height, width))[objects]
    boxes = truth.boxes[objects]
    logits = (prototypes @ coefficients.t()).permute(2, 0, 1)
    inside = crop_to_boxes(torch.ones_like(logits), boxes)
    pixel_loss = F.binary_cross_entropy_with_logits(logits, gt_masks, reduction="none")
    pixel_loss = pixel_loss * inside + OUTSIDE_CROP_LOSS * gt_masks * (1 - inside)
    box_pixels = box_area(boxes) * height * width
    per_object = pixel_loss.sum(dim=(1, 2)) / box_pixels
    return per_object.sum() * (total / objects.numel())


def _downsampled_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """``(G, H, W)`` bool masks -> ``(G, h, w)`` float 0/1 (bilinear, then ``> 0.5``)."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=torch.float32)
    resized = F.interpolate(masks[None].float(), size=size, mode="bilinear", align_corners=False)
    return (resized[0] > 0.5).float()


def _semantic_loss(semantic_logits: Tensor, truths: list[ImageTargets]) -> Tensor:
    """Mean over images of the per-pixel-averaged (summed over classes) BCE of the ``p3`` class
    maps ``(B, K, h, w)`` against each class's union of masks."""
    batch, _, height, width = semantic_logits.shape
    class_maps = torch.zeros_like(semantic_logits)
    for index, truth in enumerate(truths):
        masks = _downsampled_masks(truth.masks, (height, width))
        for label, mask in zip(truth.labels.tolist(), masks):
            class_maps[index, label] = torch.maximum(class_maps[index, label], mask)
    loss = F.binary_cross_entropy_with_logits(semantic_logits, class_maps, reduction="sum")
    return loss / (height * width * batch)
