"""YOLACT-R50 at 550 against our Mask R-CNN-R50-FPN at 800 on CPU, and Fast NMS against
torchvision's batched NMS.

Latency: ``yolact_r50`` (images resized to 550x550) and ``mask_rcnn_r50_fpn`` (shorter side
800), built from the zoo for COCO's 80 class names with the random weights of
``bench/random_weights.py`` (activations bounded, detections varied), run ``predict`` on the
same ``--images`` synthetic-world scenes of ``--size`` pixels, as built and as
:func:`pansight.models.fuse.optimize_for_inference`'s copies, alternately ``--runs`` times after
``--warmup`` calls; medians per image are compared. Both keep their default score threshold;
the table shows detections per image and the (candidate, class) pairs entering NMS, so the
comparison is seen to be fair. The ``result:`` ratio uses the optimized copies when their
network outputs match the plain models' within float rounding, else the plain models (the line
before ``result:`` names the path).

NMS (``bench/nms_comparison.py``): ``--nms-sets`` YOLACT-like candidate sets of
``--nms-candidates`` boxes, each a copy of one of ``--nms-objects`` objects moved and rescaled by
a few per cent (``--nms-jitter``), with a score for each of 80 classes. Fast NMS
(:func:`pansight.ops.nms.fast_nms`) and standard NMS (torchvision's ``batched_nms``) run on the
same tensors alternately ``--nms-runs`` times with YOLACT's settings (IoU 0.5, top 200 per
class, 100 kept).
The kept (candidate, class) pairs are compared with and without the cut to 100: Fast NMS lets
suppressed boxes suppress too, so before the cut it keeps a subset of standard NMS's pairs.

Usage: ``python bench/yolact.py [--runs 5] [--warmup 1] [--threads 2] [--images 1]``

Ends with ``result: latency_ratio=<yolact_r50 / mask_rcnn_r50_fpn, median time per image>
fast_nms_ratio=<fast / standard NMS, median time>``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from agreement import MAX_RELATIVE_DIFF, network_agreement, relative_difference
from arguments import add_images_flag, add_seed_flag, add_timing_flags, bench_parser
from nms_comparison import NMS_THRESH, NMS_WARMUP, NUM_CLASSES, TOP_K, candidate_sets, compare_nms
from random_weights import MASK_RCNN_HEADS, YOLACT_HEADS, randomize_zoo_model
from report import Column, Table, load_average, print_result, set_threads_and_print_header
from timing import alternate_timings, medians
from torch import Tensor

from pansight.data.shapes import ShapesDataset
from pansight.models.base import PansightModel
from pansight.models.fuse import optimize_for_inference
from pansight.models.yolact.model import Yolact
from pansight.models.yolact.original_import import coco_80_class_names
from pansight.models.zoo import build_model

YOLACT, MASK_RCNN = "yolact_r50", "mask_rcnn_r50_fpn"
HEAD_SPREADS = {YOLACT: YOLACT_HEADS, MASK_RCNN: MASK_RCNN_HEADS}
OPTIMIZED = " optimized"
"""Suffix of the name of a model's :func:`optimize_for_inference` copy."""

LATENCY_TABLE = Table(
    Column("model", 28, align="<"),
    Column("input", 10),
    Column("median ms/img", 14, ".0f"),
    Column("min ms/img", 11, ".0f"),
    Column("vs mask_rcnn", 13, ".3f"),
    Column("detections/img", 15),
    Column("NMS pairs/img", 14),
)
NMS_TABLE = Table(
    Column("method", 10, align="<"),
    Column("median ms/set", 14, ".2f"),
    Column("min ms/set", 11, ".2f"),
    Column("ratio", 6, ".3f"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    add_timing_flags(parser, runs=5, warmup=1)
    add_images_flag(parser)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1066), metavar=("H", "W"))
    parser.add_argument("--nms-runs", type=int, default=50, help="timed calls per NMS method")
    parser.add_argument("--nms-sets", type=int, default=10, help="candidate sets per NMS call")
    parser.add_argument("--nms-candidates", type=int, default=2000, help="boxes per set")
    parser.add_argument("--nms-objects", type=int, default=40, help="objects per set")
    parser.add_argument(
        "--nms-jitter", type=float, default=0.05, help="std of a copy's shift, times its sides"
    )
    add_seed_flag(parser)
    return parser.parse_args(argv)


# -- the models --------------------------------------------------------------------------------


def bench_images(count: int, size: tuple[int, int], seed: int) -> list[Tensor]:
    """``count`` ``(3, H, W)`` synthetic-world scenes in ``[0, 1]``."""
    world = ShapesDataset(split="val", mode="multi", num_images=count, image_size=size, seed=seed)
    return [world[index][0] for index in range(count)]


def build_models(images: list[Tensor], seed: int) -> dict[str, PansightModel]:
    """Both zoo models with the bench's random weights, and their optimized copies."""
    models: dict[str, PansightModel] = {}
    for name in (YOLACT, MASK_RCNN):
        model = build_model(name, coco_80_class_names()).eval()
        randomize_zoo_model(model, images, seed, HEAD_SPREADS[name])
        models[name] = model
        models[name + OPTIMIZED] = optimize_for_inference(model)
    return models


# -- checks ------------------------------------------------------------------------------------


@torch.inference_mode()
def yolact_agreement(plain: Yolact, optimized: Yolact, images: list[Tensor]) -> tuple[float, str]:
    """Largest relative difference ``max |a - b| / max |a|`` between the raw outputs of two
    YOLACTs on the same batch, and the output it is in."""
    batch, _ = plain.preprocess(images)
    expected, got = plain(batch), optimized(batch)
    differences = {
        field: relative_difference(getattr(got, field), getattr(expected, field))
        for field in ("box_deltas", "class_logits", "mask_coefficients", "prototypes")
    }
    worst = max(differences, key=differences.get)
    return differences[worst], worst


@torch.inference_mode()
def nms_inputs_per_image(model: PansightModel, images: list[Tensor]) -> list[int]:
    """Per image, the (candidate, class) pairs ``model`` hands to NMS: YOLACT's ``top_k`` best
    of the anchors over the score threshold, for every class; Mask R-CNN's (RoI, class) pairs
    over the score threshold."""
    batch, _ = model.preprocess(images)
    outputs = model(batch)
    config = model.config
    if isinstance(model, Yolact):
        objects = outputs.class_logits.softmax(dim=-1)[..., 1:]
        anchors = (objects.max(dim=-1).values > config.score_thresh).sum(dim=1)
        return [model.num_classes * min(int(count), config.top_k) for count in anchors]
    scores = outputs.class_logits.softmax(dim=-1)[:, 1:].split([len(p) for p in outputs.proposals])
    return [int((image_scores > config.score_thresh).sum()) for image_scores in scores]


def input_size(model: PansightModel, images: list[Tensor]) -> str:
    """``HxW`` of the network input ``model`` makes of ``images`` (padding included)."""
    batch, _ = model.preprocess(images)
    return "x".join(map(str, batch.tensor.shape[-2:]))


@dataclass
class ModelChecks:
    """What the latency table shows besides the times.

    Attributes:
        detections: per model (optimized copies too), the detections of each image.
        input_sizes: per zoo model, ``HxW`` of its network input.
        nms_inputs: per zoo model, the (candidate, class) pairs entering NMS in each image.
        agreement: per zoo model, the largest relative difference between the network outputs
            of its optimized copy and its own, and the output it is in.
        optimized: whether both optimized copies agree within :data:`MAX_RELATIVE_DIFF`.
    """

    detections: dict[str, list[int]]
    input_sizes: dict[str, str]
    nms_inputs: dict[str, list[int]]
    agreement: dict[str, tuple[float, str]]
    optimized: bool


def check_models(models: dict[str, PansightModel], images: list[Tensor]) -> ModelChecks:
    """Run every model once on ``images`` and fill :class:`ModelChecks`."""
    detections = {
        name: [len(r.boxes) for r in model.predict(images)] for name, model in models.items()
    }
    agreement = {
        YOLACT: yolact_agreement(models[YOLACT], models[YOLACT + OPTIMIZED], images),
        MASK_RCNN: network_agreement(models[MASK_RCNN], models[MASK_RCNN + OPTIMIZED], images),
    }
    return ModelChecks(
        detections=detections,
        input_sizes={name: input_size(models[name], images) for name in agreement},
        nms_inputs={name: nms_inputs_per_image(models[name], images) for name in agreement},
        agreement=agreement,
        optimized=all(diff <= MAX_RELATIVE_DIFF for diff, _ in agreement.values()),
    )


# -- report ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load = load_average()
    set_threads_and_print_header(args.threads)
    images = bench_images(args.images, tuple(args.size), args.seed)
    models = build_models(images, args.seed)
    checks = check_models(models, images)
    calls = {name: (lambda model=model: model.predict(images)) for name, model in models.items()}
    timings = alternate_timings(calls, args.runs, args.warmup)
    per_image = {
        name: [seconds / args.images for seconds in values] for name, values in timings.items()
    }

    sets = candidate_sets(
        args.nms_sets, args.nms_objects, args.nms_candidates, args.nms_jitter, args.seed
    )
    nms_timings, differences = compare_nms(sets, args.nms_runs)

    height, width = args.size
    print(
        f"YOLACT-R50 (550x550) vs Mask R-CNN R50-FPN (shorter side 800), {args.images} x "
        f"{height}x{width} synthetic-world image(s) per call, {args.threads} threads, median "
        f"of {args.runs} alternating runs after {args.warmup} warm-up (load average {load})"
    )
    latency_ratio = print_latency(checks, per_image)
    print(
        f"\nNMS on {args.nms_sets} candidate sets of {args.nms_candidates} boxes (copies of "
        f"{args.nms_objects} objects, jitter {args.nms_jitter}) x {NUM_CLASSES} classes, "
        f"IoU {NMS_THRESH}, top {TOP_K} per class, median of {args.nms_runs} alternating runs "
        f"after {NMS_WARMUP} warm-up"
    )
    fast_nms_ratio = print_nms(args, nms_timings, differences)
    print_result({"latency_ratio": latency_ratio, "fast_nms_ratio": fast_nms_ratio})


def print_latency(checks: ModelChecks, per_image: dict[str, list[float]]) -> float:
    """Print the agreement lines and the latency table; return the ``result:`` latency ratio."""
    for name, (difference, worst) in checks.agreement.items():
        print(
            f"{name}{OPTIMIZED} vs {name}, network outputs: largest relative difference "
            f"{difference:.1e} ({worst})"
        )
    seconds = medians(per_image)
    print(f"\n{LATENCY_TABLE.header()}")
    for name in per_image:
        base = name.removesuffix(OPTIMIZED)
        reference = MASK_RCNN + name.removeprefix(base)
        print(
            LATENCY_TABLE.row(
                name,
                checks.input_sizes[base],
                1000 * seconds[name],
                1000 * min(per_image[name]),
                seconds[name] / seconds[reference],
                spread(checks.detections[name]),
                spread(checks.nms_inputs[base]),
            )
        )
    print("(vs mask_rcnn: over the Mask R-CNN of the same path, plain or optimized)")
    suffix = OPTIMIZED if checks.optimized else ""
    path = "optimize_for_inference copies" if checks.optimized else "plain models"
    print(f"result path: {path} of both ({YOLACT}{suffix} / {MASK_RCNN}{suffix})")
    return seconds[YOLACT + suffix] / seconds[MASK_RCNN + suffix]


def spread(values: list[int]) -> str:
    """``a`` when all values are equal, else ``min-max``."""
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}-{high}"


def print_nms(
    args: argparse.Namespace,
    timings: dict[str, list[float]],
    differences: dict[str, dict[str, int]],
) -> float:
    """Print the NMS table and the kept-pair differences; return the ``result:`` ratio."""
    per_set = {name: seconds / args.nms_sets for name, seconds in medians(timings).items()}
    print(NMS_TABLE.header())
    for name, median in per_set.items():
        fastest = min(timings[name]) / args.nms_sets
        print(NMS_TABLE.row(name, 1000 * median, 1000 * fastest, median / per_set["standard"]))
    for cut, counts in differences.items():
        print(
            f"kept pairs ({cut}), all sets: fast {counts['fast']}, standard {counts['standard']}; "
            f"only fast {counts['only fast']}, only standard {counts['only standard']}"
        )
    return per_set["fast"] / per_set["standard"]


if __name__ == "__main__":
    main()
