"""Mask R-CNN inference on CPU: pansight's MaskRCNN against torchvision's maskrcnn_resnet50_fpn.

All models hold the same weights: torchvision's model is built with random weights (batch-norm
statistics measured on the bench images, batch-norm affine and classifier randomized so that
detections are varied), and its state dict is imported into ``mask_rcnn_r50_fpn`` with
:func:`pansight.models.rcnn.torchvision_import.import_torchvision_rcnn`.
The score threshold is low enough
that every image keeps ``--detections`` detections in every model. Three models run:

- ``torchvision``: ``model(images)`` under ``torch.inference_mode``;
- ``ours``: ``model.predict(images)``;
- ``ours optimized``: ``predict`` of :func:`pansight.models.fuse.optimize_for_inference`'s copy
  (batch norms folded into the convolutions, channels-last weights), the path whose ratio the
  ``result:`` line gives.

Same outputs, checked before timing: every model keeps the same number of detections per
image; plain ``ours`` reproduces torchvision's detections (same labels, boxes and scores, masks
pasted by ours at IoU ~0.99); ``ours optimized`` computes every network output (pyramid, RPN,
box and mask heads, fed the same RoIs) within float rounding of ``ours``. Its detections are
then matched to torchvision's and the matched share printed: with random weights the proposal
ranking is full of near-ties, so rounding alone swaps some detections (``--float64-check``
shows that torchvision in float32 and in float64 differ as much).

Latency: after ``--warmup`` calls each, the models run alternately ``--runs`` times on the same
batch of images; the medians are compared.

Peak memory: each model runs once in a fresh subprocess (same weights and images, loaded from a
temporary file). The subprocess resets the kernel's peak-RSS counter (``/proc/self/clear_refs``)
just before the call and reads ``VmHWM`` after it; the reported number is the peak resident
memory above the resident memory right before the call (the weights and the images are resident
already, so this is the memory the inference itself needs).

The stage split times ``ours optimized`` once more with each forward step wrapped in a timer.

Usage: ``python bench/rcnn_inference.py [--runs 5] [--warmup 1] [--threads 2] [--images 1]``
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from rcnn_agreement import as_detections, compare_outputs, float64_outputs, network_agreement
from rss import call_peak_bytes
from timing import alternate_timings, print_header
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn

from pansight.models.fuse import optimize_for_inference
from pansight.models.rcnn.model import MaskRCNN, RCNNConfig
from pansight.models.rcnn.torchvision_import import import_torchvision_rcnn

NUM_CLASSES = 90
"""COCO's 90 category slots (torchvision's ``num_classes=91`` counts the background)."""

MODELS = ("ours", "ours optimized", "torchvision")
OURS = "ours optimized"
"""The model of ours whose ratios the ``result:`` line gives."""
MIN_MATCHED = 0.95
"""Share of plain ``ours``'s detections that must match torchvision's."""
MAX_RELATIVE_DIFF = 1e-4
"""Largest relative difference allowed between the network outputs of ``ours optimized`` and
``ours`` on the same input and RoIs (float rounding gives about 1e-5)."""

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed calls per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--images", type=int, default=1, help="images per call (one batch)")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1066), metavar=("H", "W"))
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--score-thresh", type=float, default=0.0, help="box score threshold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--float64-check",
        action="store_true",
        help="also match every model's detections against torchvision run in float64 (slow)",
    )
    parser.add_argument("--memory-of", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- the models --------------------------------------------------------------------------------


def bench_images(count: int, size: tuple[int, int], seed: int) -> list[torch.Tensor]:
    """``count`` ``(3, H, W)`` images in ``[0, 1]``: smooth random blobs plus pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    coarse = torch.rand(count, 3, height // 32, width // 32, generator=generator)
    smooth = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    noise = torch.rand(count, 3, height, width, generator=generator)
    return list((0.8 * smooth + 0.2 * noise).clamp(0, 1))


def torchvision_model(args: argparse.Namespace) -> nn.Module:
    """torchvision's Mask R-CNN with the bench's thresholds (weights are loaded separately)."""
    return maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES + 1,
        box_score_thresh=args.score_thresh,
        box_detections_per_img=args.detections,
    ).eval()


def our_model(args: argparse.Namespace, state_dict: dict[str, torch.Tensor]) -> MaskRCNN:
    """pansight's Mask R-CNN with torchvision's settings, the bench's thresholds and
    torchvision's ``state_dict``."""
    config = RCNNConfig(
        backbone="resnet50",
        score_thresh=args.score_thresh,
        detections_per_img=args.detections,
    )
    model = MaskRCNN(config, [f"class{i}" for i in range(NUM_CLASSES)]).eval()
    import_torchvision_rcnn(model, state_dict)
    return model


def build_models(
    args: argparse.Namespace, state_dict: dict[str, torch.Tensor], which: tuple[str, ...]
) -> dict[str, nn.Module]:
    """The models named in ``which`` (of :data:`MODELS`), all holding ``state_dict``."""
    models: dict[str, nn.Module] = {}
    if "ours" in which or "ours optimized" in which:
        ours = our_model(args, state_dict)
        if "ours optimized" in which:
            models["ours optimized"] = optimize_for_inference(ours)
        if "ours" in which:
            models["ours"] = ours
    if "torchvision" in which:
        models["torchvision"] = torchvision_model(args)
        models["torchvision"].load_state_dict(state_dict)
    return models


@torch.no_grad()
def randomize(model: nn.Module, images: list[torch.Tensor], seed: int) -> None:
    """Random weights that keep activations bounded and spread the scores.

    Batch-norm statistics are the plain batch statistics of ``images``; the batch-norm scales
    and shifts, the RPN objectness and the box classifier are then drawn at random.
    """
    torch.manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.backbone.train()
    model.backbone(model.transform(images)[0].tensors)
    model.backbone.eval()
    for norm in norms:
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.2)
    model.rpn.head.cls_logits.weight.normal_(0, 0.1)
    model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.05)
    model.roi_heads.box_predictor.cls_score.bias.normal_(0, 1)


def call(name: str, model: nn.Module, images: list[torch.Tensor]) -> Callable[[], list]:
    """The inference call of model ``name`` on ``images``."""
    if name == "torchvision":

        def torchvision_call() -> list[dict]:
            with torch.inference_mode():
                return model(images)

        return torchvision_call
    return lambda: model.predict(images)


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
    models = build_models(args, saved["state_dict"], (args.memory_of,))
    inference = call(args.memory_of, models[args.memory_of], images)
    del saved
    print(*call_peak_bytes(inference))


def peak_memory(args: argparse.Namespace, state_file: Path, which: str) -> tuple[int, int]:
    """``(peak increase during the call, whole-process peak)`` in bytes for ``which``."""
    command = [sys.executable, __file__, "--memory-of", which, "--state", str(state_file)]
    for flag in ("threads", "images", "detections", "score_thresh", "seed"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    command += ["--size", *map(str, args.size)]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    increase, total = completed.stdout.split()[-2:]
    return int(increase), int(total)


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


def measure_memory(
    args: argparse.Namespace, state_dict: dict[str, torch.Tensor], images: list[torch.Tensor]
) -> dict[str, tuple[int, int]]:
    """:func:`peak_memory` of every model, each in its own subprocess."""
    with tempfile.TemporaryDirectory() as folder:
        state_file = Path(folder) / "state.pt"
        torch.save({"state_dict": state_dict, "images": images}, state_file)
        return {name: peak_memory(args, state_file, name) for name in MODELS}


def print_table(
    timings: dict[str, list[float]], memory: dict[str, tuple[int, int]]
) -> dict[str, float]:
    """Print latency and memory per model; return the ``result:`` ratios of :data:`OURS`.

    ``paired`` is the median over rounds of the model's time over torchvision's in the same
    round, steadier than the ratio of medians when the machine's load changes between rounds.
    """
    medians = {name: statistics.median(values) for name, values in timings.items()}
    reference_ms, reference_memory = medians["torchvision"], memory["torchvision"][0]
    print(
        f"\n{'model':<15} {'median ms':>10} {'min ms':>8} {'ratio':>6} {'paired':>7}"
        f" {'peak MiB':>9} {'ratio':>6} {'process MiB':>12}"
    )
    for name in MODELS:
        increase, total = memory[name]
        paired = statistics.median(
            ours / theirs for ours, theirs in zip(timings[name], timings["torchvision"])
        )
        print(
            f"{name:<15} {1000 * medians[name]:>10.0f} {1000 * min(timings[name]):>8.0f} "
            f"{medians[name] / reference_ms:>6.3f} {paired:>7.3f} {increase / 2**20:>9.0f} "
            f"{increase / reference_memory:>6.3f} {total / 2**20:>12.0f}"
        )
    print("(peak MiB: resident memory the call adds at its peak; process MiB: process peak)")
    return {
        "latency_ratio": medians[OURS] / reference_ms,
        "memory_ratio": memory[OURS][0] / reference_memory,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_of:
        peak_memory_child(args)
        return
    torch.set_num_threads(args.threads)
    print_header()
    images = bench_images(args.images, tuple(args.size), args.seed)
    reference = torchvision_model(args)
    randomize(reference, images, args.seed)
    state_dict = reference.state_dict()
    models = build_models(args, state_dict, MODELS)
    agreement = check_same_outputs(args, models, images)
    calls = {name: call(name, models[name], images) for name in MODELS}
    timings = alternate_timings(calls, args.runs, args.warmup)
    stage_runs = max(1, args.runs // 2)
    stages = stage_split(models[OURS], images, stage_runs)
    del models, calls, reference
    gc.collect()
    memory = measure_memory(args, state_dict, images)

    height, width = args.size
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
    print("result: " + " ".join(f"{name}={value:.3f}" for name, value in ratios.items()))


if __name__ == "__main__":
    main()
