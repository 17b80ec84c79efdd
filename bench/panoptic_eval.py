"""PQ evaluation on CPU: pansight's vectorized metric against a per-segment loop in the style of
panopticapi's ``pq_compute``.

Data: ``--images`` samples of the synthetic world (``--size`` pixels, up to ``--max-objects``
things). Ground truth is the world's panoptic map with some void (a rectangle of pixels set to
``0``) and now and then one thing marked crowd. Predictions start from the world's map (void
pixels included, as a model predicts everywhere) with new, scattered segment ids; things are
kept, eroded, shifted, dropped or relabelled, stuff is sometimes relabelled, and spurious things
(disks, some of them over void) are added (see :func:`perturbed_prediction`).

Two rows, each evaluating every image and computing the scores from scratch:

- ``reference``: :func:`reference_scores`, per image ``np.unique`` over combined ids and Python
  loops over segment pairs, then the category averages, as ``pq_compute`` does;
- ``ours``: :class:`pansight.metrics.panoptic.PanopticMetric` (``update`` per image, then
  ``compute``), in this process.

Both must give the same numbers (TP/FP/FN per category equal, scores within 1e-12). Latency:
after ``--warmup`` rounds the two run alternately ``--runs`` times; medians are compared.

Usage: ``python bench/panoptic_eval.py [--images 500] [--size 128] [--runs 5] [--threads 2]``
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from timing import alternate_timings, print_header

from pansight.data.shapes import ALL_CLASSES, THING_FLAGS, render_sample
from pansight.metrics.panoptic import PanopticMetric
from pansight.structures import PanopticMap, Segment, Target

MAX_SEGMENT_ID = 256**3 - 1
OFFSET = 256**3
VOID = 0
THING_LABELS = [label for label, is_thing in enumerate(THING_FLAGS) if is_thing]
STUFF_LABELS = [label for label, is_thing in enumerate(THING_FLAGS) if not is_thing]
PREDICTION_ID_RANGES = (1000, MAX_SEGMENT_ID)
"""A prediction's segment ids are drawn below one of these (as a model numbers its segments, or
as a COCO file's colors give them)."""
THING_ACTIONS = ("keep", "erode", "shift", "drop")
THING_ACTION_ODDS = (0.4, 0.25, 0.25, 0.1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500, help="synthetic images evaluated")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--max-objects", type=int, default=6, help="things per image, at most")
    parser.add_argument("--runs", type=int, default=5, help="timed evaluations per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed evaluations first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# -- the data ----------------------------------------------------------------------------------


def map_from_ids(ids: np.ndarray, labels: dict[int, int], crowd: Sequence[int] = ()) -> PanopticMap:
    """A map of ``(H, W)`` ``ids`` whose segments (ids with pixels) have ``labels[id]``."""
    present, areas = np.unique(ids, return_counts=True)
    segments = [
        Segment(key, labels[key], THING_FLAGS[labels[key]], area, iscrowd=key in crowd)
        for key, area in zip(present.tolist(), areas.tolist())
        if key != VOID
    ]
    return PanopticMap(torch.from_numpy(ids), segments)


def ground_truth(world: PanopticMap, rng: np.random.Generator) -> PanopticMap:
    """The world's map with a void rectangle (most images) and, now and then, one crowd thing."""
    ids = world.ids.numpy().copy()
    height, width = ids.shape
    if rng.random() < 0.7:
        top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
        ids[top : top + rng.integers(6, height // 3), left : left + rng.integers(6, width // 3)] = 0
    things = [segment.id for segment in world.segments if segment.is_thing]
    crowd = [int(rng.choice(things))] if things and rng.random() < 0.3 else []
    return map_from_ids(ids, {s.id: s.label for s in world.segments}, crowd)


def perturbed_prediction(world: PanopticMap, rng: np.random.Generator) -> PanopticMap:
    """A prediction made from the world's map: things kept, eroded, shifted, dropped or
    relabelled; stuff sometimes relabelled; spurious things added. Ids are new and scattered."""
    world_ids = world.ids.numpy()
    largest = int(rng.choice(PREDICTION_ID_RANGES))
    new_ids = rng.choice(largest, size=len(world.segments) + 4, replace=False) + 1
    renamed = {segment.id: int(new_id) for segment, new_id in zip(world.segments, new_ids)}
    lookup = np.zeros(int(world_ids.max()) + 1, dtype=np.int64)
    lookup[list(renamed)] = list(renamed.values())
    ids = lookup[world_ids]
    labels = {renamed[s.id]: s.label for s in world.segments}
    stuff_ids = [renamed[s.id] for s in world.segments if not s.is_thing] or [VOID]
    for segment in world.segments:
        new_id = renamed[segment.id]
        if segment.is_thing:
            fill = int(rng.choice(stuff_ids + [VOID]))
            _perturb_thing(ids, new_id, fill, rng.choice(THING_ACTIONS, p=THING_ACTION_ODDS), rng)
            if rng.random() < 0.15:
                labels[new_id] = int(rng.choice(THING_LABELS))
        elif rng.random() < 0.15:
            labels[new_id] = int(rng.choice(STUFF_LABELS))
    for new_id in new_ids[len(world.segments) :].tolist():
        if rng.random() < 0.4:
            ids[_random_disk(ids.shape, rng)] = new_id
            labels[new_id] = int(rng.choice(THING_LABELS))
    return map_from_ids(ids, labels)


def _perturb_thing(
    ids: np.ndarray, segment_id: int, fill: int, action: str, rng: np.random.Generator
) -> None:
    """Apply ``action`` to segment ``segment_id`` of ``ids`` in place; pixels it leaves become
    ``fill``."""
    mask = ids == segment_id
    if action == "erode":
        eroded = mask
        for _ in range(rng.integers(1, 4)):
            eroded = _erode(eroded)
        ids[mask & ~eroded] = fill
    elif action == "shift":
        ids[mask] = fill
        ids[np.roll(mask, tuple(rng.integers(-6, 7, size=2)), axis=(0, 1))] = segment_id
    elif action == "drop":
        ids[mask] = fill


def _erode(mask: np.ndarray) -> np.ndarray:
    """``mask`` without its pixels that have a 4-neighbor outside it (or the image)."""
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def _random_disk(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width]
    radius = rng.uniform(3, max(4, min(shape) / 8))
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2


def bench_pairs(
    count: int, size: int, max_objects: int, seed: int
) -> list[tuple[PanopticMap, PanopticMap]]:
    """``count`` ``(ground truth, prediction)`` pairs of ``size`` pixel synthetic images."""
    pairs = []
    for index in range(count):
        _, target = render_sample(
            index, image_size=size, seed=seed, split="val", max_objects=max_objects
        )
        rng = np.random.default_rng([seed, index])
        world = target.panoptic
        pairs.append((ground_truth(world, rng), perturbed_prediction(world, rng)))
    return pairs


# -- the reference -----------------------------------------------------------------------------


def reference_statistics(
    pairs: Sequence[tuple[PanopticMap, PanopticMap]],
) -> dict[int, dict[str, float]]:
    """Per category ``{"tp", "fp", "fn", "iou"}``, per image and per segment pair in Python, as
    panopticapi's ``pq_compute_single_core`` (ground-truth areas from the segments' ``area``)."""
    stats: dict[int, dict[str, float]] = defaultdict(
        lambda: {"tp": 0, "fp": 0, "fn": 0, "iou": 0.0}
    )
    for truth, prediction in pairs:
        pan_gt, pan_pred = truth.ids.numpy(), prediction.ids.numpy()
        gt_segms = {
            s.id: {"category_id": s.label, "iscrowd": s.iscrowd, "area": s.area}
            for s in truth.segments
        }
        pred_segms = {s.id: {"category_id": s.label} for s in prediction.segments}

        pred_labels_set = set(pred_segms)
        labels, labels_cnt = np.unique(pan_pred, return_counts=True)
        for label, label_cnt in zip(labels.tolist(), labels_cnt.tolist()):
            if label not in pred_segms:
                if label == VOID:
                    continue
                raise KeyError(f"segment {label} is in the map but not listed")
            pred_segms[label]["area"] = label_cnt
            pred_labels_set.remove(label)
        if pred_labels_set:
            raise KeyError(f"segments {pred_labels_set} are listed but not in the map")

        pan_gt_pred = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
        gt_pred_map = {}
        labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
        for label, intersection in zip(labels.tolist(), labels_cnt.tolist()):
            gt_pred_map[(label // OFFSET, label % OFFSET)] = intersection

        gt_matched, pred_matched = set(), set()
        for (gt_label, pred_label), intersection in gt_pred_map.items():
            if gt_label not in gt_segms or pred_label not in pred_segms:
                continue
            if gt_segms[gt_label]["iscrowd"]:
                continue
            if gt_segms[gt_label]["category_id"] != pred_segms[pred_label]["category_id"]:
                continue
            union = (
                pred_segms[pred_label]["area"]
                + gt_segms[gt_label]["area"]
                - intersection
                - gt_pred_map.get((VOID, pred_label), 0)
            )
            iou = intersection / union
            if iou > 0.5:
                stats[gt_segms[gt_label]["category_id"]]["tp"] += 1
                stats[gt_segms[gt_label]["category_id"]]["iou"] += iou
                gt_matched.add(gt_label)
                pred_matched.add(pred_label)

        crowd_labels_dict = {}
        for gt_label, gt_info in gt_segms.items():
            if gt_label in gt_matched:
                continue
            if gt_info["iscrowd"]:
                crowd_labels_dict[gt_info["category_id"]] = gt_label
                continue
            stats[gt_info["category_id"]]["fn"] += 1

        for pred_label, pred_info in pred_segms.items():
            if pred_label in pred_matched:
                continue
            intersection = gt_pred_map.get((VOID, pred_label), 0)
            if pred_info["category_id"] in crowd_labels_dict:
                crowd = crowd_labels_dict[pred_info["category_id"]]
                intersection += gt_pred_map.get((crowd, pred_label), 0)
            if intersection / pred_info["area"] > 0.5:
                continue
            stats[pred_info["category_id"]]["fp"] += 1
    return dict(stats)


def reference_scores(
    pairs: Sequence[tuple[PanopticMap, PanopticMap]],
    class_names: Sequence[str],
    is_thing: Sequence[bool],
) -> dict[str, float]:
    """The keys of :class:`PanopticMetric` from :func:`reference_statistics`, averaged per
    category as panopticapi's ``pq_average`` (a category without TP, FP and FN: NaN, left out;
    an average over no category: NaN)."""
    stats = reference_statistics(pairs)
    per_class = {}
    for label in range(len(class_names)):
        tp, fp, fn, iou = (stats.get(label, {}).get(key, 0) for key in ("tp", "fp", "fn", "iou"))
        if tp + fp + fn == 0:
            per_class[label] = (math.nan, math.nan, math.nan)
            continue
        pq = iou / (tp + 0.5 * fp + 0.5 * fn)
        sq = iou / tp if tp != 0 else 0.0
        rq = tp / (tp + 0.5 * fp + 0.5 * fn)
        per_class[label] = (pq, sq, rq)
    scores = {}
    for suffix, wanted in (("", None), ("_th", True), ("_st", False)):
        chosen = [
            per_class[label]
            for label in range(len(class_names))
            if (wanted is None or is_thing[label] == wanted) and not math.isnan(per_class[label][0])
        ]
        for position, name in enumerate(("PQ", "SQ", "RQ")):
            values = [triple[position] for triple in chosen]
            scores[name + suffix] = sum(values) / len(values) if values else math.nan
    for label, name in enumerate(class_names):
        scores[f"PQ_{name}"] = per_class[label][0]
    return scores


# -- measurements ------------------------------------------------------------------------------


def our_scores(
    pairs: Sequence[tuple[Target, PanopticMap]],
    class_names: Sequence[str],
    is_thing: Sequence[bool],
) -> dict[str, float]:
    """:class:`PanopticMetric` over ``(target, prediction)`` pairs, one image per ``update``."""
    metric = PanopticMetric(class_names, is_thing)
    for target, prediction in pairs:
        metric.update([prediction], [target])
    return metric.compute()


def as_targets(
    pairs: Sequence[tuple[PanopticMap, PanopticMap]],
) -> list[tuple[Target, PanopticMap]]:
    """The pairs with each ground truth in a :class:`Target`, as a data loader gives them."""
    return [
        (Target(image_id=index, size=tuple(truth.ids.shape), panoptic=truth), prediction)
        for index, (truth, prediction) in enumerate(pairs)
    ]


def same_scores(
    ours: dict[str, float], reference: dict[str, float], tolerance: float = 1e-12
) -> bool:
    """Same keys, NaN in the same places and values within ``tolerance``."""
    if ours.keys() != reference.keys():
        return False
    for key, value in ours.items():
        other = reference[key]
        if math.isnan(value) != math.isnan(other):
            return False
        if not math.isnan(value) and abs(value - other) > tolerance:
            return False
    return True


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print_header()
    pairs = bench_pairs(args.images, args.size, args.max_objects, args.seed)
    names, flags = list(ALL_CLASSES), list(THING_FLAGS)
    targets = as_targets(pairs)
    timed = {
        "reference": lambda: reference_scores(pairs, names, flags),
        "ours": lambda: our_scores(targets, names, flags),
    }
    expected, ours = timed["reference"](), timed["ours"]()
    equal = same_scores(ours, expected)
    timings = alternate_timings(timed, args.runs, args.warmup)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    report(args, pairs, ours, expected, equal, timings, medians)


def report(
    args: argparse.Namespace,
    pairs: list[tuple[PanopticMap, PanopticMap]],
    ours: dict[str, float],
    expected: dict[str, float],
    equal: bool,
    timings: dict[str, list[float]],
    medians: dict[str, float],
) -> None:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    segments = sum(len(truth.segments) + len(pred.segments) for truth, pred in pairs)
    print(
        f"PQ evaluation of {args.images} synthetic {args.size}x{args.size} images "
        f"({segments} segments, truth + prediction), {args.threads} threads, median of "
        f"{args.runs} alternating runs after {args.warmup} warm-up (load average {load})"
    )
    print(
        f"PQ {ours['PQ']:.4f} SQ {ours['SQ']:.4f} RQ {ours['RQ']:.4f} "
        f"PQ_th {ours['PQ_th']:.4f} PQ_st {ours['PQ_st']:.4f}; "
        f"reference PQ {expected['PQ']:.4f}; same numbers: {equal}"
    )
    print(f"\n{'method':<10} {'median ms':>10} {'min ms':>10} {'ms/image':>9}")
    for name in ("reference", "ours"):
        print(
            f"{name:<10} {1000 * medians[name]:>10.1f} {1000 * min(timings[name]):>10.1f} "
            f"{1000 * medians[name] / args.images:>9.3f}"
        )
    ratio = medians["ours"] / medians["reference"]
    print(f"result: pq_eval_ratio={ratio:.3f} pq_equal={equal}")


if __name__ == "__main__":
    main()
