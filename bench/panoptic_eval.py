"""PQ evaluation on CPU: pansight's vectorized metric against a per-segment loop in the style of
panopticapi's ``pq_compute``.

Data: ``--images`` synthetic-world pairs of ground truth and perturbed prediction
(``bench/panoptic_data.py``, ``--size`` pixels, up to ``--max-objects`` things). Two rows, each
evaluating every image and computing the scores from scratch: ``reference``
(:func:`reference_scores`: per image ``np.unique`` over combined ids and Python loops over
segment pairs, as ``pq_compute`` does) and ``ours``
(:class:`pansight.metrics.panoptic.PanopticMetric`, ``update`` per image, then ``compute``).
Both must give the same numbers (TP/FP/FN per category equal, scores within 1e-12). After
``--warmup`` rounds the two run alternately ``--runs`` times; medians are compared.

Usage: ``python bench/panoptic_eval.py [--images 500] [--size 128] [--runs 5] [--threads 2]``

Ends with ``result: pq_eval_ratio=<ours / reference, median time> pq_equal=<same numbers>``.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from arguments import add_seed_flag, add_timing_flags, bench_parser
from panoptic_data import VOID, bench_pairs
from report import Column, Table, load_average, print_result, set_threads_and_print_header
from timing import alternate_timings, medians

from pansight.data.shapes import ALL_CLASSES, THING_FLAGS
from pansight.metrics.panoptic import PanopticMetric
from pansight.structures import PanopticMap, Target

OFFSET = 256**3
"""Combined id of a (ground truth, prediction) pixel: ``truth * OFFSET + prediction``."""
TABLE = Table(
    Column("method", 10, align="<"),
    Column("median ms", 10, ".1f"),
    Column("min ms", 10, ".1f"),
    Column("ms/image", 9, ".3f"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--images", type=int, default=500, help="synthetic images evaluated")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--max-objects", type=int, default=6, help="things per image, at most")
    add_timing_flags(parser, runs=5, warmup=1, unit="evaluations per method")
    add_seed_flag(parser)
    return parser.parse_args(argv)


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
    set_threads_and_print_header(args.threads)
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
    report(args, pairs, ours, expected, equal, timings)


def report(
    args: argparse.Namespace,
    pairs: list[tuple[PanopticMap, PanopticMap]],
    ours: dict[str, float],
    expected: dict[str, float],
    equal: bool,
    timings: dict[str, list[float]],
) -> None:
    segments = sum(len(truth.segments) + len(pred.segments) for truth, pred in pairs)
    print(
        f"PQ evaluation of {args.images} synthetic {args.size}x{args.size} images "
        f"({segments} segments, truth + prediction), {args.threads} threads, median of "
        f"{args.runs} alternating runs after {args.warmup} warm-up "
        f"(load average {load_average()})"
    )
    print(
        f"PQ {ours['PQ']:.4f} SQ {ours['SQ']:.4f} RQ {ours['RQ']:.4f} "
        f"PQ_th {ours['PQ_th']:.4f} PQ_st {ours['PQ_st']:.4f}; "
        f"reference PQ {expected['PQ']:.4f}; same numbers: {equal}"
    )
    seconds = medians(timings)
    print(f"\n{TABLE.header()}")
    for name in ("reference", "ours"):
        fastest, per_image = min(timings[name]), seconds[name] / args.images
        print(TABLE.row(name, 1000 * seconds[name], 1000 * fastest, 1000 * per_image))
    print_result({"pq_eval_ratio": seconds["ours"] / seconds["reference"], "pq_equal": equal})


if __name__ == "__main__":
    main()
