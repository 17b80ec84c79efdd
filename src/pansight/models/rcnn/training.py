"""Training-only parts of :class:`~pansight.models.rcnn.model.MaskRCNN`.

The ground truth used for matching, the sampled anchors and RoIs with their targets, and the
losses. Boxes are xyxy in input-frame pixels; labels are ``1..K`` (0 = background).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pansight.errors import DataError
from pansight.models.rcnn.config import RCNNConfig
from pansight.models.rcnn.outputs import RCNNOutputs, RCNNTrainingTargets
from pansight.models.rcnn.roi_heads import box_losses, mask_loss, mask_targets, sample_proposals
from pansight.models.rcnn.rpn import rpn_losses, rpn_targets
from pansight.ops.boxes import BalancedSampler, BoxCoder, Matcher
from pansight.structures import Target


@dataclass
class MatchingTargets:
    """Ground truth used for matching, per image: boxes ``(G, 4)``, labels ``1..K``, masks
    ``(G, H, W)`` bool (``None`` without a mask branch)."""

    boxes: list[Tensor]
    labels: list[Tensor]
    masks: list[Tensor] | None


def matching_targets(
    targets: list[Target] | None, num_classes: int, with_masks: bool, device: torch.device
) -> MatchingTargets:
    """Boxes (1..K labels, masks) used for matching: crowd and empty boxes are dropped.

    Raises:
        DataError: no targets, labels outside ``0..num_classes - 1``, or missing masks.
    """
    if targets is None:
        raise DataError("training Faster/Mask R-CNN needs targets passed to forward")
    boxes, labels, masks = [], [], []
    for target in targets:
        if target.labels.numel() and (
            target.labels.min() < 0 or target.labels.max() >= num_classes
        ):
            raise DataError(f"image {target.image_id}: labels must lie in 0..{num_classes - 1}")
        keep = (target.boxes[:, 2] > target.boxes[:, 0]) & (target.boxes[:, 3] > target.boxes[:, 1])
        if target.iscrowd is not None:
            keep &= ~target.iscrowd.bool()
        boxes.append(target.boxes[keep].float().to(device))
        labels.append(target.labels[keep].to(device) + 1)
        if with_masks:
            masks.append(_target_masks(target, keep, device))
    return MatchingTargets(boxes, labels, masks if with_masks else None)


def _target_masks(target: Target, keep: Tensor, device: torch.device) -> Tensor:
    """``(G, H, W)`` masks of the kept objects; an image without objects may have none."""
    if target.masks is not None:
        return target.masks[keep].to(device)
    if keep.any():
        raise DataError(f"image {target.image_id}: Mask R-CNN needs target masks")
    return torch.zeros((0, *target.size), dtype=torch.bool, device=device)


def sample_training_examples(
    proposals: list[Tensor],
    anchors: Tensor,
    matching: MatchingTargets,
    config: RCNNConfig,
    rpn_coder: BoxCoder,
    roi_coder: BoxCoder,
) -> tuple[list[Tensor], RCNNTrainingTargets, list[Tensor]]:
    """The RPN's and the RoI heads' training examples: per image the sampled ``(P_i, 4)`` RoIs
    (replacing the proposals), their targets (without masks), and each RoI's matched
    ground-truth index. ``anchors`` ``(N, 4)`` are in padded-input pixels."""
    rpn_labels, rpn_regression_targets = rpn_targets(
        anchors,
        matching.boxes,
        Matcher(config.rpn_fg_iou_thresh, config.rpn_bg_iou_thresh, True),
        BalancedSampler(config.rpn_batch_size_per_image, config.rpn_positive_fraction),
        rpn_coder,
    )
    rois, labels, regression_targets, matched = sample_proposals(
        proposals,
        matching.boxes,
        matching.labels,
        Matcher(config.box_fg_iou_thresh, config.box_bg_iou_thresh),
        BalancedSampler(config.box_batch_size_per_image, config.box_positive_fraction),
        roi_coder,
    )
    targets = RCNNTrainingTargets(rpn_labels, rpn_regression_targets, labels, regression_targets)
    return rois, targets, matched


def positive_rois_with_mask_targets(
    rois: list[Tensor],
    roi_labels: Tensor,
    matching: MatchingTargets,
    matched: list[Tensor],
    side: int,
) -> tuple[list[Tensor], Tensor]:
    """Per image the ``(R_i, 4)`` positive ones of the sampled ``rois`` (``roi_labels`` > 0),
    and their ``(sum R_i, side, side)`` ground-truth masks."""
    positive = [labels > 0 for labels in roi_labels.split([len(r) for r in rois])]
    positive_rois = [r[keep] for r, keep in zip(rois, positive)]
    gt_index = [index[keep] for index, keep in zip(matched, positive)]
    return positive_rois, mask_targets(matching.masks, positive_rois, gt_index, side)


def rcnn_losses(outputs: RCNNOutputs, with_masks: bool) -> dict[str, Tensor]:
    """``{"rpn_objectness", "rpn_box", "cls", "box"}`` and ``"mask"`` with masks, from the
    outputs of a training-mode forward."""
    targets = outputs.training_targets
    if targets is None:
        raise ValueError("loss needs the outputs of a training-mode forward with targets")
    losses = rpn_losses(
        outputs.rpn_objectness,
        outputs.rpn_deltas,
        targets.rpn_labels,
        targets.rpn_regression_targets,
    )
    losses |= box_losses(
        outputs.class_logits,
        outputs.box_regression,
        targets.roi_labels,
        targets.roi_regression_targets,
    )
    if with_masks:
        positive_labels = targets.roi_labels[targets.roi_labels > 0]
        losses["mask"] = mask_loss(outputs.mask_logits, positive_labels, targets.mask_targets)
    return losses
