"""Top-1 / top-5 accuracy of image classification, accumulated over batches."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from pansight.errors import DataError
from pansight.structures import Classification, Target

TOP_K = 5


class ClassificationMetric:
    """Accuracy of :class:`Classification` results against ``Target.label``.

    ``update`` with each batch, then ``compute``. ``top1`` counts ``result.label``; ``top5``
    counts the true label among the five highest ``result.scores`` (all of them when ``K <= 5``).
    """

    primary: ClassVar[str] = "top1"

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self._seen = torch.zeros(self.num_classes, dtype=torch.int64)
        self._top1_correct = torch.zeros(self.num_classes, dtype=torch.int64)
        self._top5_correct = 0

    def update(self, results: list[Classification], targets: list[Target]) -> None:
        """Count one batch: ``results[i]`` is the prediction for ``targets[i]``."""
        check_lengths(results, targets)
        if not results:
            return
        labels = image_labels(targets, self.num_classes)
        predicted = torch.tensor([result.label for result in results], dtype=torch.int64)
        scores = torch.stack([result.scores.detach().float().cpu() for result in results])
        if scores.shape[1] != self.num_classes:
            raise ValueError(f"results have {scores.shape[1]} scores, expected {self.num_classes}")
        top_k = scores.topk(min(TOP_K, self.num_classes), dim=1).indices
        self._seen += torch.bincount(labels, minlength=self.num_classes)
        correct_labels = labels[predicted == labels]
        self._top1_correct += torch.bincount(correct_labels, minlength=self.num_classes)
        self._top5_correct += int((top_k == labels[:, None]).any(dim=1).sum())

    def compute(self) -> dict[str, float]:
        """``{"top1", "top5"}`` fractions in ``[0, 1]`` (NaN before any update)."""
        total = int(self._seen.sum())
        if total == 0:
            return {"top1": float("nan"), "top5": float("nan")}
        return {
            "top1": int(self._top1_correct.sum()) / total,
            "top5": self._top5_correct / total,
        }

    def per_class_accuracy(self) -> list[float]:
        """Top-1 accuracy of each true class (NaN for a class with no images)."""
        return (self._top1_correct / self._seen).tolist()


def check_lengths(results: list, targets: list[Target]) -> None:
    if len(results) != len(targets):
        raise ValueError(f"{len(results)} results for {len(targets)} targets")


def image_labels(targets: list[Target], num_classes: int) -> Tensor:
    """``(N,)`` int64 ``Target.label`` of each target.

    Raises:
        DataError: naming the image, if a target has no label or one outside ``0..K-1``.
    """
    labels = []
    for target in targets:
        if target.label is None or not 0 <= target.label < num_classes:
            raise DataError(
                f"image {target.image_id}: label {target.label} is not in 0..{num_classes - 1}"
            )
        labels.append(target.label)
    return torch.tensor(labels, dtype=torch.int64)
