"""The raw outputs of the R-CNN network (:class:`RCNNOutputs`), shared by the model, its
training targets and losses, and its exporter."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class RCNNTrainingTargets:
    """What a training-mode forward sampled from the targets, for the losses.

    Attributes:
        rpn_labels, rpn_regression_targets: ``(B, N)`` sampled anchor labels (1, 0, -1 not
            sampled) and ``(B, N, 4)`` their box targets.
        roi_labels, roi_regression_targets: ``(sum P_i,)`` labels of the sampled RoIs
            (0 = background) and ``(sum P_i, 4)`` their box targets.
        mask_targets: ``(R, 28, 28)`` ground-truth masks of the positive RoIs (``None``
            without a mask branch).
    """

    rpn_labels: Tensor
    rpn_regression_targets: Tensor
    roi_labels: Tensor
    roi_regression_targets: Tensor
    mask_targets: Tensor | None = None


@dataclass
class RCNNOutputs:
    """Raw outputs of :class:`~pansight.models.rcnn.model.MaskRCNN`; every field exists in both
    modes.

    Boxes are xyxy in input-frame pixels; labels are ``1..K`` (0 = background).

    Attributes:
        proposals: per image ``(P_i, 4)`` RoIs of the box branch (sampled ones in training).
        class_logits: ``(sum P_i, K + 1)``.
        box_regression: ``(sum P_i, 4 * (K + 1))`` deltas (weights 10, 10, 5, 5) per class.
        detection_boxes, detection_scores, detection_labels: per image ``(D_i, 4)``,
            ``(D_i,)``, ``(D_i,)`` selected detections (eval; empty lists in training).
        mask_logits: ``(R, K + 1, 28, 28)`` for the detections (eval) or the positive RoIs
            (training); ``None`` without a mask branch.
        rpn_objectness: ``(B, N)`` anchor logits; rpn_deltas: ``(B, N, 4)``.
        training_targets: what training sampled (training mode, else ``None``).
    """

    proposals: list[Tensor]
    class_logits: Tensor
    box_regression: Tensor
    detection_boxes: list[Tensor]
    detection_scores: list[Tensor]
    detection_labels: list[Tensor]
    mask_logits: Tensor | None
    rpn_objectness: Tensor
    rpn_deltas: Tensor
    training_targets: RCNNTrainingTargets | None = None
