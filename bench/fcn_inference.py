"""FCN inference on CPU: pansight's FCN against torchvision's fcn_resnet50, identical weights.

torchvision's ``fcn_resnet50`` gets random weights (``bench/random_weights.py``: batch-norm
statistics of the bench images, random batch-norm scales and shifts) and its state dict is
imported into pansight's ``fcn_resnet50`` (dilated ResNet-50, ``FCNHead``) with
:func:`pansight.models.fcn.torchvision_import.import_torchvision_fcn`. All run the network only:
images in, class scores at every input pixel out. Three rows: ``torchvision``
(``model(images)``, normalized outside), ``ours`` (``model(batch)``) and ``ours optimized``
(:func:`pansight.models.fuse.optimize_for_inference`: batch norms folded, channels-last), the
path whose ratios ``result:`` gives.

Latency: after ``--warmup`` calls each, the models run alternately ``--runs`` times on the same
batch; medians are compared. Peak memory: each model runs once in a fresh subprocess
(``bench/rss.py``); ``peak MiB`` is the resident memory the call adds at its peak (weights and
images are resident before it), ``total MiB`` the process's peak.

Usage: ``python bench/fcn_inference.py [--runs 5] [--warmup 1] [--threads 2] [--size 520]``

Ends with ``result: latency_ratio=<ours optimized / torchvision, median time>
memory_ratio=<ours optimized / torchvision, peak MiB>``.
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable

import torch
from agreement import relative_difference
from arguments import add_images_flag, add_seed_flag, add_timing_flags, bench_parser
from random_weights import randomize_batch_norms
from report import Column, Table, load_average, print_result, set_threads_and_print_header
from rss import (
    MIB,
    add_child_flags,
    forwarded_flags,
    peak_memory_in_children,
    print_call_peak,
)
from synthetic_images import blob_images
from timing import alternate_timings, medians
from torch import Tensor
from torchvision.models.segmentation import fcn_resnet50

from pansight.models.base import IMAGENET_MEAN, IMAGENET_STD
from pansight.models.fcn.model import FCN, FCNConfig
from pansight.models.fcn.torchvision_import import import_torchvision_fcn
from pansight.models.fuse import optimize_for_inference
from pansight.structures import ImageBatch

NUM_CLASSES = 21
"""Pascal VOC's 20 classes and background, as torchvision's FCN weights have."""
MODELS = ("torchvision", "ours", "ours optimized")
TABLE = Table(
    Column("model", 15, align="<"),
    Column("median ms", 10, ".0f"),
    Column("min ms", 10, ".0f"),
    Column("peak MiB", 9, ".0f"),
    Column("total MiB", 10, ".0f"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    add_timing_flags(parser, runs=5, warmup=1)
    add_images_flag(parser)
    parser.add_argument("--size", type=int, default=520, help="image side in pixels")
    add_seed_flag(parser)
    add_child_flags(parser, MODELS)
    return parser.parse_args(argv)


# -- the models --------------------------------------------------------------------------------


def normalize(images: Tensor) -> Tensor:
    """ImageNet-normalized images, computed as :meth:`PansightModel.normalize` does."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def torchvision_model() -> torch.nn.Module:
    """torchvision's FCN ResNet-50 with random weights, as built."""
    return fcn_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)


def random_state_dict(normalized: Tensor, seed: int) -> dict[str, Tensor]:
    """The weights of :func:`torchvision_model` randomized on the ``(B, 3, H, W)``
    ``normalized`` images (:func:`randomize_batch_norms`)."""
    model = torchvision_model()
    randomize_batch_norms(model, model, lambda: model(normalized), seed)
    return model.state_dict()


def our_model(state_dict: dict[str, Tensor], size: int) -> FCN:
    config = FCNConfig(backbone="resnet50", head="dilated", input_size=size)
    model = FCN(config, [f"class{i}" for i in range(NUM_CLASSES)])
    import_torchvision_fcn(model, state_dict)
    return model.eval()


def calls(
    models: dict[str, torch.nn.Module], images: Tensor, normalized: Tensor
) -> dict[str, Callable[[], Tensor]]:
    """Each model's call on the bench images, returning its ``(B, K, H, W)`` scores."""
    batch = ImageBatch.from_images(list(images))

    def torchvision_call() -> Tensor:
        with torch.inference_mode():
            return models["torchvision"](normalized)["out"]

    def our_call(name: str) -> Callable[[], Tensor]:
        def call() -> Tensor:
            with torch.inference_mode():
                return models[name](batch).logits

        return call

    table = {"torchvision": torchvision_call}
    return table | {name: our_call(name) for name in MODELS[1:] if name in models}


def build_models(state_dict: dict[str, Tensor], size: int, which: tuple[str, ...]):
    """The models named in ``which``, all holding ``state_dict``."""
    models: dict[str, torch.nn.Module] = {}
    if "torchvision" in which:
        models["torchvision"] = torchvision_model()
        models["torchvision"].load_state_dict(state_dict)
        models["torchvision"].eval()
    if "ours" in which or "ours optimized" in which:
        ours = our_model(state_dict, size)
        if "ours optimized" in which:
            models["ours optimized"] = optimize_for_inference(ours)
        if "ours" in which:
            models["ours"] = ours
    return models


# -- measurements ------------------------------------------------------------------------------


def peak_memory_child(args: argparse.Namespace) -> None:
    """Subprocess body: build one model, run it once, print its peak RSS figures in bytes."""
    torch.set_num_threads(args.threads)
    saved = torch.load(args.state)
    images, normalized = saved["images"], saved["normalized"]
    models = build_models(saved["state_dict"], args.size, (args.memory_of,))
    call = calls(models, images, normalized)[args.memory_of]
    del saved
    print_call_peak(call)


def agreement_of(scores: Tensor, expected: Tensor) -> tuple[float, float]:
    """``(max |score difference| / max |score|, share of pixels with the same argmax)`` of
    ``(B, K, H, W)`` scores."""
    same = (scores.argmax(dim=1) == expected.argmax(dim=1)).float().mean().item()
    return relative_difference(scores, expected), same


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_of:
        peak_memory_child(args)
        return
    set_threads_and_print_header(args.threads)
    images = blob_images(args.images, args.size, args.size, args.seed)
    normalized = normalize(images)
    state_dict = random_state_dict(normalized, args.seed)
    models = build_models(state_dict, args.size, MODELS)
    timed = calls(models, images, normalized)

    expected = timed["torchvision"]()
    agreement = {name: agreement_of(timed[name](), expected) for name in MODELS[1:]}
    timings = alternate_timings(timed, args.runs, args.warmup)
    del models, timed
    gc.collect()
    state = {"state_dict": state_dict, "images": images, "normalized": normalized}
    flags = forwarded_flags(args, ("threads", "images", "size", "seed"))
    memory = peak_memory_in_children(__file__, MODELS, state, flags)
    report(args, agreement, timings, memory)


def report(
    args: argparse.Namespace,
    agreement: dict[str, tuple[float, float]],
    timings: dict[str, list[float]],
    memory: dict[str, tuple[int, int]],
) -> None:
    print(
        f"FCN ResNet-50 (dilated, output stride 8) inference, {args.images} x "
        f"{args.size}x{args.size} images per call, {args.threads} threads, median of "
        f"{args.runs} alternating runs after {args.warmup} warm-up "
        f"(load average {load_average()})"
    )
    for name, (relative, same) in agreement.items():
        print(
            f"{name} vs torchvision: max |score diff| {relative:.1e} of max |score|, "
            f"same class at {100 * same:.3f} % of pixels"
        )
    seconds = medians(timings)
    print(f"\n{TABLE.header()}")
    for name in MODELS:
        increase, total = memory[name]
        fastest = min(timings[name])
        print(TABLE.row(name, 1000 * seconds[name], 1000 * fastest, increase / MIB, total / MIB))
    print("(peak MiB: resident memory the call adds at its peak; total MiB: process peak)")
    plain = seconds["ours"] / seconds["torchvision"]
    print(f"ours (not optimized) / torchvision latency: {plain:.3f}")
    print_result(
        {
            "latency_ratio": seconds["ours optimized"] / seconds["torchvision"],
            "memory_ratio": memory["ours optimized"][0] / memory["torchvision"][0],
        }
    )


if __name__ == "__main__":
    main()
