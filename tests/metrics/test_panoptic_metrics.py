"""Panoptic quality: hand-built cases (IoU threshold, void, crowd, absent classes) and agreement
with a per-segment reference in panopticapi's style on perturbed synthetic-world images."""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pansight.data.shapes import ALL_CLASSES, THING_FLAGS
from pansight.errors import DataError
from pansight.metrics.panoptic import SUMMARY_KEYS, PanopticMetric, image_counts
from pansight.structures import PanopticMap, Segment, Target

NAMES = ["person", "car", "sky", "road"]
IS_THING = [True, True, False, False]
PERSON, CAR, SKY, ROAD = range(4)
BENCH = Path(__file__).parents[2] / "bench" / "panoptic_eval.py"


def load_bench():
    """``bench/panoptic_eval.py`` as a module (its sibling helpers importable, as when it runs
    from ``bench/``)."""
    if str(BENCH.parent) not in sys.path:
        sys.path.append(str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("panoptic_eval", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def panoptic(ids: np.ndarray, labels: dict[int, int], crowd: tuple[int, ...] = ()) -> PanopticMap:
    """A map of ``ids``; ``labels[id]`` for each listed segment (listed segments may be absent)."""
    segments = [
        Segment(id, label, IS_THING[label], int((ids == id).sum()), iscrowd=id in crowd)
        for id, label in labels.items()
    ]
    return PanopticMap(torch.as_tensor(ids, dtype=torch.int64), segments)


def evaluate(*pairs: tuple[PanopticMap, PanopticMap], names=NAMES, is_thing=IS_THING):
    metric = PanopticMetric(names, is_thing)
    for image_id, (truth, prediction) in enumerate(pairs):
        target = Target(image_id=image_id, size=tuple(truth.ids.shape), panoptic=truth)
        metric.update([prediction], [target])
    return metric


def counts_of(metric: PanopticMetric, label: int) -> tuple[int, int, int]:
    return int(metric.counts.tp[label]), int(metric.counts.fp[label]), int(metric.counts.fn[label])


def person_over_sky(person_pixels: int) -> tuple[PanopticMap, PanopticMap]:
    """10x20 image: ground-truth person on the left 10x10 half, sky on the right; the prediction
    has a person on the first ``person_pixels`` of the person's pixels (row-major), sky
    elsewhere."""
    truth = np.full((10, 20), 2)
    truth[:, :10] = 1
    predicted = np.full((10, 20), 8)
    rows, cols = np.nonzero(truth == 1)
    predicted[rows[:person_pixels], cols[:person_pixels]] = 7
    return panoptic(truth, {1: PERSON, 2: SKY}), panoptic(predicted, {7: PERSON, 8: SKY})


def test_perfect_match_scores_one_whatever_the_ids():
    ids = np.array([[1, 1, 3, 3], [1, 2, 2, 3], [4, 4, 4, 4]])
    truth = panoptic(ids, {1: PERSON, 2: CAR, 3: SKY, 4: ROAD})
    prediction = panoptic(ids * 1000 + 7, {1007: PERSON, 2007: CAR, 3007: SKY, 4007: ROAD})
    scores = evaluate((truth, prediction)).compute()
    assert set(scores) == set(SUMMARY_KEYS) | {f"PQ_{name}" for name in NAMES}
    assert all(scores[key] == 1.0 for key in scores)


def test_iou_just_above_half_is_a_true_positive_with_that_sq():
    metric = evaluate(person_over_sky(51))
    scores = metric.compute()
    assert counts_of(metric, PERSON) == (1, 0, 0)
    assert scores["PQ_person"] == pytest.approx(0.51)
    # sky: 100 true pixels inside 149 predicted ones.
    assert scores["PQ_sky"] == pytest.approx(100 / 149)
    assert scores["SQ_th"] == pytest.approx(0.51) and scores["RQ_th"] == 1.0
    assert scores["PQ"] == pytest.approx((0.51 + 100 / 149) / 2)


def test_iou_of_exactly_half_or_less_is_a_false_positive_and_a_false_negative():
    for person_pixels in (50, 49):
        metric = evaluate(person_over_sky(person_pixels))
        assert counts_of(metric, PERSON) == (0, 1, 1)
        scores = metric.compute()
        assert scores["PQ_person"] == 0.0 and scores["SQ_th"] == 0.0 and scores["RQ_th"] == 0.0


def test_void_pixels_are_left_out_of_the_union():
    # the person covers the top half; the bottom half is void. The predicted person covers the
    # whole image: IoU 0.5 counting void, 1.0 without it.
    truth = np.zeros((10, 10), dtype=np.int64)
    truth[:5] = 1
    prediction = np.full((10, 10), 5)
    metric = evaluate((panoptic(truth, {1: PERSON}), panoptic(prediction, {5: PERSON})))
    assert counts_of(metric, PERSON) == (1, 0, 0)
    assert metric.compute()["PQ_person"] == 1.0


@pytest.mark.parametrize("on_void, false_positives", [(16, 0), (15, 1), (0, 1)])
def test_prediction_mostly_on_void_is_not_a_false_positive(on_void, false_positives):
    truth = np.full((10, 10), 1)
    truth[:, :3] = 0  # void: columns 0..2
    prediction = np.full((10, 10), 2)
    car_pixels = np.zeros((10, 10), dtype=bool)
    car_pixels.flat[np.flatnonzero(truth.ravel() == 0)[:on_void]] = True
    car_pixels.flat[np.flatnonzero(truth.ravel() == 1)[: 30 - on_void]] = True
    prediction[car_pixels] = 3
    metric = evaluate((panoptic(truth, {1: SKY}), panoptic(prediction, {2: SKY, 3: CAR})))
    assert counts_of(metric, CAR) == (0, false_positives, 0)
    scores = metric.compute()
    assert math.isnan(scores["PQ_car"]) if false_positives == 0 else scores["PQ_car"] == 0.0


def test_crowd_regions_are_never_matched_missed_or_false_positives():
    truth = np.full((10, 10), 9)  # sky
    truth[:3] = 1  # crowd of people: 30 pixels
    truth[8:, :5] = 2  # one person: 10 pixels
    truth_map = panoptic(truth, {1: PERSON, 2: PERSON, 9: SKY}, crowd=(1,))
    prediction = np.full((10, 10), 19)
    prediction[:3, :8] = 11  # a person over 24 crowd pixels: not a false positive
    prediction[3, :6] = 11  # ... and 6 sky pixels (24 / 30 on crowd)
    prediction[8:, :5] = 12  # the single person, exactly
    labels = {11: PERSON, 12: PERSON, 19: SKY}
    metric = evaluate((truth_map, panoptic(prediction, labels)))
    assert counts_of(metric, PERSON) == (1, 0, 0)

    # the crowd of another category does not excuse a prediction: a car there is a FP.
    metric = evaluate((truth_map, panoptic(prediction, labels | {11: CAR})))
    assert counts_of(metric, PERSON) == (1, 0, 0)
    assert counts_of(metric, CAR) == (0, 1, 0)

    # predicting the crowd region exactly matches nothing and costs nothing.
    exact = np.where(truth == 1, 11, np.where(truth == 2, 12, 19))
    metric = evaluate((truth_map, panoptic(exact, labels)))
    assert counts_of(metric, PERSON) == (1, 0, 0)


def test_classes_without_truth_or_prediction_are_left_out_and_predicted_only_ones_count_zero():
    truth = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    prediction = np.array([[5, 5, 6, 7], [5, 5, 6, 6]])
    metric = evaluate(
        (panoptic(truth, {1: PERSON, 2: SKY}), panoptic(prediction, {5: PERSON, 6: SKY, 7: CAR}))
    )
    scores = metric.compute()
    assert math.isnan(scores["PQ_road"])
    assert scores["PQ_car"] == 0.0 and counts_of(metric, CAR) == (0, 1, 0)
    assert scores["PQ_person"] == 1.0 and scores["PQ_sky"] == pytest.approx(3 / 4)
    assert scores["PQ"] == pytest.approx((1.0 + 0.0 + 3 / 4) / 3)
    assert scores["PQ_th"] == pytest.approx(0.5) and scores["PQ_st"] == pytest.approx(3 / 4)
    assert scores["SQ_th"] == pytest.approx(0.5) and scores["RQ_th"] == pytest.approx(0.5)


def test_listed_segments_without_pixels_are_left_out():
    ids = np.array([[1, 1], [2, 2]])
    truth = panoptic(ids, {1: PERSON, 2: SKY, 3: CAR})
    prediction = panoptic(ids, {1: PERSON, 2: SKY, 4: ROAD})
    metric = evaluate((truth, prediction))
    assert metric.counts.fp.sum() == 0 and metric.counts.fn.sum() == 0
    assert metric.compute()["PQ"] == 1.0


def test_nothing_counted_gives_nan_and_reset_clears():
    metric = PanopticMetric(NAMES, IS_THING)
    assert all(math.isnan(value) for value in metric.compute().values())
    metric = evaluate(person_over_sky(51))
    metric.reset()
    assert metric.counts.tp.sum() == 0 and math.isnan(metric.compute()["PQ"])
    assert PanopticMetric.primary == "PQ"


def renumbered(panoptic: PanopticMap, new_id) -> PanopticMap:
    ids = torch.where(panoptic.ids > 0, new_id(panoptic.ids), 0)
    segments = [replace(segment, id=int(new_id(segment.id))) for segment in panoptic.segments]
    return PanopticMap(ids, segments)


@pytest.mark.parametrize(
    "new_id",
    [
        lambda i: i * 7919 + 2**23,  # large ids: a table on their low bits
        lambda i: (i << 14) + 5,  # equal low bits: a binary search
        lambda i: i + 100,  # small ids: a table on all bits
    ],
)
def test_segment_id_values_do_not_change_the_counts(new_id):
    bench = load_bench()
    truth, prediction = bench.bench_pairs(1, 48, 4, seed=3)[0]
    expected = image_counts(truth, prediction, len(ALL_CLASSES))
    counts = image_counts(
        renumbered(truth, new_id), renumbered(prediction, new_id), len(ALL_CLASSES)
    )
    for field in ("tp", "fp", "fn", "iou"):
        np.testing.assert_array_equal(getattr(counts, field), getattr(expected, field))
    assert expected.tp.sum() > 0 and expected.fp.sum() + expected.fn.sum() > 0


def test_agrees_with_the_per_segment_reference_on_perturbed_synthetic_images():
    bench = load_bench()
    pairs = bench.bench_pairs(40, 64, 5, seed=1)
    names, flags = list(ALL_CLASSES), list(THING_FLAGS)
    stats = bench.reference_statistics(pairs)
    metric = PanopticMetric(names, flags)
    for truth, prediction in pairs:
        metric.update([prediction], [Target(image_id=0, size=(64, 64), panoptic=truth)])
    for label in range(len(names)):
        expected = stats.get(label, {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0})
        assert counts_of(metric, label) == (expected["tp"], expected["fp"], expected["fn"])
        assert metric.counts.iou[label] == pytest.approx(expected["iou"], rel=1e-12)
    ours, reference = metric.compute(), bench.reference_scores(pairs, names, flags)
    assert bench.same_scores(ours, reference)
    assert 0.2 < ours["PQ"] < 0.9 and metric.counts.fp.sum() > 0 and metric.counts.fn.sum() > 0


def test_a_worker_pool_gives_the_same_scores():
    bench = load_bench()
    pairs = bench.bench_pairs(12, 48, 4, seed=2)
    names, flags = list(ALL_CLASSES), list(THING_FLAGS)
    metric = PanopticMetric(names, flags, workers=2)
    for start in range(0, len(pairs), 3):
        chunk = pairs[start : start + 3]
        targets = [Target(image_id=0, size=(48, 48), panoptic=truth) for truth, _ in chunk]
        metric.update([prediction for _, prediction in chunk], targets)
    assert bench.same_scores(metric.compute(), bench.reference_scores(pairs, names, flags))
    assert metric._pool is None


def test_unusable_pairs_raise_data_error_naming_the_image():
    ids = np.array([[1, 1], [2, 2]])
    truth = panoptic(ids, {1: PERSON, 2: SKY})
    metric = PanopticMetric(NAMES, IS_THING)
    cases = [
        (panoptic(ids, {1: PERSON}), r"image 4: prediction: pixels carry segment ids \[2\]"),
        (panoptic(np.zeros((3, 2)), {}), r"image 4: prediction is \(3, 2\)"),
        (
            panoptic(ids * 10**6, {10**6: PERSON}),
            r"prediction: pixels carry segment ids \[2000000\]",
        ),
        (panoptic(-ids, {1: PERSON}), "image 4: prediction: the map holds negative segment ids"),
    ]
    for prediction, message in cases:
        with pytest.raises(DataError, match=message):
            metric.update([prediction], [Target(image_id=4, size=(2, 2), panoptic=truth)])
    for segments, message in (
        ([Segment(1, PERSON, True, 2), Segment(1, SKY, False, 2)], "a segment id is listed twice"),
        ([Segment(1, PERSON, True, 2), Segment(2, 7, False, 2)], "a segment label is outside 0..3"),
        ([Segment(0, PERSON, True, 2)], r"segment ids must be positive \(0 is void\)"),
    ):
        prediction = PanopticMap(torch.as_tensor(ids), segments)
        with pytest.raises(DataError, match=f"image 4: prediction: {message}"):
            metric.update([prediction], [Target(image_id=4, size=(2, 2), panoptic=truth)])
    with pytest.raises(DataError, match="image 5: the target has no panoptic map"):
        metric.update([truth], [Target(image_id=5, size=(2, 2))])
    with pytest.raises(ValueError, match="4 class names but 3 is_thing flags"):
        PanopticMetric(NAMES, IS_THING[:3])
