"""COCO box / mask AP against hand-computed cases and pycocotools run on JSON files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pansight.data.shapes import ShapesDataset
from pansight.errors import ConfigError, DataError
from pansight.metrics import CocoMetric, build_metric
from pansight.metrics.coco import STAT_NAMES
from pansight.structures import Detections, Target

SIZE = (64, 64)


def rectangle(x1: int, y1: int, x2: int, y2: int) -> torch.Tensor:
    """``(H, W)`` bool mask of the pixels in columns ``x1..x2-1`` and rows ``y1..y2-1``."""
    mask = torch.zeros(SIZE, dtype=torch.bool)
    mask[y1:y2, x1:x2] = True
    return mask


def outline(x1: int, y1: int, x2: int, y2: int, width: int = 2) -> torch.Tensor:
    """A hollow frame: box area ``(x2-x1)*(y2-y1)``, much smaller mask area."""
    return rectangle(x1, y1, x2, y2) & ~rectangle(x1 + width, y1 + width, x2 - width, y2 - width)


def stacked(masks: list[torch.Tensor] | None) -> torch.Tensor | None:
    """``(N, H, W)`` masks of a list of ``(H, W)`` ones (``[]``: no objects)."""
    if masks is None:
        return None
    return torch.stack(masks) if masks else torch.zeros(0, *SIZE, dtype=torch.bool)


def target(boxes, masks=None, labels=None, iscrowd=None, image_id: int = 0) -> Target:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return Target(
        image_id=image_id,
        size=SIZE,
        boxes=boxes,
        labels=torch.zeros(len(boxes), dtype=torch.int64) if labels is None else labels,
        masks=stacked(masks),
        iscrowd=None if iscrowd is None else torch.tensor(iscrowd),
    )


def detections(boxes, scores, masks=None, labels=None) -> Detections:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return Detections(
        boxes=boxes,
        scores=torch.tensor(scores, dtype=torch.float32),
        labels=torch.zeros(len(boxes), dtype=torch.int64) if labels is None else labels,
        masks=stacked(masks),
    )


def instance_metric() -> CocoMetric:
    return CocoMetric(num_classes=3, iou_types=("bbox", "segm"))


def test_ground_truth_as_predictions_gives_ap_one():
    metric = build_metric("instance", ShapesDataset.class_names)
    dataset = ShapesDataset(split="val", mode="multi", num_images=4, image_size=64)
    targets = [dataset[i][1] for i in range(len(dataset))]
    results = [Detections(t.boxes, torch.ones(len(t.labels)), t.labels, t.masks) for t in targets]
    metric.update(results, targets)
    values = metric.compute()
    for prefix in ("box", "mask"):
        for name in ("AP", "AP50", "AP75", "AR10", "AR100"):
            assert values[f"{prefix}_{name}"] == pytest.approx(1.0), f"{prefix}_{name}"


def test_iou_of_exactly_0_6_matches_three_of_ten_thresholds():
    # ground truth: 10 x 10 at the corner; prediction: its left 6 columns, IoU 60 / 100
    metric = instance_metric()
    gt = target([0, 0, 10, 10], [rectangle(0, 0, 10, 10)])
    prediction = detections([0, 0, 6, 10], [0.9], [rectangle(0, 0, 6, 10)])
    metric.update([prediction], [gt])
    values = metric.compute()
    for prefix in ("box", "mask"):
        # matched at IoU thresholds 0.5, 0.55, 0.6: AP 1 there, 0 at the seven others
        assert values[f"{prefix}_AP"] == pytest.approx(0.3)
        assert values[f"{prefix}_AP50"] == pytest.approx(1.0)
        assert values[f"{prefix}_AP75"] == 0.0
        assert values[f"{prefix}_APs"] == pytest.approx(0.3)  # area 100 < 32**2: small
        assert values[f"{prefix}_APm"] == -1.0  # no medium object to count
        assert values[f"{prefix}_APl"] == -1.0


def test_101_point_interpolation_of_a_false_positive_ranked_first():
    metric = CocoMetric(num_classes=1)
    gt = target([[0, 0, 10, 10], [20, 20, 30, 30]])
    # the higher score misses everything; the lower one finds one of the two objects
    prediction = detections([[40, 40, 50, 50], [0, 0, 10, 10]], [0.9, 0.5])
    metric.update([prediction], [gt])
    values = metric.compute()
    # recall reaches 0.5 with precision 1/2: recall points 0.00..0.50 (51 of 101) score 0.5
    expected = 51 * 0.5 / 101
    assert values["box_AP"] == pytest.approx(expected)
    assert values["box_AP50"] == pytest.approx(expected)
    assert values["box_AR100"] == pytest.approx(0.5)
    assert values["box_AR1"] == 0.0  # the first prediction alone finds nothing


def test_detections_inside_a_crowd_region_are_ignored():
    boxes = [[0, 0, 10, 10], [20, 0, 40, 20]]
    masks = [rectangle(0, 0, 10, 10), rectangle(20, 0, 40, 20)]
    # a confident prediction inside the second region, an exact one on the first object
    prediction = detections(
        [[22, 2, 32, 12], [0, 0, 10, 10]], [0.9, 0.5], [rectangle(22, 2, 32, 12), masks[0]]
    )
    crowd, plain = instance_metric(), instance_metric()
    crowd.update([prediction], [target(boxes, masks, iscrowd=[False, True])])
    plain.update([prediction], [target(boxes, masks, iscrowd=[False, False])])
    for key in ("box_AP", "mask_AP"):
        assert crowd.compute()[key] == pytest.approx(1.0)
        assert plain.compute()[key] < 0.5


def test_object_area_comes_from_the_mask_when_there_is_one():
    # a hollow 40 x 40 frame: box area 1600 (medium), mask area 304 (small)
    box, frame = [0, 0, 40, 40], outline(0, 0, 40, 40)
    with_mask, box_only = CocoMetric(num_classes=1), CocoMetric(num_classes=1)
    with_mask.update([detections(box, [1.0])], [target(box, [frame])])
    box_only.update([detections(box, [1.0])], [target(box)])
    by_mask, by_box = with_mask.compute(), box_only.compute()
    assert (by_mask["box_APs"], by_mask["box_APm"]) == (pytest.approx(1.0), -1.0)
    assert (by_box["box_APs"], by_box["box_APm"]) == (-1.0, pytest.approx(1.0))


def test_predicted_mask_area_comes_from_the_mask_not_its_box():
    metric = instance_metric()
    gt = target([50, 50, 60, 60], [rectangle(50, 50, 60, 60)])
    # a confident miss whose mask is small (304 pixels) although its box is medium
    prediction = detections(
        [[0, 0, 40, 40], [50, 50, 60, 60]],
        [0.9, 0.5],
        [outline(0, 0, 40, 40), rectangle(50, 50, 60, 60)],
    )
    metric.update([prediction], [gt])
    # the miss counts among small objects: precision 1/2 at full recall
    assert metric.compute()["mask_APs"] == pytest.approx(0.5)


def test_no_predictions_give_zero_and_no_ground_truth_gives_minus_one():
    dataset = ShapesDataset(split="val", mode="multi", num_images=3, image_size=64)
    targets = [dataset[i][1] for i in range(len(dataset))]
    nothing = detections([], [], [])
    metric = build_metric("instance", dataset.class_names)
    metric.update([nothing] * len(targets), targets)
    values = metric.compute()
    assert values["box_AP"] == values["mask_AP"] == values["box_AR100"] == 0.0
    empty = instance_metric()
    assert set(empty.compute().values()) == {-1.0}
    empty.update([nothing], [target([], [])])
    assert set(empty.compute().values()) == {-1.0}


def test_build_metric_names_box_ap_for_detect_and_mask_ap_for_instance():
    detect = build_metric("detect", ["a", "b"])
    instance = build_metric("instance", ["a", "b"])
    assert (detect.primary, detect.iou_types) == ("box_AP", ("bbox",))
    assert (instance.primary, instance.iou_types) == ("mask_AP", ("bbox", "segm"))
    detect.update([detections([0, 0, 10, 10], [1.0])], [target([0, 0, 10, 10])])
    assert list(detect.compute()) == [f"box_{name}" for name in STAT_NAMES]
    assert "Average Precision" in detect.summary() and "box (bbox)" in detect.summary()


def test_bad_inputs_raise_errors_naming_the_problem():
    box = [0, 0, 10, 10]
    with pytest.raises(DataError, match="image 7: mask AP needs masks"):
        instance_metric().update([detections(box, [1.0])], [target(box, image_id=7)])
    with pytest.raises(DataError, match="image 0: labels must be in 0..2"):
        instance_metric().update(
            [detections(box, [1.0], [rectangle(*box)])],
            [target(box, [rectangle(*box)], labels=torch.tensor([3]))],
        )
    with pytest.raises(ValueError, match="no masks"):
        instance_metric().update([detections(box, [1.0])], [target(box, [rectangle(*box)])])
    with pytest.raises(ValueError, match="1 results for 2 targets"):
        CocoMetric(3).update([detections(box, [1.0])], [target(box), target(box)])
    with pytest.raises(ConfigError, match="iou_types"):
        CocoMetric(3, iou_types=("keypoints",))
    with pytest.raises(ConfigError, match="2 category_ids for 3 classes"):
        CocoMetric(3, category_ids=[1, 2])


# ---- against pycocotools reading JSON files -------------------------------------------------

CATEGORY_IDS = [1, 3, 5, 7, 9]


def synthetic_case() -> tuple[list[Target], list[Detections]]:
    """Ten pictures of the synthetic world, one emptied and one with a crowd region, and jittered,
    sometimes mislabelled copies of their objects plus one stray prediction each."""
    dataset = ShapesDataset(split="val", mode="multi", num_images=10, image_size=64, seed=3)
    targets = [dataset[i][1] for i in range(len(dataset))]
    targets[3] = target([], [], image_id=3)
    crowd = torch.zeros(len(targets[5].labels), dtype=torch.bool)
    crowd[0] = True
    targets[5] = replace(targets[5], iscrowd=crowd)
    generator = torch.Generator().manual_seed(0)
    return targets, [jittered(t, generator) for t in targets]


def jittered(gt: Target, generator: torch.Generator) -> Detections:
    count = len(gt.labels) + 1
    stray = torch.tensor([[30.0, 30.0, 50.0, 46.0]])
    noise = torch.randn(count, 4, generator=generator) * 2
    # quarter pixels are exact in binary, so JSON and tensors hold the same numbers
    boxes = (torch.cat([gt.boxes, stray]) + noise).mul(4).round().div(4).clamp(0, 64)
    labels = torch.cat([gt.labels, torch.tensor([2])])
    relabel = torch.rand(count, generator=generator) < 0.2
    labels[relabel] = torch.randint(0, 5, (int(relabel.sum()),), generator=generator)
    masks = torch.cat([gt.masks, rectangle(30, 30, 50, 46)[None]])
    shifts = torch.randint(-2, 3, (count, 2), generator=generator).tolist()
    masks = torch.stack([m.roll(tuple(s), dims=(0, 1)) for m, s in zip(masks, shifts)])
    return Detections(boxes, torch.rand(count, generator=generator), labels, masks)


def reference_stats(
    tmp_path: Path, targets: list[Target], results: list[Detections], iou_type: str
) -> np.ndarray:
    images, annotations, predictions = [], [], []
    for image_id, (gt, result) in enumerate(zip(targets, results), start=1):
        images.append({"id": image_id, "height": SIZE[0], "width": SIZE[1]})
        crowd = [False] * len(gt.labels) if gt.iscrowd is None else gt.iscrowd.tolist()
        for box, label, mask, is_crowd in zip(gt.boxes.tolist(), gt.labels, gt.masks, crowd):
            rle = encode(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[int(label)],
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "area": float(mask_utils.area(rle)),
                    "iscrowd": int(is_crowd),
                    "segmentation": rle,
                }
            )
        for box, label, score, mask in zip(
            result.boxes.tolist(), result.labels, result.scores, result.masks
        ):
            record = {"image_id": image_id, "category_id": CATEGORY_IDS[int(label)]}
            record["score"] = float(score)
            if iou_type == "bbox":
                record["bbox"] = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            else:
                record["segmentation"] = encode(mask)
            predictions.append(record)
    categories = [{"id": cid, "name": f"c{cid}"} for cid in CATEGORY_IDS]
    gt_file, results_file = tmp_path / "gt.json", tmp_path / f"{iou_type}.json"
    coco_file = {"images": images, "annotations": annotations, "categories": categories}
    gt_file.write_text(json.dumps(coco_file))
    results_file.write_text(json.dumps(predictions))
    ground_truth = COCO(str(gt_file))
    evaluator = COCOeval(ground_truth, ground_truth.loadRes(str(results_file)), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats


def encode(mask: torch.Tensor) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def test_matches_pycocotools_on_json_files(tmp_path):
    targets, results = synthetic_case()
    metric = CocoMetric(5, iou_types=("bbox", "segm"), category_ids=CATEGORY_IDS)
    metric.update(results[:5], targets[:5])
    # a second batch whose image ids repeat the first's: each target is still a new image
    second = [replace(t, image_id=i) for i, t in enumerate(targets[5:])]
    metric.update(results[5:], second)
    values = metric.compute()
    for iou_type, prefix in (("bbox", "box"), ("segm", "mask")):
        expected = reference_stats(tmp_path, targets, results, iou_type)
        ours = [values[f"{prefix}_{name}"] for name in STAT_NAMES]
        assert ours == expected.tolist(), iou_type
        assert 0.2 < values[f"{prefix}_AP"] < 0.9  # a case with something to get right or wrong
