"""COCO panoptic files: write -> read round trips, PQ from files, and errors naming the file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pansight.data.coco import write_coco_json
from pansight.data.coco_panoptic import (
    PanopticCategories,
    id_to_rgb,
    load_panoptic_json,
    read_panoptic_record,
    rgb_to_id,
    write_panoptic,
)
from pansight.data.shapes import ALL_CLASSES, COCO_CATEGORY_IDS, THING_FLAGS, render_sample
from pansight.errors import DataError
from pansight.metrics.panoptic import PanopticMetric
from pansight.metrics.panoptic_files import evaluate_panoptic_files
from pansight.structures import PanopticMap, Segment, Target

SIZE = 48
CATEGORIES = [
    {"id": category_id, "name": name, "isthing": int(is_thing)}
    for category_id, name, is_thing in zip(COCO_CATEGORY_IDS, ALL_CLASSES, THING_FLAGS)
]


def world_maps(count: int) -> list[PanopticMap]:
    """Panoptic ground truth of ``count`` synthetic images; the first thing of image 0 is crowd."""
    maps = [
        render_sample(index, image_size=SIZE, split="val")[1].panoptic for index in range(count)
    ]
    maps[0].segments[0].iscrowd = True
    return maps


def degraded(truth: PanopticMap) -> PanopticMap:
    """A prediction: the first thing dropped (its pixels void), stuff relabelled as the next
    stuff class, ids renumbered to large values."""
    ids = truth.ids.clone()
    first_thing = next(s for s in truth.segments if s.is_thing)
    ids[ids == first_thing.id] = 0
    ids[ids > 0] += 70000
    stuff = [label for label, is_thing in enumerate(THING_FLAGS) if not is_thing]
    segments = []
    for segment in truth.segments:
        area = int((ids == segment.id + 70000).sum())
        if segment is first_thing or not area:
            continue
        label = segment.label
        if not segment.is_thing and segment.id % 2:
            label = stuff[(stuff.index(label) + 1) % len(stuff)]
        segments.append(Segment(segment.id + 70000, label, segment.is_thing, area, score=0.9))
    return PanopticMap(ids, segments)


def write_files(tmp_path, name: str, maps: list[PanopticMap], categories=True):
    """``name.json`` and ``name/<image id>.png`` for ``maps`` (image ids 0, 1, ...)."""
    png_dir = tmp_path / name
    records = [
        write_panoptic(panoptic, image_id, png_dir / f"{image_id:03d}.png", COCO_CATEGORY_IDS)
        for image_id, panoptic in enumerate(maps)
    ]
    json_path = tmp_path / f"{name}.json"
    images = [
        {"id": i, "file_name": f"{i:03d}.jpg", "height": SIZE, "width": SIZE}
        for i in range(len(maps))
    ]
    write_coco_json(json_path, images, records, CATEGORIES if categories else [])
    return json_path, png_dir


def in_memory_scores(truths: list[PanopticMap], predictions: list[PanopticMap]):
    metric = PanopticMetric(list(ALL_CLASSES), list(THING_FLAGS))
    for image_id, (truth, prediction) in enumerate(zip(truths, predictions)):
        metric.update([prediction], [Target(image_id, (SIZE, SIZE), panoptic=truth)])
    return metric.compute()


def assert_same(scores: dict[str, float], expected: dict[str, float]) -> None:
    assert scores.keys() == expected.keys()
    for key, value in scores.items():
        if math.isnan(expected[key]):
            assert math.isnan(value), key
        else:
            assert value == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key


def test_round_trip_reads_back_the_written_maps(tmp_path):
    maps = world_maps(3)
    json_path, png_dir = write_files(tmp_path, "truth", maps)
    loaded = load_panoptic_json(json_path)
    assert loaded.categories == PanopticCategories(
        list(ALL_CLASSES), list(COCO_CATEGORY_IDS), list(THING_FLAGS)
    )
    assert sorted(loaded.records) == [0, 1, 2]
    for image_id, expected in enumerate(maps):
        panoptic = read_panoptic_record(loaded.records[image_id], png_dir, loaded.categories)
        assert torch.equal(panoptic.ids, expected.ids)
        assert panoptic.segments == expected.segments


def test_ground_truth_against_itself_scores_one(tmp_path):
    json_path, png_dir = write_files(tmp_path, "truth", world_maps(4))
    scores = evaluate_panoptic_files(json_path, png_dir, json_path, png_dir)
    present = {key: value for key, value in scores.items() if not math.isnan(value)}
    assert set(present) >= {"PQ", "SQ", "RQ", "PQ_th", "PQ_st", "PQ_sky"}
    assert all(value == 1.0 for value in present.values())


@pytest.mark.parametrize("workers", [0, 2])
def test_files_give_the_scores_of_the_maps(tmp_path, workers):
    truths = world_maps(6)
    predictions = [degraded(truth) for truth in truths]
    gt_json, gt_dir = write_files(tmp_path, "truth", truths)
    pred_json, pred_dir = write_files(tmp_path, "pred", predictions, categories=False)
    scores = evaluate_panoptic_files(gt_json, gt_dir, pred_json, pred_dir, workers=workers)
    expected = in_memory_scores(truths, predictions)
    assert_same(scores, expected)
    assert 0 < scores["PQ"] < 1 and scores["PQ_th"] > scores["PQ_st"]


def test_prediction_json_needs_only_annotations(tmp_path):
    truths = world_maps(2)
    gt_json, gt_dir = write_files(tmp_path, "truth", truths)
    pred_json, pred_dir = write_files(tmp_path, "pred", truths)
    records = json.loads(pred_json.read_text())["annotations"]
    for record in records:
        for segment in record["segments_info"]:
            del segment["area"], segment["bbox"], segment["iscrowd"]
    pred_json.write_text(json.dumps({"annotations": records}))
    scores = evaluate_panoptic_files(gt_json, gt_dir, pred_json, pred_dir)
    assert scores["PQ"] == 1.0


def test_listed_segments_without_pixels_are_dropped(tmp_path):
    json_path, png_dir = write_files(tmp_path, "truth", world_maps(1))
    data = json.loads(json_path.read_text())
    data["annotations"][0]["segments_info"].append({"id": 999, "category_id": 3})
    json_path.write_text(json.dumps(data))
    loaded = load_panoptic_json(json_path)
    panoptic = read_panoptic_record(loaded.records[0], png_dir, loaded.categories)
    assert 999 not in [segment.id for segment in panoptic.segments]


def unknown_category(data):
    data["annotations"][0]["segments_info"][0]["category_id"] = 2


PREDICTION_ERRORS = [
    (lambda data: data["annotations"].pop(), "{json}: no prediction for image 1"),
    (unknown_category, "{json}: annotation of image 0: segment 1: unknown category_id 2"),
    (
        lambda data: data["annotations"][0]["segments_info"].pop(0),
        r"pred/000.png: segment ids \[1\] are not listed for image 0",
    ),
    (
        lambda data: data["annotations"].append(data["annotations"][0]),
        "{json}: annotation of image 0: the image has two annotation records",
    ),
    (lambda data: data.pop("annotations"), "{json}: .*missing required key 'annotations'"),
]


@pytest.mark.parametrize("change, message", PREDICTION_ERRORS)
def test_prediction_file_errors_name_the_file(tmp_path, change, message):
    gt_json, gt_dir = write_files(tmp_path, "truth", world_maps(2))
    pred_json, pred_dir = write_files(tmp_path, "pred", world_maps(2), categories=False)
    data = json.loads(pred_json.read_text())
    change(data)
    pred_json.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message.format(json=pred_json)):
        evaluate_panoptic_files(gt_json, gt_dir, pred_json, pred_dir)


def test_ground_truth_errors_name_the_file(tmp_path):
    gt_json, gt_dir = write_files(tmp_path, "truth", world_maps(2))
    (gt_dir / "001.png").unlink()
    with pytest.raises(DataError, match="truth/001.png: panoptic PNG not found"):
        evaluate_panoptic_files(gt_json, gt_dir, gt_json, gt_dir)
    data = json.loads(gt_json.read_text())
    del data["categories"]
    gt_json.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"{gt_json}: .*missing required key 'categories'"):
        evaluate_panoptic_files(gt_json, gt_dir, gt_json, gt_dir)


def test_maps_of_different_sizes_are_named(tmp_path):
    truths = world_maps(1)
    gt_json, gt_dir = write_files(tmp_path, "truth", truths)
    pred_json, pred_dir = write_files(tmp_path, "pred", truths)
    png = np.asarray(Image.open(pred_dir / "000.png"))
    Image.fromarray(png[:-1]).save(pred_dir / "000.png")
    with pytest.raises(DataError, match=r"pred/000.png: image 0: prediction is \(47, 48\)"):
        evaluate_panoptic_files(gt_json, gt_dir, pred_json, pred_dir)


def test_id_color_encoding_round_trips():
    ids = np.array([[0, 1, 255], [256, 65536, 256**3 - 1]])
    png = Image.fromarray(id_to_rgb(ids))
    assert np.array_equal(rgb_to_id(np.asarray(png)), ids)
