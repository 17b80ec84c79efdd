"""Accuracy of single-object localization: right class and box IoU >= 0.5."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torchvision.ops import box_iou

from pansight.errors import DataError
from pansight.metrics.classification import check_lengths, image_labels
from pansight.structures import Localization, Target

IOU_THRESHOLD = 0.5


class LocalizationMetric:
    """Class and box accuracy of :class:`Localization` results against ``Target.label/box``.

    Boxes of results and targets must be in the same (original-image) pixels.
    """

    primary: ClassVar[str] = "loc_accuracy"

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self._count = 0
        self._correct = 0
        self._localized = 0
        self._iou_sum = 0.0

    def update(self, results: list[Localization], targets: list[Target]) -> None:
        """Count one batch: ``results[i]`` is the prediction for ``targets[i]``."""
        check_lengths(results, targets)
        if not results:
            return
        labels = image_labels(targets, self.num_classes)
        predicted = torch.tensor([result.label for result in results], dtype=torch.int64)
        pred_boxes = torch.stack([result.box.detach().float().cpu() for result in results])
        ious = box_iou(pred_boxes, _target_boxes(targets)).diagonal()
        correct = predicted == labels
        self._count += len(results)
        self._correct += int(correct.sum())
        self._localized += int((correct & (ious >= IOU_THRESHOLD)).sum())
        self._iou_sum += float(ious.sum())

    def compute(self) -> dict[str, float]:
        """``{"top1", "loc_accuracy", "mean_iou"}`` (NaN before any update).

        ``loc_accuracy`` counts images with the right class and IoU >= 0.5; ``mean_iou`` is the
        mean box IoU whatever the class.
        """
        if self._count == 0:
            return {key: float("nan") for key in ("top1", "loc_accuracy", "mean_iou")}
        return {
            "top1": self._correct / self._count,
            "loc_accuracy": self._localized / self._count,
            "mean_iou": self._iou_sum / self._count,
        }


def _target_boxes(targets: list[Target]) -> Tensor:
    """``(N, 4)`` xyxy ``Target.box`` of each target; DataError naming an image without one."""
    for target in targets:
        if target.box is None:
            raise DataError(f"image {target.image_id}: the target has no box")
    return torch.stack([target.box.detach().float().cpu() for target in targets])
