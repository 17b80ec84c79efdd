"""Metrics: accumulate results against targets batch by batch, then compute named numbers.

Every metric has ``update(results, targets)``, ``compute() -> dict[str, float]``, ``reset()``
and ``primary``, the name of the number that ranks checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

from pansight.config import TASKS
from pansight.errors import ConfigError
from pansight.metrics.classification import ClassificationMetric
from pansight.metrics.coco import CocoMetric
from pansight.metrics.localization import LocalizationMetric
from pansight.metrics.panoptic import PanopticMetric
from pansight.metrics.semantic import SemanticMetric
from pansight.metrics.video import VideoMaskMetric

Metric = ClassificationMetric | LocalizationMetric | CocoMetric | SemanticMetric | PanopticMetric

__all__ = [
    "ClassificationMetric",
    "CocoMetric",
    "LocalizationMetric",
    "Metric",
    "PanopticMetric",
    "SemanticMetric",
    "VideoMaskMetric",
    "build_metric",
]


def build_metric(
    task: str, class_names: list[str], thing_flags: Sequence[bool] | None = None
) -> Metric:
    """The metric of ``task`` over the labels ``0..len(class_names)-1``; ``panoptic`` also needs
    ``thing_flags``, whether each class is a thing (else stuff).

    Video mask AP (:class:`VideoMaskMetric`) scores clips, not images: see
    :func:`pansight.engine.video_evaluator.evaluate_video`.
    """
    if task == "classify":
        return ClassificationMetric(len(class_names))
    if task == "localize":
        return LocalizationMetric(len(class_names))
    if task == "detect":
        return CocoMetric(len(class_names), iou_types=("bbox",))
    if task == "instance":
        return CocoMetric(len(class_names), iou_types=("bbox", "segm"))
    if task == "semantic":
        return SemanticMetric(class_names)
    if task == "panoptic":
        if thing_flags is None or len(thing_flags) != len(class_names):
            raise ConfigError(
                f"the panoptic metric needs one thing flag per class ({len(class_names)}), "
                f"got {thing_flags}"
            )
        return PanopticMetric(class_names, [bool(flag) for flag in thing_flags])
    if task in TASKS:
        raise ConfigError(f"no metric for task {task!r} yet")
    raise ConfigError(f"task={task!r} is unknown; choose one of {', '.join(TASKS)}")
