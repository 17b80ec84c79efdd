"""Top-1 / top-5 accuracy against hand-counted cases."""

from __future__ import annotations

import math

import pytest
import torch

from pansight.errors import ConfigError, DataError
from pansight.metrics import ClassificationMetric, LocalizationMetric, build_metric
from pansight.structures import Classification, Target


def result(scores: list[float]) -> Classification:
    tensor = torch.tensor(scores)
    return Classification(int(tensor.argmax()), float(tensor.max()), tensor)


def target(label: int | None, image_id: int = 0) -> Target:
    return Target(image_id=image_id, size=(8, 8), label=label)


# Seven classes; scores rank the classes of each row as the comment says.
ROWS = [
    ([0.40, 0.20, 0.10, 0.10, 0.10, 0.05, 0.05], 0),  # right: rank 1
    ([0.05, 0.30, 0.25, 0.20, 0.10, 0.06, 0.04], 4),  # rank 4: top-5 only
    ([0.30, 0.25, 0.20, 0.15, 0.06, 0.03, 0.01], 6),  # rank 7: wrong in both
    ([0.10, 0.10, 0.50, 0.10, 0.10, 0.05, 0.05], 2),  # right: rank 1
    ([0.50, 0.20, 0.15, 0.08, 0.04, 0.02, 0.01], 4),  # rank 5: top-5 only
]


def test_top1_and_top5_over_two_batches():
    metric = ClassificationMetric(num_classes=7)
    metric.update([result(s) for s, _ in ROWS[:2]], [target(label) for _, label in ROWS[:2]])
    metric.update([result(s) for s, _ in ROWS[2:]], [target(label) for _, label in ROWS[2:]])
    assert metric.compute() == {"top1": pytest.approx(2 / 5), "top5": pytest.approx(4 / 5)}


def test_per_class_accuracy_and_reset():
    metric = ClassificationMetric(num_classes=7)
    metric.update([result(s) for s, _ in ROWS], [target(label) for _, label in ROWS])
    per_class = metric.per_class_accuracy()
    assert per_class[0] == 1.0 and per_class[2] == 1.0 and per_class[4] == 0.0
    assert per_class[6] == 0.0 and math.isnan(per_class[1])
    metric.reset()
    assert all(math.isnan(value) for value in metric.compute().values())


def test_top5_with_fewer_than_five_classes_counts_every_label():
    metric = ClassificationMetric(num_classes=3)
    metric.update([result([0.2, 0.5, 0.3])], [target(0)])
    assert metric.compute() == {"top1": 0.0, "top5": 1.0}


def test_update_names_an_image_without_a_valid_label():
    metric = ClassificationMetric(num_classes=3)
    with pytest.raises(DataError, match="image 4: label None"):
        metric.update([result([1.0, 0.0, 0.0])], [target(None, image_id=4)])
    with pytest.raises(DataError, match="image 2: label 3 is not in 0..2"):
        metric.update([result([1.0, 0.0, 0.0])], [target(3, image_id=2)])


def test_build_metric_by_task():
    assert isinstance(build_metric("classify", ["a", "b"]), ClassificationMetric)
    assert isinstance(build_metric("localize", ["a", "b"]), LocalizationMetric)
    assert build_metric("localize", ["a", "b", "c"]).num_classes == 3
    with pytest.raises(ConfigError, match="task='count' is unknown"):
        build_metric("count", ["a"])
