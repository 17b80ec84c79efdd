"""How closely two models agree: the relative difference of two outputs, and for Mask R-CNNs
matched detections and network outputs on the same RoIs."""

from __future__ import annotations

import copy
import sys

import torch
from torch import nn
from torchvision.ops import box_iou

from pansight.models.rcnn.model import MaskRCNN
from pansight.structures import Detections

SAME_BOX_IOU = 0.99
"""Box IoU above which two detections of the same label are the same detection."""
MAX_RELATIVE_DIFF = 1e-4
"""Largest relative difference allowed between the network outputs of a model and of its
:func:`~pansight.models.fuse.optimize_for_inference` copy (float rounding gives about 1e-5)."""


def relative_difference(found: torch.Tensor, expected: torch.Tensor) -> float:
    """``max |found - expected| / max |expected|`` (0 for empty tensors)."""
    return _max_abs(found - expected) / max(_max_abs(expected), 1e-12)


def compare_outputs(reference: list[dict], ours: list, detections: int) -> dict[str, float]:
    """How closely our detections reproduce torchvision's.

    Each of our detections is paired with torchvision's detection of the same label that its
    box overlaps most; a pair with IoU above :data:`SAME_BOX_IOU` is a match. Float rounding
    (a folded batch norm, another memory layout) can swap detections whose scores tie to a few
    ulp, so detections are matched rather than compared by rank.

    Returns:
        the matched fraction, and over the matches the largest box and score differences and
        the lowest mask IoU.

    Raises:
        SystemExit: when the detection counts differ or an image has fewer than
            ``detections`` detections.
    """
    matched = total = 0
    box_diff = score_diff = 0.0
    mask_iou = 1.0
    for index, (expected, got) in enumerate(zip(reference, ours)):
        count = len(expected["boxes"])
        if len(got.boxes) != count or count < detections:
            sys.exit(f"image {index}: {len(got.boxes)} vs {count} detections (want {detections})")
        same_label = got.labels[:, None] == expected["labels"][None] - 1
        best_iou, partner = (box_iou(got.boxes, expected["boxes"]) * same_label).max(dim=1)
        match = best_iou > SAME_BOX_IOU
        partner = partner[match]
        matched, total = matched + int(match.sum()), total + count
        box_diff = max(box_diff, _max_abs(got.boxes[match] - expected["boxes"][partner]))
        score_diff = max(score_diff, _max_abs(got.scores[match] - expected["scores"][partner]))
        expected_masks = expected["masks"][partner, 0] > 0.5
        got_masks = got.masks[match]
        intersection = (expected_masks & got_masks).sum((1, 2)).float()
        union = (expected_masks | got_masks).sum((1, 2)).float()
        iou = torch.where(union > 0, intersection / union.clamp(min=1), 1.0)
        mask_iou = min([mask_iou, *iou.tolist()])
    return {
        "matched": matched / total,
        "box_diff": box_diff,
        "score_diff": score_diff,
        "mask_iou": mask_iou,
    }


def _max_abs(difference: torch.Tensor) -> float:
    return difference.abs().max().item() if difference.numel() else 0.0


@torch.inference_mode()
def network_agreement(
    plain: MaskRCNN, optimized: MaskRCNN, images: list[torch.Tensor]
) -> tuple[float, str]:
    """Largest relative difference ``max |a - b| / max |a|`` between the network outputs of two
    models on the same batch, and the output it is in.

    Compared: the pyramid levels, the RPN objectness and deltas, the box branch's class logits
    and deltas on ``plain``'s proposals, and the mask logits on ``plain``'s detections. Giving
    both models the same RoIs keeps ties in the proposal and detection selection out of it.
    """
    batch, _ = plain.preprocess(images)
    plain_outputs = plain(batch)
    per_model = []
    for model in (plain, optimized):
        levels = model.pyramid_levels(model.backbone_levels(batch))
        objectness, deltas, _, _ = model.rpn_per_level(levels, batch)
        rois = model.roi_align_boxes(levels, plain_outputs.proposals, batch)
        class_logits, box_regression = model.box_branch(rois)
        mask_logits = model.mask_branch(levels, plain_outputs.detection_boxes, batch)
        per_model.append(
            levels
            | {
                "rpn objectness": objectness,
                "rpn deltas": deltas,
                "class logits": class_logits,
                "box deltas": box_regression,
                "mask logits": mask_logits,
            }
        )
    differences = {
        name: relative_difference(per_model[1][name], value) for name, value in per_model[0].items()
    }
    worst = max(differences, key=differences.get)
    return differences[worst], worst


def as_detections(outputs: list[dict]) -> list[Detections]:
    """torchvision's result dicts as pansight :class:`Detections` (labels ``0..K-1``, masks
    thresholded at 0.5)."""
    return [
        Detections(out["boxes"], out["scores"], out["labels"] - 1, out["masks"][:, 0] > 0.5)
        for out in outputs
    ]


def float64_outputs(model: nn.Module, images: list[torch.Tensor]) -> list[dict]:
    """torchvision's results computed in float64 (a copy of ``model``), cast to float32."""
    exact = copy.deepcopy(model).double()
    with torch.inference_mode():
        outputs = exact([image.double() for image in images])
    return [
        {key: value.float() if value.is_floating_point() else value for key, value in out.items()}
        for out in outputs
    ]
