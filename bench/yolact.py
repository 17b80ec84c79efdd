"""YOLACT-R50 at 550 against our Mask R-CNN-R50-FPN at 800 on CPU, and Fast NMS against
torchvision's batched NMS.

Latency: ``yolact_r50`` (every image resized to 550x550) and ``mask_rcnn_r50_fpn`` (shorter
side resized to 800) are built from the zoo for COCO's 80 class names with random weights and
run ``predict`` on the same images: ``--images`` synthetic-world scenes
(:class:`~pansight.data.shapes.ShapesDataset`, ``val`` split, ``multi`` mode) rendered at
``--size`` (800x1066 by default, a COCO-like 3:4 frame), float in ``[0, 1]``. Both models get
the same random weights recipe, so that activations stay bounded and detections vary: batch-norm
statistics measured on the bench images, batch-norm scales and shifts drawn at random, and the
heads' outputs scaled to a fixed spread (class logits std 1 plus a bias drawn from N(0, 1), box
deltas std 1, YOLACT's mask coefficients and the RPN objectness std 1). Both keep their default
score threshold (0.05); the table prints the detections per image (both models keep their
maximum of 100) and the (candidate, class) pairs that enter NMS, so the reader sees that the
comparison is fair. Each model runs as built and as
:func:`pansight.models.fuse.optimize_for_inference`'s copy (batch norms folded, channels-last);
the optimized copies are used for the ``result:`` ratio when their network outputs match the
plain models' within float rounding for both models, otherwise the plain models are (the line
before ``result:`` names the path). After ``--warmup`` calls each, the four models run
alternately ``--runs`` times on the same batch; the medians per image are compared.

NMS: YOLACT-like candidate sets, ``--nms-sets`` of them: ``--nms-candidates`` boxes in a
550-pixel frame, each a copy of one of ``--nms-objects`` objects moved and rescaled by a few
per cent (``--nms-jitter``, see :func:`nms_candidates`; suppression happens within each cluster
of copies), and a score for each of 80 classes (higher for the object's own class). Fast NMS
(:func:`pansight.ops.nms.fast_nms`) and standard NMS (:func:`pansight.ops.nms.standard_nms`,
torchvision's ``batched_nms``) run on the identical tensors with YOLACT's settings (IoU 0.5, the
top 200 candidates of every class, 100 detections kept), alternating, ``--nms-runs`` times after
a warm-up. The kept (candidate, class) pairs are compared with and without the cut to 100: Fast
NMS lets suppressed boxes suppress too, so before the cut it keeps a subset of standard NMS's
pairs; after it, Fast NMS's 100 can reach lower-scoring pairs that standard NMS's 100 do not.

Usage: ``python bench/yolact.py [--runs 5] [--warmup 1] [--threads 2] [--images 1]``
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from rcnn_agreement import network_agreement
from rcnn_inference import MAX_RELATIVE_DIFF
from timing import alternate_timings, print_header
from torch import Tensor, nn
from torchvision.ops import box_convert

from pansight.data.shapes import ShapesDataset
from pansight.models.base import PansightModel
from pansight.models.fuse import optimize_for_inference
from pansight.models.yolact.model import Yolact
from pansight.models.yolact.original_import import coco_80_class_names
from pansight.models.zoo import build_model
from pansight.ops.nms import fast_nms, standard_nms
from pansight.structures import ImageBatch

YOLACT, MASK_RCNN = "yolact_r50", "mask_rcnn_r50_fpn"
NUM_CLASSES = len(coco_80_class_names())
"""COCO's 80 classes: the class names of both models and the classes of the NMS candidates."""
OptimizED = " optimized"
"""Suffix of the name of a model's :func:`optimize_for_inference` copy."""

SPREADS: dict[str, dict[str, tuple[float, float]]] = {
    YOLACT: {
        "head.conf_layer": (1.0, 1.0),
        "head.bbox_layer": (1.0, 0.0),
        "head.mask_layer": (1.0, 0.0),
    },
    MASK_RCNN: {
        "box_predictor.cls_score": (1.0, 1.0),
        "box_predictor.bbox_pred": (1.0, 0.0),
        "rpn_head.cls_logits": (1.0, 0.0),
    },
}
"""Per model, head layer -> ``(std of its output without the bias, std of the random bias)``."""

NMS_THRESH, TOP_K, MAX_DETECTIONS = 0.5, 200, 100
"""YOLACT's NMS settings (:class:`~pansight.models.yolact.model.YolactConfig`'s defaults)."""
NMS_FRAME = 550
"""Side of the square frame the NMS candidate boxes lie in, in pixels."""
OBJECT_SIDES = (16, 300)
"""Smallest and largest side of the NMS candidates' objects, in pixels."""
NMS_WARMUP = 2
"""Untimed calls per NMS method before the timed ones."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed calls per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--images", type=int, default=1, help="images per call (one batch)")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1066), metavar=("H", "W"))
    parser.add_argument("--nms-runs", type=int, default=50, help="timed calls per NMS method")
    parser.add_argument("--nms-sets", type=int, default=10, help="candidate sets per NMS call")
    parser.add_argument("--nms-candidates", type=int, default=2000, help="boxes per set")
    parser.add_argument("--nms-objects", type=int, default=40, help="objects per set")
    parser.add_argument(
        "--nms-jitter", type=float, default=0.05, help="std of a copy's shift, times its sides"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# -- the models --------------------------------------------------------------------------------


def bench_images(count: int, size: tuple[int, int], seed: int) -> list[Tensor]:
    """``count`` ``(3, H, W)`` synthetic-world scenes in ``[0, 1]``."""
    world = ShapesDataset(split="val", mode="multi", num_images=count, image_size=size, seed=seed)
    return [world[index][0] for index in range(count)]


@torch.no_grad()
def randomize(name: str, model: PansightModel, images: list[Tensor], seed: int) -> None:
    """The bench's random weights for zoo model ``name`` (see the module docstring):
    batch-norm statistics of ``images``, random batch-norm affine maps, and the head layers of
    ``SPREADS[name]`` scaled to their output spread on ``images``."""
    torch.manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    batch, _ = model.preprocess(images)
    model.body.train()
    model.body(model.normalize(batch.tensor))
    model.body.eval()
    for norm in norms:
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.2)
    outputs = layer_outputs(model, batch, list(SPREADS[name]))
    for layer_name, (output_std, bias_std) in SPREADS[name].items():
        layer = model.get_submodule(layer_name)
        layer.weight.mul_(output_std / (outputs[layer_name] - layer.bias).std())
        layer.bias.normal_(0, bias_std)


def layer_outputs(model: nn.Module, batch: ImageBatch, names: list[str]) -> dict[str, Tensor]:
    """Every output of the layers ``names`` in one forward pass over ``batch``, each layer's
    outputs moved to channels-last and flattened to ``(N, channels)``."""
    outputs: dict[str, list[Tensor]] = defaultdict(list)

    def recorder(name: str) -> Callable:
        def record(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            channels = output.movedim(1, -1) if output.dim() == 4 else output
            outputs[name].append(channels.reshape(-1, output.shape[1]))

        return record

    hooks = [model.get_submodule(name).register_forward_hook(recorder(name)) for name in names]
    try:
        model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.cat(values) for name, values in outputs.items()}


def build_models(images: list[Tensor], seed: int) -> dict[str, PansightModel]:
    """Both zoo models with the bench's random weights, and their optimized copies."""
    models: dict[str, PansightModel] = {}
    for name in (YOLACT, MASK_RCNN):
        model = build_model(name, coco_80_class_names()).eval()
        randomize(name, model, images, seed)
        models[name] = model
        models[name + OptimizED] = optimize_for_inference(model)
    return models


# -- checks ------------------------------------------------------------------------------------


@torch.inference_mode()
def yolact_agreement(plain: Yolact, optimized: Yolact, images: list[Tensor]) -> tuple[float, str]:
    """Largest relative difference ``max |a - b| / max |a|`` between the raw outputs of two
    YOLACTs on the same batch, and the output it is in."""
    batch, _ = plain.preprocess(images)
    expected, got = plain(batch), optimized(batch)
    differences = {}
    for field in ("box_deltas", "class_logits", "mask_coefficients", "prototypes"):
        reference = getattr(expected, field)
        scale = reference.abs().max().clamp(min=1e-12)
        differences[field] = ((getattr(got, field) - reference).abs().max() / scale).item()
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
        YOLACT: yolact_agreement(models[YOLACT], models[YOLACT + OptimizED], images),
        MASK_RCNN: network_agreement(models[MASK_RCNN], models[MASK_RCNN + OptimizED], images),
    }
    return ModelChecks(
        detections=detections,
        input_sizes={name: input_size(models[name], images) for name in agreement},
        nms_inputs={name: nms_inputs_per_image(models[name], images) for name in agreement},
        agreement=agreement,
        optimized=all(diff <= MAX_RELATIVE_DIFF for diff, _ in agreement.values()),
    )


# -- NMS ---------------------------------------------------------------------------------------


def nms_candidates(args: argparse.Namespace, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One candidate set: ``(N, 4)`` xyxy boxes in a :data:`NMS_FRAME` square and ``(C, N)``
    scores in ``[0, 1)``.

    ``--nms-objects`` objects get random centers, sides between :data:`OBJECT_SIDES` pixels
    (log-uniform) and a class each. Every candidate copies a random object, its center moved by
    ``N(0, jitter)`` times the object's sides and its sides scaled by ``exp(N(0, 2 jitter))``
    (``--nms-jitter``). Scores are ``U(0, 0.3)``, plus ``U(0, 0.7)`` for the copied object's
    class.
    """
    objects, candidates, jitter = args.nms_objects, args.nms_candidates, args.nms_jitter
    centers = torch.rand(objects, 2, generator=generator) * NMS_FRAME
    low, high = (math.log(side) for side in OBJECT_SIDES)
    sides = torch.empty(objects, 2).uniform_(low, high, generator=generator).exp()
    classes = torch.randint(NUM_CLASSES, (objects,), generator=generator)
    owner = torch.randint(objects, (candidates,), generator=generator)
    shift = jitter * torch.randn(candidates, 2, generator=generator) * sides[owner]
    scale = (2 * jitter * torch.randn(candidates, 2, generator=generator)).exp()
    boxes = box_convert(
        torch.cat([centers[owner] + shift, sides[owner] * scale], dim=1), "cxcywh", "xyxy"
    )
    scores = 0.3 * torch.rand(NUM_CLASSES, candidates, generator=generator)
    own_class = torch.zeros(NUM_CLASSES, candidates, dtype=torch.bool)
    own_class[classes[owner], torch.arange(candidates)] = True
    scores = scores + own_class * 0.7 * torch.rand(NUM_CLASSES, candidates, generator=generator)
    return boxes.clamp(0, NMS_FRAME), scores


def kept_pairs(result: tuple[Tensor, Tensor, Tensor]) -> set[tuple[int, int]]:
    """The kept ``(candidate, class)`` pairs of an NMS result."""
    indices, labels, _ = result
    return set(zip(indices.tolist(), labels.tolist()))


def nms_differences(sets: list[tuple[Tensor, Tensor]], max_detections: int) -> dict[str, int]:
    """Kept pairs of both methods over ``sets``: in total, and only by one of them."""
    counts = dict.fromkeys(("fast", "standard", "only fast", "only standard"), 0)
    for boxes, scores in sets:
        fast = kept_pairs(fast_nms(boxes, scores, NMS_THRESH, TOP_K, max_detections))
        standard = kept_pairs(standard_nms(boxes, scores, NMS_THRESH, TOP_K, max_detections))
        counts["fast"] += len(fast)
        counts["standard"] += len(standard)
        counts["only fast"] += len(fast - standard)
        counts["only standard"] += len(standard - fast)
    return counts


def nms_calls(sets: list[tuple[Tensor, Tensor]]) -> dict[str, Callable[[], None]]:
    """Each method run over all ``sets`` with YOLACT's settings."""

    def call(method: Callable) -> Callable[[], None]:
        def run_all() -> None:
            for boxes, scores in sets:
                method(boxes, scores, NMS_THRESH, TOP_K, MAX_DETECTIONS)

        return run_all

    return {"fast": call(fast_nms), "standard": call(standard_nms)}


def measure_nms(
    args: argparse.Namespace,
) -> tuple[dict[str, list[float]], dict[str, dict[str, int]]]:
    """Seconds of each method per call over all candidate sets, alternating, and the kept-pair
    counts of :func:`nms_differences` with and without the cut to :data:`MAX_DETECTIONS`."""
    generator = torch.Generator().manual_seed(args.seed)
    sets = [nms_candidates(args, generator) for _ in range(args.nms_sets)]
    timings = alternate_timings(nms_calls(sets), args.nms_runs, NMS_WARMUP)
    differences = {
        f"top {MAX_DETECTIONS}": nms_differences(sets, MAX_DETECTIONS),
        "no cut": nms_differences(sets, NUM_CLASSES * TOP_K),
    }
    return timings, differences


# -- report ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    torch.set_num_threads(args.threads)
    print_header()
    images = bench_images(args.images, tuple(args.size), args.seed)
    models = build_models(images, args.seed)
    checks = check_models(models, images)
    calls = {name: (lambda model=model: model.predict(images)) for name, model in models.items()}
    timings = alternate_timings(calls, args.runs, args.warmup)
    per_image = {
        name: [seconds / args.images for seconds in values] for name, values in timings.items()
    }

    nms_timings, differences = measure_nms(args)

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
    print(f"result: latency_ratio={latency_ratio:.3f} fast_nms_ratio={fast_nms_ratio:.3f}")


def print_latency(checks: ModelChecks, per_image: dict[str, list[float]]) -> float:
    """Print the agreement lines and the latency table; return the ``result:`` latency ratio."""
    for name, (difference, worst) in checks.agreement.items():
        print(
            f"{name}{OptimizED} vs {name}, network outputs: largest relative difference "
            f"{difference:.1e} ({worst})"
        )
    medians = {name: statistics.median(values) for name, values in per_image.items()}
    print(
        f"\n{'model':<28} {'input':>10} {'median ms/img':>14} {'min ms/img':>11} "
        f"{'vs mask_rcnn':>13} {'detections/img':>15} {'NMS pairs/img':>14}"
    )
    for name in per_image:
        base = name.removesuffix(OptimizED)
        reference = MASK_RCNN + name.removeprefix(base)
        print(
            f"{name:<28} {checks.input_sizes[base]:>10} {1000 * medians[name]:>14.0f} "
            f"{1000 * min(per_image[name]):>11.0f} {medians[name] / medians[reference]:>13.3f} "
            f"{spread(checks.detections[name]):>15} {spread(checks.nms_inputs[base]):>14}"
        )
    print("(vs mask_rcnn: over the Mask R-CNN of the same path, plain or optimized)")
    suffix = OptimizED if checks.optimized else ""
    path = "optimize_for_inference copies" if checks.optimized else "plain models"
    print(f"result path: {path} of both ({YOLACT}{suffix} / {MASK_RCNN}{suffix})")
    return medians[YOLACT + suffix] / medians[MASK_RCNN + suffix]


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
    medians = {name: statistics.median(values) / args.nms_sets for name, values in timings.items()}
    print(f"{'method':<10} {'median ms/set':>14} {'min ms/set':>11} {'ratio':>6}")
    for name, median in medians.items():
        fastest = min(timings[name]) / args.nms_sets
        print(
            f"{name:<10} {1000 * median:>14.2f} {1000 * fastest:>11.2f} "
            f"{median / medians['standard']:>6.3f}"
        )
    for cut, counts in differences.items():
        print(
            f"kept pairs ({cut}), all sets: fast {counts['fast']}, standard {counts['standard']}; "
            f"only fast {counts['only fast']}, only standard {counts['only standard']}"
        )
    return medians["fast"] / medians["standard"]


if __name__ == "__main__":
    main()
