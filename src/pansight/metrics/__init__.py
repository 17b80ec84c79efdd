"""Metrics: accumulate results against targets batch by batch, then compute named numbers.

Every metric has ``update(results, targets)``, ``compute() -> dict[str, float]``, ``reset()``
and ``primary``, the name of the number that ranks checkpoints.
"""

from __future__ import annotations

from pansight.config import TASKS
from pansight.errors import ConfigError
from pansight.metrics.classification import ClassificationMetric
from pansight.metrics.coco import CocoMetric
from pansight.metrics.localization import LocalizationMetric
from pansight.metrics.semantic import SemanticMetric

Metric = ClassificationMetric | LocalizationMetric | CocoMetric | SemanticMetric

__all__ = [
    "ClassificationMetric",
    "CocoMetric",
    "LocalizationMetric",
    "Metric",
    "SemanticMetric",
    "build_metric",
]


def build_metric(task: str, class_names: list[str]) -> Metric:
    """The metric of ``task`` over the labels ``0..len(class_names)-1``."""
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
    if task in TASKS:
        raise ConfigError(f"no metric for task {task!r} yet")
    raise ConfigError(f"task={task!r} is unknown; choose one of {', '.join(TASKS)}")
