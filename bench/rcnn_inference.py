"""Mask R-CNN inference on CPU: pansight's MaskRCNN against torchvision's maskrcnn_resnet50_fpn.

All models hold the same weights: torchvision's model gets random weights (batch-norm statistics
of the bench images, random batch-norm affine maps, RPN objectness and classifier, so that
detections vary) and its state dict is imported into ``mask_rcnn_r50_fpn`` with
:func:`pansight.models.rcnn.torchvision_import.import_torchvision_rcnn`. The score threshold is
low enough that every image keeps ``--detections`` detections. Three models run: ``torchvision``
(``model(images)``), ``ours`` (``predict``) and ``ours optimized`` (``predict`` of
:func:`pansight.models.fuse.optimize_for_inference`'s copy), whose ratios ``result:`` gives.

Before timing, plain ``ours`` must reproduce torchvision's detections and ``ours optimized``
every network output of ``ours`` within float rounding (``bench/agreement.py``); the share of
its detections matching torchvision's is printed (rounding swaps near-ties in the proposal
ranking of random weights; ``--float64-check`` shows torchvision in float32 and float64 differ
as much). Latency: after ``--warmup`` calls each, the models run alternately ``--runs`` times
on the same batch; medians are compared. Peak memory: each model runs once in a fresh
subprocess (``bench/rss.py``): the resident memory the call adds at its peak. The stage split
times ``ours optimized`` once more with each forward step wrapped in a timer.

Usage: ``python bench/rcnn_inference.py [--runs 5] [--warmup 1] [--threads 2] [--images 1]``

Ends with ``result: latency_ratio=<ours optimized / torchvision, median time>
memory_ratio=<ours optimized / torchvision, peak memory of the call>``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from agreement import (
    MAX_RELATIVE_DIFF,
    as_detections,
    compare_outputs,
    float64_outputs,
    network_agreement,
)
from arguments import add_images_flag, add_seed_flag, add_timing_flags, bench_parser
from rcnn_models import MODELS, build_models, call, random_state_dict
from report import Column, Table, print_result, set_threads_and_print_header
from rss import MIB, add_child_flags, forwarded_flags, peak_memory_in_children, print_call_peak
from synthetic_images import blob_images
from timing import alternate_timings, medians
from torch import nn

from pansight.models.rcnn.model import MaskRCNN

OURS = "ours optimized"
"""The model of ours whose ratios the ``result:`` line gives."""
MIN_MATCHED = 0.95
"""Share of plain ``ours``'s detections that must match torchvision's."""

STAGES = {
    "preprocess": "preprocess",
    "backbone_levels": "backbone + FPN",
    "pyramid_levels": "backbone + FPN",
    "rpn_per_level": "RPN + proposals",
    "decode_anchors": "RPN + proposals",
    "nms_proposals": "RPN + proposals",
    "roi_levels": "RoI box head",
    "roi_align_boxes": "RoI box head",
    "box_branch": "RoI box head",
    "detections": "RoI box head",
    "mask_branch": "mask head",
    "postprocess": "paste + results",
}
"""Our model's step methods and the stage each one's time counts towards."""
TABLE = Table(
    Column("model", 15, align="<"),
    Column("median ms", 10, ".0f"),
    Column("min ms", 8, ".0f"),
    Column("ratio", 6, ".3f"),
    Column("paired", 7, ".3f"),
    Column("peak MiB", 9, ".0f"),
    Column("ratio", 6, ".3f"),
    Column("process MiB", 12, ".0f"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    add_timing_flags(parser, runs=5, warmup=1)
    add_images_flag(parser)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1066), metavar=("H", "W"))
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--score-thresh", type=float, default=0.0, help="box score threshold")
    add_seed_flag(parser)
    parser.add_argument(
        "--float64-check",
        action="store_true",
        help="also match every model's detections against torchvision run in float64 (slow)",
    )
    add_child_flags(parser, MODELS)
    return parser.parse_args(argv)


# -- checks and measurements -------------------------------------------------------------------


def stage_split(model: MaskRCNN, images: list[torch.Tensor], runs: int) -> dict[str, float]:
    """Median seconds per stage of ``model.predict(images)`` (each step method timed)."""
    totals: list[dict[str, float]] = []
    current: dict[str, float] = defaultdict(float)

    def timed(method: Callable, stage: str) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = method(*args, **kwargs)
            current[stage] += time.perf_counter() - start
            return result

        return wrapper

    for name, stage in STAGES.items():
        setattr(model, name, timed(getattr(model, name), stage))
    try:
        for _ in range(runs):
            current.clear()
            start = time.perf_counter()
            model.predict(images)
            current["total"] = time.perf_counter() - start
            totals.append(dict(current))
    finally:
        for name in STAGES:
            delattr(model, name)
    return {stage: statistics.median(t[stage] for t in totals) for stage in totals[0]}


def peak_memory_child(args: argparse.Namespace) -> None:
    """Subprocess body: build one model, run it once, print its peak RSS increase and the
    process's peak, in bytes."""
    torch.set_num_threads(args.threads)
    saved = torch.load(args.state)
    images = saved["images"]
    which = (args.memory_of,)
    models = build_models(saved["state_dict"], which, args.score_thresh, args.detections)
    inference = call(args.memory_of, models[args.memory_of], images)
    del saved
    print_call_peak(inference)


# -- report ------------------------------------------------------------------------------------


def check_same_outputs(
    args: argparse.Namespace, models: dict[str, nn.Module], images: list[torch.Tensor]
) -> list[str]:
    """Check the models agree (see the module docstring) and describe how closely.

    Raises:
        SystemExit: when plain ``ours`` does not reproduce torchvision's detections or
            ``ours optimized``'s network outputs differ from ours by more than float rounding.
    """
    outputs = {name: call(name, models[name], images)() for name in MODELS}
    agreement = {
        name: compare_outputs(outputs["torchvision"], outputs[name], args.detections)
        for name in ("ours", OURS)
    }
    if agreement["ours"]["matched"] < MIN_MATCHED:
        sys.exit(f"ours: only {100 * agreement['ours']['matched']:.0f} % of detections match")
    relative_diff, worst_output = network_agreement(models["ours"], models[OURS], images)
    if relative_diff > MAX_RELATIVE_DIFF:
        sys.exit(f"{OURS}: {worst_output} differ from ours by {relative_diff:.1e} (relative)")
    lines = [
        f"{OURS} vs ours, network outputs on the same input and RoIs: largest relative "
        f"difference {relative_diff:.1e} ({worst_output})"
    ]
    for name, values in agreement.items():
        lines.append(
            f"{name} vs torchvision: {100 * values['matched']:.0f} % of detections match; "
            f"over those max |box diff| {values['box_diff']:.1e} px, max |score diff| "
            f"{values['score_diff']:.1e}, min mask IoU {values['mask_iou']:.4f}"
        )
    if args.float64_check:
        exact = float64_outputs(models["torchvision"], images)
        outputs["torchvision"] = as_detections(outputs["torchvision"])
        for name in MODELS:
            values = compare_outputs(exact, outputs[name], args.detections)
            lines.append(
                f"{name} vs torchvision in float64: {100 * values['matched']:.0f} % of "
                f"detections match; over those max |box diff| {values['box_diff']:.1e} px"
            )
    return lines


def print_table(
    timings: dict[str, list[float]], memory: dict[str, tuple[int, int]]
) -> dict[str, float]:
    """Print latency and memory per model; return the ``result:`` ratios of :data:`OURS`.

    ``paired`` is the median over rounds of the model's time over torchvision's in the same
    round, steadier than the ratio of medians when the machine's load changes between rounds.
    """
    seconds = medians(timings)
    reference_seconds, reference_memory = seconds["torchvision"], memory["torchvision"][0]
    print(f"\n{TABLE.header()}")
    for name in MODELS:
        increase, total = memory[name]
        paired = statistics.median(
            ours / theirs for ours, theirs in zip(timings[name], timings["torchvision"])
        )
        print(
            TABLE.row(
                name,
                1000 * seconds[name],
                1000 * min(timings[name]),
                seconds[name] / reference_seconds,
                paired,
                increase / MIB,
                increase / reference_memory,
                total / MIB,
            )
        )
    print("(peak MiB: resident memory the call adds at its peak; process MiB: process peak)")
    return {
        "latency_ratio": seconds[OURS] / reference_seconds,
        "memory_ratio": memory[OURS][0] / reference_memory,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_of:
        peak_memory_child(args)
        return
    set_threads_and_print_header(args.threads)
    height, width = args.size
    images = list(blob_images(args.images, height, width, args.seed))
    state_dict = random_state_dict(images, args.seed)
    models = build_models(state_dict, MODELS, args.score_thresh, args.detections)
    agreement = check_same_outputs(args, models, images)
    calls = {name: call(name, models[name], images) for name in MODELS}
    timings = alternate_timings(calls, args.runs, args.warmup)
    stage_runs = max(1, args.runs // 2)
    stages = stage_split(models[OURS], images, stage_runs)
    del models, calls
    gc.collect()
    flags = forwarded_flags(
        args, ("threads", "images", "detections", "score_thresh", "seed", "size")
    )
    state = {"state_dict": state_dict, "images": images}
    memory = peak_memory_in_children(__file__, MODELS, state, flags)

    print(
        f"Mask R-CNN R50-FPN inference, {args.images} x {height}x{width} image(s) per call, "
        f"{args.detections} detections per image, {args.threads} threads, "
        f"median of {args.runs} alternating runs after {args.warmup} warm-up"
    )
    print("\n".join(agreement))
    ratios = print_table(timings, memory)
    print(f"\n{OURS} time by stage (median of {stage_runs} runs):")
    for stage, seconds in stages.items():
        print(f"  {stage:<18} {1000 * seconds:>8.0f} ms {100 * seconds / stages['total']:>5.1f} %")
    print_result(ratios)


if __name__ == "__main__":
    main()
