"""Eager PyTorch against onnxruntime fp32, per exportable model, on the same preprocessed batch.

Each model is built with random weights (seeded), exported with a dynamic batch axis to a
temporary file by :func:`pansight.export.export_onnx` and opened with
:class:`pansight.export.OnnxPredictor` at ``--threads`` intra-op threads (torch gets the same
number). Both run the network only, images already resized by the model's ``preprocess``:

- ``eager``: ``model(batch)`` under ``torch.inference_mode``;
- ``ort fp32``: ``predictor(batch)`` (numpy in, the model's ``Outputs`` back).

After ``--warmup`` calls each, the two run alternately ``--runs`` times; the medians are
compared. ``max |diff|`` is the largest absolute difference of the first output (logits).

Usage: ``python bench/export.py [--runs 20] [--warmup 3] [--threads 2] [--images 1]
[--models classifier_r18 fcn8s_r18] [--size 224]``; the last line is
``result: <model>_ort_ratio=<onnxruntime median / eager median> ...``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from timing import alternate_timings

from pansight.export import OnnxPredictor, export_onnx, exportable_models
from pansight.models.zoo import build_model

DEFAULT_MODELS = ("classifier_r18", "localizer_r18", "fcn8s_r18")
BACKENDS = ("eager", "ort fp32")
NUM_CLASSES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--runs", type=int, default=20, help="timed calls per backend")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per backend first")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both")
    parser.add_argument("--images", type=int, default=1, help="images per call (one batch)")
    parser.add_argument("--size", type=int, help="input_size of every model (default: its own)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(exportable_models()))
    if unknown:
        parser.error(f"not exportable: {', '.join(unknown)}; choose from {exportable_models()}")
    return args


def backend_calls(
    name: str, args: argparse.Namespace, folder: Path
) -> tuple[dict[str, Callable[[], torch.Tensor]], float]:
    """The eager and onnxruntime calls of model ``name`` on one batch, and the largest absolute
    difference of their first outputs."""
    torch.manual_seed(args.seed)
    overrides = {} if args.size is None else {"input_size": args.size}
    model = build_model(name, [f"class{k}" for k in range(NUM_CLASSES)], overrides).eval()
    path = export_onnx(model, folder / f"{name}.onnx", dynamic=True)
    predictor = OnnxPredictor(path, threads=args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    images = [torch.rand(3, 96, 128, generator=generator) for _ in range(args.images)]
    batch, _ = model.preprocess(images)
    first_output = predictor.spec.output_names[0]

    def eager() -> torch.Tensor:
        with torch.inference_mode():
            return getattr(model(batch), first_output)

    def ort() -> torch.Tensor:
        return getattr(predictor(batch), first_output)

    difference = float((eager() - ort()).abs().max())
    return dict(zip(BACKENDS, (eager, ort))), difference


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} images={args.images} runs={args.runs} warmup={args.warmup}")
    print(f"{'model':18s} {'eager ms':>9s} {'ort ms':>9s} {'ort/eager':>9s} {'max |diff|':>11s}")
    ratios = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            calls, difference = backend_calls(name, args, Path(folder))
            timings = alternate_timings(calls, args.runs, args.warmup)
            eager, ort = (statistics.median(timings[backend]) for backend in BACKENDS)
            ratios[name] = ort / eager
            print(
                f"{name:18s} {eager * 1e3:9.2f} {ort * 1e3:9.2f} {ratios[name]:9.3f} "
                f"{difference:11.2e}"
            )
    print("result: " + " ".join(f"{name}_ort_ratio={ratio:.3f}" for name, ratio in ratios.items()))


if __name__ == "__main__":
    main()
