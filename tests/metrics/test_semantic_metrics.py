"""Confusion matrix, IoU, mIoU, pixel accuracy and frequency-weighted IoU, checked by hand and
against scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from sklearn.metrics import jaccard_score

from pansight.errors import DataError
from pansight.metrics import SemanticMetric, build_metric
from pansight.metrics.semantic import confusion_matrix
from pansight.structures import IGNORE_LABEL, SemanticMap, Target

NAMES = ["sky", "road", "car"]


def target(semantic: list[list[int]], image_id: int = 0) -> Target:
    labels = torch.tensor(semantic)
    return Target(image_id=image_id, size=tuple(labels.shape), semantic=labels)


def result(labels: list[list[int]]) -> SemanticMap:
    return SemanticMap(torch.tensor(labels))


def test_hand_computed_case():
    truth = [[0, 0, 1, 1], [0, 2, 2, IGNORE_LABEL]]
    predicted = [[0, 1, 1, 1], [0, 2, 0, 2]]
    metric = SemanticMetric(NAMES)
    metric.update([result(predicted)], [target(truth)])
    # counted pixels: 7. sky: TP 2, FP 1, FN 1 -> 2/4. road: TP 2, FP 1 -> 2/3. car: TP 1, FN 1.
    assert metric.confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
    scores = metric.compute()
    assert scores["IoU_sky"] == pytest.approx(0.5)
    assert scores["IoU_road"] == pytest.approx(2 / 3)
    assert scores["IoU_car"] == pytest.approx(0.5)
    assert scores["mIoU"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(5 / 7)
    assert scores["mean_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert scores["fw_IoU"] == pytest.approx((3 * 0.5 + 2 * 2 / 3 + 2 * 0.5) / 7)
    assert metric.primary == "mIoU"


def test_matches_scikit_learn_on_random_maps():
    generator = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 5, (3, 20, 30), generator=generator)
    truth[truth == 4] = IGNORE_LABEL
    predicted = torch.randint(0, 4, (3, 20, 30), generator=generator)
    metric = SemanticMetric(["a", "b", "c", "d"])
    for index in range(3):  # three batches of one image
        metric.update(
            [SemanticMap(predicted[index])], [Target(index, (20, 30), semantic=truth[index])]
        )
    kept = (truth != IGNORE_LABEL).numpy()
    true_pixels, predicted_pixels = truth.numpy()[kept], predicted.numpy()[kept]
    expected = sklearn_confusion_matrix(true_pixels, predicted_pixels, labels=range(4))
    np.testing.assert_array_equal(metric.confusion.numpy(), expected)
    ious = jaccard_score(true_pixels, predicted_pixels, labels=range(4), average=None)
    scores = metric.compute()
    for name, iou in zip("abcd", ious):
        assert scores[f"IoU_{name}"] == pytest.approx(iou)
    assert scores["mIoU"] == pytest.approx(ious.mean())
    assert scores["pixel_accuracy"] == pytest.approx((true_pixels == predicted_pixels).mean())


def test_ignored_pixels_never_count():
    truth = [[IGNORE_LABEL, IGNORE_LABEL], [0, 1]]
    first, second = SemanticMetric(NAMES), SemanticMetric(NAMES)
    first.update([result([[0, 0], [0, 1]])], [target(truth)])
    second.update([result([[2, 1], [0, 1]])], [target(truth)])
    assert torch.equal(first.confusion, second.confusion)
    assert first.compute()["pixel_accuracy"] == 1.0


def test_a_class_neither_present_nor_predicted_is_left_out_of_the_mean():
    metric = SemanticMetric(NAMES)
    metric.update([result([[0, 1], [1, 1]])], [target([[0, 1], [1, 0]])])
    scores = metric.compute()
    assert math.isnan(scores["IoU_car"])
    assert scores["mIoU"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_a_class_only_predicted_scores_zero():
    metric = SemanticMetric(NAMES)
    metric.update([result([[2, 1]])], [target([[0, 1]])])
    scores = metric.compute()
    assert scores["IoU_car"] == 0.0 and scores["IoU_sky"] == 0.0 and scores["IoU_road"] == 1.0
    assert scores["mIoU"] == pytest.approx(1 / 3)


def test_reset_and_empty():
    metric = SemanticMetric(NAMES)
    assert math.isnan(metric.compute()["mIoU"])
    metric.update([result([[0]])], [target([[0]])])
    metric.reset()
    assert metric.confusion.sum() == 0


def test_bad_inputs_name_the_image():
    metric = SemanticMetric(NAMES)
    with pytest.raises(DataError, match="image 5: prediction is \\(1, 2\\)"):
        metric.update([result([[0, 1]])], [target([[0], [1]], image_id=5)])
    with pytest.raises(DataError, match="image 6: a true label is outside 0..2"):
        metric.update([result([[0, 1]])], [target([[0, 9]], image_id=6)])
    with pytest.raises(DataError, match="image 7: the target has no semantic map"):
        metric.update([result([[0]])], [Target(image_id=7, size=(1, 1))])


def test_confusion_matrix_checks_its_inputs():
    with pytest.raises(ValueError, match="predicted label is outside 0..1"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 2]), num_classes=2)
    with pytest.raises(ValueError, match="truth"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), num_classes=2)


def test_build_metric_gives_the_semantic_metric():
    metric = build_metric("semantic", NAMES)
    assert isinstance(metric, SemanticMetric) and metric.class_names == NAMES
