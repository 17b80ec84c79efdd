"""Localization accuracy and mean IoU against hand-computed boxes."""

from __future__ import annotations

import pytest
import torch

from pansight.errors import DataError
from pansight.metrics import LocalizationMetric
from pansight.structures import Localization, Target


def result(label: int, box: list[float]) -> Localization:
    scores = torch.nn.functional.one_hot(torch.tensor(label), 3).float()
    return Localization(label, 1.0, torch.tensor(box), scores)


def target(label: int, box: list[float] | None) -> Target:
    return Target(
        image_id=0, size=(20, 20), label=label, box=None if box is None else torch.tensor(box)
    )


GROUND_TRUTH = [0.0, 0.0, 10.0, 10.0]


def test_class_and_iou_decide_localization_accuracy():
    metric = LocalizationMetric(num_classes=3)
    results = [
        result(0, [0.0, 0.0, 10.0, 10.0]),  # right class, IoU 1
        result(1, [0.0, 0.0, 10.0, 5.0]),  # right class, IoU 50 / 100 = 0.5 (counts)
        result(2, [0.0, 0.0, 10.0, 10.0]),  # wrong class, IoU 1
        result(0, [5.0, 0.0, 15.0, 10.0]),  # right class, IoU 50 / 150 = 1/3
    ]
    targets = [target(0, GROUND_TRUTH), target(1, GROUND_TRUTH), target(1, GROUND_TRUTH)]
    metric.update(results[:3], targets)
    metric.update(results[3:], [target(0, GROUND_TRUTH)])
    assert metric.compute() == {
        "top1": pytest.approx(3 / 4),
        "loc_accuracy": pytest.approx(2 / 4),
        "mean_iou": pytest.approx((1 + 0.5 + 1 + 1 / 3) / 4),
    }


def test_disjoint_boxes_have_zero_iou():
    metric = LocalizationMetric(num_classes=3)
    metric.update([result(0, [12.0, 12.0, 20.0, 20.0])], [target(0, GROUND_TRUTH)])
    assert metric.compute() == {"top1": 1.0, "loc_accuracy": 0.0, "mean_iou": 0.0}


def test_update_names_an_image_without_a_box():
    metric = LocalizationMetric(num_classes=3)
    with pytest.raises(DataError, match="image 0: the target has no box"):
        metric.update([result(0, GROUND_TRUTH)], [target(0, None)])


def test_update_needs_one_result_per_target():
    metric = LocalizationMetric(num_classes=3)
    with pytest.raises(ValueError, match="2 results for 1 targets"):
        metric.update([result(0, GROUND_TRUTH)] * 2, [target(0, GROUND_TRUTH)])
