"""Semantic-segmentation metrics from one confusion matrix: per-class IoU, mIoU, pixel accuracy,
mean class accuracy and frequency-weighted IoU.

Every pixel whose ground truth is ``IGNORE_LABEL`` is left out of every number.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from pansight.errors import DataError
from pansight.metrics.classification import check_lengths
from pansight.structures import IGNORE_LABEL, SemanticMap, Target


def confusion_matrix(
    truth: Tensor, predicted: Tensor, num_classes: int, ignore_label: int = IGNORE_LABEL
) -> Tensor:
    """``(K, K)`` int64 pixel counts: row = true class, column = predicted class.

    Args:
        truth: integer class map of any shape; ``ignore_label`` pixels are not counted.
        predicted: integer class map of the same shape, values in ``0..K-1``.
        num_classes: ``K``.

    Raises:
        ValueError: shapes differ, or a value is outside ``0..K-1`` (and not ignored in truth).
    """
    if truth.shape != predicted.shape:
        raise ValueError(f"truth {tuple(truth.shape)} and prediction {tuple(predicted.shape)}")
    counted = truth != ignore_label
    truth, predicted = truth[counted].long(), predicted[counted].long()
    for name, values in (("true", truth), ("predicted", predicted)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"a {name} label is outside 0..{num_classes - 1}")
    pairs = truth * num_classes + predicted
    counts = torch.bincount(pairs, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def scores_from_confusion(confusion: Tensor) -> dict[str, Tensor | float]:
    """The numbers of a ``(K, K)`` confusion matrix (rows true, columns predicted).

    Returns:
        ``iou``: ``(K,)`` per-class IoU ``TP / (TP + FP + FN)`` (NaN for a class neither present
        nor predicted); ``accuracy``: ``(K,)`` per-class recall ``TP / (TP + FN)`` (NaN for a
        class not present); ``mIoU`` and ``mean_accuracy``: their means over non-NaN classes;
        ``pixel_accuracy``: correct / counted pixels; ``fw_IoU``: IoUs weighted by each class's
        share of the true pixels. Scalars are NaN when no pixel was counted.
    """
    confusion = confusion.double()
    true_positives = confusion.diagonal()
    true_pixels = confusion.sum(dim=1)
    union = true_pixels + confusion.sum(dim=0) - true_positives
    iou = true_positives / union
    accuracy = true_positives / true_pixels
    total = true_pixels.sum()
    present = true_pixels > 0
    fw_iou = (true_pixels[present] * iou[present]).sum() / total
    return {
        "iou": iou,
        "accuracy": accuracy,
        "mIoU": float(iou.nanmean()),
        "mean_accuracy": float(accuracy.nanmean()),
        "pixel_accuracy": float(true_positives.sum() / total),
        "fw_IoU": float(fw_iou),
    }


SUMMARY_KEYS = ("mIoU", "pixel_accuracy", "mean_accuracy", "fw_IoU")


class SemanticMetric:
    """mIoU and friends of :class:`SemanticMap` results against ``Target.semantic``.

    Results and targets must be in the same (original-image) pixels. ``compute`` returns
    ``mIoU``, ``pixel_accuracy``, ``mean_accuracy``, ``fw_IoU`` and ``IoU_<class name>`` per
    class (see :func:`scores_from_confusion`).

    Attributes:
        class_names: one name per label ``0..K-1``.
        confusion: ``(K, K)`` int64 pixel counts so far (rows true, columns predicted).
    """

    primary: ClassVar[str] = "mIoU"

    def __init__(self, class_names: list[str], ignore_label: int = IGNORE_LABEL) -> None:
        self.class_names = list(class_names)
        self.ignore_label = ignore_label
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def reset(self) -> None:
        self.confusion = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64)

    def update(self, results: list[SemanticMap], targets: list[Target]) -> None:
        """Count one batch: ``results[i]`` is the prediction for ``targets[i]``.

        Raises:
            DataError: naming the image, if its target has no semantic map, one of another
                size than the prediction, or a value that is neither a label nor ignored.
        """
        check_lengths(results, targets)
        for result, target in zip(results, targets):
            if target.semantic is None:
                raise DataError(f"image {target.image_id}: the target has no semantic map")
            truth, predicted = target.semantic.cpu(), result.labels.cpu()
            if truth.shape != predicted.shape:
                raise DataError(
                    f"image {target.image_id}: prediction is {tuple(predicted.shape)} but the "
                    f"semantic map is {tuple(truth.shape)}"
                )
            try:
                self.confusion += confusion_matrix(
                    truth, predicted, self.num_classes, self.ignore_label
                )
            except ValueError as error:
                raise DataError(f"image {target.image_id}: {error}") from None

    def compute(self) -> dict[str, float]:
        """The scores so far (NaN before any labeled pixel was counted)."""
        scores = scores_from_confusion(self.confusion)
        metrics = {key: scores[key] for key in SUMMARY_KEYS}
        for name, iou in zip(self.class_names, scores["iou"].tolist()):
            metrics[f"IoU_{name}"] = iou
        return metrics
