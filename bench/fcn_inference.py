"""FCN inference on CPU: pansight's FCN against torchvision's fcn_resnet50, identical weights.

torchvision's ``fcn_resnet50`` is built with random weights (batch-norm statistics measured on
the bench images, batch-norm scales and shifts drawn at random) and its state dict is imported
into pansight's ``fcn_resnet50`` (dilated ResNet-50, ``FCNHead``) with
:func:`pansight.models.fcn.torchvision_import.import_torchvision_fcn`.
Both run the network only: images in,
class scores at every input pixel out (ours normalizes the pixels inside; torchvision gets them
normalized). Three rows:

- ``torchvision``: ``model(images)`` under ``torch.inference_mode``;
- ``ours``: ``model(batch)``, the model as built or loaded;
- ``ours optimized``: :func:`pansight.models.fuse.optimize_for_inference` (batch norms folded
  into the convolutions, channels-last memory format), the path whose ratio ``result:`` gives.

Latency: after ``--warmup`` calls each, the models run alternately ``--runs`` times on the
same batch; the medians are compared.

Peak memory: each model runs once in a fresh subprocess (same weights and images, from a
temporary file). The subprocess resets the kernel's peak-RSS counter (``/proc/self/clear_refs``)
just before the call and reads ``VmHWM`` after it; the number reported is the peak resident
memory above the resident memory right before the call (weights and images are resident
already, so this is the memory the inference itself needs).

Usage: ``python bench/fcn_inference.py [--runs 5] [--warmup 1] [--threads 2] [--size 520]``
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from rss import call_peak_bytes
from timing import alternate_timings, print_header
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed calls per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per model first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--images", type=int, default=1, help="images per call (one batch)")
    parser.add_argument("--size", type=int, default=520, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-of", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- the models --------------------------------------------------------------------------------


def bench_images(count: int, size: int, seed: int) -> Tensor:
    """``(count, 3, size, size)`` images in ``[0, 1]``: smooth random blobs plus pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, size // 32, size // 32, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    noise = torch.rand(count, 3, size, size, generator=generator)
    return (0.8 * smooth + 0.2 * noise).clamp(0, 1)


def normalize(images: Tensor) -> Tensor:
    """ImageNet-normalized images, computed as :meth:`PansightModel.normalize` does."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def our_model(state_dict: dict[str, Tensor], size: int) -> FCN:
    config = FCNConfig(backbone="resnet50", head="dilated", input_size=size)
    model = FCN(config, [f"class{i}" for i in range(NUM_CLASSES)])
    import_torchvision_fcn(model, state_dict)
    return model.eval()


@torch.no_grad()
def randomize(model: torch.nn.Module, normalized: Tensor, seed: int) -> None:
    """Batch-norm statistics of the bench images, then random batch-norm scales and shifts."""
    torch.manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    model(normalized)
    model.eval()
    for norm in norms:
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.2)


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
        models["torchvision"] = fcn_resnet50(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES
        )
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
    """Subprocess body: build one model, run it once, print its peak RSS increase in bytes."""
    torch.set_num_threads(args.threads)
    saved = torch.load(args.state)
    images, normalized = saved["images"], saved["normalized"]
    models = build_models(saved["state_dict"], args.size, (args.memory_of,))
    call = calls(models, images, normalized)[args.memory_of]
    del saved
    print(*call_peak_bytes(call))


def peak_memory(args: argparse.Namespace, state_file: Path, which: str) -> tuple[int, int]:
    """``(peak increase during the call, whole-process peak)`` in bytes for ``which``."""
    command = [sys.executable, __file__, "--memory-of", which, "--state", str(state_file)]
    for flag in ("threads", "images", "size", "seed"):
        command += [f"--{flag}", str(getattr(args, flag))]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    increase, total = completed.stdout.split()[-2:]
    return int(increase), int(total)


# -- report ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_of:
        peak_memory_child(args)
        return
    torch.set_num_threads(args.threads)
    print_header()
    images = bench_images(args.images, args.size, args.seed)
    reference = fcn_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    normalized = normalize(images)
    randomize(reference, normalized, args.seed)
    state_dict = reference.state_dict()
    models = build_models(state_dict, args.size, MODELS)
    timed = calls(models, images, normalized)

    expected = timed["torchvision"]()
    agreement = {name: agreement_of(timed[name](), expected) for name in MODELS[1:]}
    timings = alternate_timings(timed, args.runs, args.warmup)
    medians = {name: statistics.median(values) for name, values in timings.items()}

    with tempfile.TemporaryDirectory() as folder:
        state_file = Path(folder) / "state.pt"
        saved = {"state_dict": state_dict, "images": images, "normalized": normalized}
        torch.save(saved, state_file)
        del models, timed, reference
        gc.collect()
        memory = {name: peak_memory(args, state_file, name) for name in MODELS}

    report(args, agreement, timings, medians, memory)


def agreement_of(scores: Tensor, expected: Tensor) -> tuple[float, float]:
    """``(max |score difference| / max |score|, share of pixels with the same argmax)``."""
    relative = ((scores - expected).abs().max() / expected.abs().max()).item()
    same = (scores.argmax(dim=1) == expected.argmax(dim=1)).float().mean().item()
    return relative, same


def report(
    args: argparse.Namespace,
    agreement: dict[str, tuple[float, float]],
    timings: dict[str, list[float]],
    medians: dict[str, float],
    memory: dict[str, tuple[int, int]],
) -> None:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"FCN ResNet-50 (dilated, output stride 8) inference, {args.images} x "
        f"{args.size}x{args.size} images per call, {args.threads} threads, median of "
        f"{args.runs} alternating runs after {args.warmup} warm-up (load average {load})"
    )
    for name, (relative, same) in agreement.items():
        print(
            f"{name} vs torchvision: max |score diff| {relative:.1e} of max |score|, "
            f"same class at {100 * same:.3f} % of pixels"
        )
    header = f"{'model':<15} {'median ms':>10} {'min ms':>10} {'peak MiB':>9} {'total MiB':>10}"
    print(f"\n{header}")
    for name in MODELS:
        increase, total = memory[name]
        print(
            f"{name:<15} {1000 * medians[name]:>10.0f} {1000 * min(timings[name]):>10.0f} "
            f"{increase / 2**20:>9.0f} {total / 2**20:>10.0f}"
        )
    print("(peak MiB: resident memory the call adds at its peak; total MiB: process peak)")
    plain = medians["ours"] / medians["torchvision"]
    print(f"ours (not optimized) / torchvision latency: {plain:.3f}")
    latency_ratio = medians["ours optimized"] / medians["torchvision"]
    memory_ratio = memory["ours optimized"][0] / memory["torchvision"][0]
    print(f"result: latency_ratio={latency_ratio:.3f} memory_ratio={memory_ratio:.3f}")


if __name__ == "__main__":
    main()
