"""Eager PyTorch against onnxruntime fp32 and int8, per exportable model: latency, peak memory
and, for trained models, the task metric.

Each model of ``--models`` is built with random weights (seeded); each ``--checkpoints`` file
(a trained pansight checkpoint) replaces the random model of its name. A model is exported with
a dynamic batch axis by :func:`pansight.export.export_onnx` (checkpoints by
:func:`~pansight.export.export_checkpoint`, which records their training data), quantized to
int8 by :func:`pansight.export.quantize_onnx` (``--calibration-images`` images of the training
split of the checkpoint's data set, or of the synthetic world for random models), and both
files are opened with :class:`pansight.export.OnnxPredictor` at ``--threads`` intra-op threads
(torch gets the same number). All three run the network only, on the same batch already resized
by the model's ``preprocess``:

- ``eager``: ``model(batch)`` under ``torch.inference_mode``;
- ``ort fp32`` / ``ort int8``: ``predictor(batch)`` (numpy in, the model's ``Outputs`` back).

Latency: after ``--warmup`` calls each, the three run alternately ``--runs`` times; medians are
compared. ``|diff|`` is the largest absolute difference of the first output (logits) from eager.

Peak memory: each backend runs in a fresh subprocess that loads only it (the pickled eager model
or the ONNX file) and the batch, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``)
and calls it once; ``call MB`` is the peak resident memory during the call above the resident
memory before it (what inference itself needs: activations, workspaces), ``process MB`` the
process's peak resident memory (libraries and weights included; both kinds of process import
torch, so the difference between backends is their weights and runtime).

Metric (checkpoints only): the task's metric (``mask_AP``, ``mIoU``, ``top1``, ...) of the eager
model and of both files on ``--val-images`` images of the validation split of the checkpoint's
data set, through :func:`pansight.evaluate` (the same preprocessing and postprocessing for all
three); ``drop`` is eager minus int8, in points (x100).

Usage: ``python bench/export.py [--runs 20] [--warmup 3] [--threads 2] [--images 1]
[--models classifier_r18 fcn8s_r18] [--size 224] [--checkpoints runs/sem/model.pt ...]
[--val-images 100] [--calibration-images 32]``; the last line is ``result: <model>_ort_ratio=<ort
fp32 median / eager median> <model>_int8_ratio=<ort int8 median / eager median> ...`` plus
``<model>_int8_drop=<points>`` for checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from rss import call_peak_bytes
from timing import alternate_timings

import pansight
from pansight.config import DataConfig
from pansight.engine.checkpoint import load_checkpoint
from pansight.export import (
    Int8Options,
    OnnxPredictor,
    export_checkpoint,
    export_onnx,
    exportable_models,
    quantize_onnx,
)
from pansight.export.graph import export_spec
from pansight.models.base import PansightModel
from pansight.models.zoo import MODELS, build_model

DEFAULT_MODELS = ("classifier_r18", "localizer_r18", "fcn8s_r18")
BACKENDS = ("eager", "ort fp32", "ort int8")
NUM_CLASSES = 10
METRICS = ("mask_AP", "mIoU", "top1", "mean_IoU", "box_AP")
"""The metric reported per task: the first of these the evaluation gives."""
MIB = 2**20


@dataclasses.dataclass
class Subject:
    """One model under test: the eager model, its two ONNX files, and its checkpoint (``None``
    for random weights)."""

    name: str
    model: PansightModel
    fp32: Path
    int8: Path
    checkpoint: Path | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("--checkpoints", nargs="*", type=Path, default=[], help="trained models")
    parser.add_argument("--runs", type=int, default=20, help="timed calls per backend")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per backend first")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of all")
    parser.add_argument("--images", type=int, default=1, help="images per call (one batch)")
    parser.add_argument("--size", type=int, help="input_size of random models (default: own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-images", type=int, default=100, help="metric images")
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--memory-of", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(exportable_models()))
    if unknown:
        parser.error(f"not exportable: {', '.join(unknown)}; choose from {exportable_models()}")
    return args


# -- subjects ----------------------------------------------------------------------------------


def random_subject(name: str, args: argparse.Namespace, folder: Path) -> Subject:
    """Model ``name`` with seeded random weights, exported, and quantized on synthetic images."""
    torch.manual_seed(args.seed)
    overrides = {} if args.size is None else {"input_size": args.size}
    model = build_model(name, [f"class{k}" for k in range(NUM_CLASSES)], overrides).eval()
    fp32 = export_onnx(model, folder / f"{name}.onnx", dynamic=True)
    single = MODELS[name].task in ("classify", "localize")
    calibration = DataConfig(mode="single" if single else "multi", image_size=128)
    options = Int8Options(calibration=calibration, num_images=args.calibration_images)
    int8 = quantize_onnx(fp32, folder / f"{name}_int8.onnx", options)
    return Subject(name, model, fp32, int8, None)


def trained_subject(checkpoint: Path, args: argparse.Namespace, folder: Path) -> Subject:
    """The model of ``checkpoint``, exported, and quantized on its own training data."""
    name = load_checkpoint(checkpoint)["model_name"]
    model = pansight.load(checkpoint)
    fp32 = export_checkpoint(checkpoint, folder / f"{name}.onnx", dynamic=True)
    options = Int8Options(num_images=args.calibration_images)
    int8 = export_checkpoint(checkpoint, folder / f"{name}_int8.onnx", dynamic=True, int8=options)
    return Subject(name, model, fp32, int8, checkpoint)


def bench_batch(model: PansightModel, args: argparse.Namespace):
    """``args.images`` seeded random images through ``model.preprocess``."""
    generator = torch.Generator().manual_seed(args.seed)
    images = [torch.rand(3, 96, 128, generator=generator) for _ in range(args.images)]
    return model.preprocess(images)[0]


def backend_calls(
    subject: Subject, batch, threads: int, which: tuple[str, ...] = BACKENDS
) -> dict[str, Callable[[], torch.Tensor]]:
    """The calls of the backends ``which`` on ``batch``, each returning its first output."""
    calls: dict[str, Callable[[], torch.Tensor]] = {}
    if "eager" in which:
        first = export_spec(type(subject.model), subject.name).output_names[0]

        def eager() -> torch.Tensor:
            with torch.inference_mode():
                return getattr(subject.model(batch), first)

        calls["eager"] = eager
    for backend, path in (("ort fp32", subject.fp32), ("ort int8", subject.int8)):
        if backend in which:
            predictor = OnnxPredictor(path, threads=threads)
            output = predictor.spec.output_names[0]
            calls[backend] = lambda p=predictor, o=output: getattr(p(batch), o)
    return calls


# -- measurements ------------------------------------------------------------------------------


def peak_memory_child(args: argparse.Namespace) -> None:
    """Subprocess body: load one backend, run it once, print its peak RSS figures in bytes."""
    torch.set_num_threads(args.threads)
    state = torch.load(args.state, weights_only=False)
    call = backend_calls(state["subject"], state["batch"], args.threads, (args.memory_of,))
    del state
    print(*call_peak_bytes(call[args.memory_of]))


def peak_memory(subject: Subject, batch, args: argparse.Namespace, folder: Path) -> dict:
    """``backend -> (call peak increase, process peak)`` in bytes, each from a subprocess."""
    state_file = folder / f"{subject.name}_state.pt"
    peaks = {}
    for backend in BACKENDS:
        needed = subject if backend == "eager" else dataclasses.replace(subject, model=None)
        torch.save({"subject": needed, "batch": batch}, state_file)
        command = [sys.executable, __file__, "--memory-of", backend, "--state", str(state_file)]
        command += ["--threads", str(args.threads)]
        completed = subprocess.run(command, capture_output=True, text=True, check=True)
        increase, total = completed.stdout.split()[-2:]
        peaks[backend] = (int(increase), int(total))
    state_file.unlink()
    return peaks


def metrics(subject: Subject, val_images: int) -> dict[str, tuple[str, float]]:
    """``backend -> (metric name, value)`` on the validation split of the checkpoint's data."""
    values = {}
    for backend, model in zip(BACKENDS, (subject.checkpoint, subject.fp32, subject.int8)):
        found = pansight.evaluate(model, progress=False, num_val=val_images)
        key = next((name for name in METRICS if name in found), next(iter(found)))
        values[backend] = (key, found[key])
    return values


# -- report ------------------------------------------------------------------------------------


def report(subject: Subject, args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """Print the rows of ``subject``; return its ``result:`` entries."""
    batch = bench_batch(subject.model, args)
    calls = backend_calls(subject, batch, args.threads)
    expected = calls["eager"]()
    differences = [float((calls[b]() - expected).abs().max()) for b in BACKENDS[1:]]
    timings = alternate_timings(calls, args.runs, args.warmup)
    medians = {backend: statistics.median(timings[backend]) for backend in BACKENDS}
    peaks = peak_memory(subject, batch, args, folder)
    scores = metrics(subject, args.val_images) if subject.checkpoint else {}
    for backend in BACKENDS:
        ratio = medians[backend] / medians["eager"]
        difference = differences[BACKENDS.index(backend) - 1] if backend != "eager" else 0.0
        increase, total = peaks[backend]
        metric = "{}={:.4f}".format(*scores[backend]) if scores else "-"
        print(
            f"{subject.name:15s} {backend:9s} {medians[backend] * 1e3:9.2f} {ratio:7.3f} "
            f"{difference:9.2e} {increase / MIB:8.1f} {total / MIB:10.1f}  {metric}"
        )
    entries = {
        f"{subject.name}_ort_ratio": medians["ort fp32"] / medians["eager"],
        f"{subject.name}_int8_ratio": medians["ort int8"] / medians["eager"],
    }
    if scores:
        entries[f"{subject.name}_int8_drop"] = 100 * (scores["eager"][1] - scores["ort int8"][1])
    return entries


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_of:
        peak_memory_child(args)
        return
    torch.set_num_threads(args.threads)
    print(
        f"threads={args.threads} images={args.images} runs={args.runs} warmup={args.warmup} "
        f"calibration_images={args.calibration_images} val_images={args.val_images}"
    )
    print(
        f"{'model':15s} {'backend':9s} {'ms':>9s} {'/eager':>7s} {'|diff|':>9s} {'call MB':>8s} "
        f"{'process MB':>10s}  metric"
    )
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        for path in args.checkpoints:
            results |= report(trained_subject(path, args, folder), args, folder)
        trained = {load_checkpoint(path)["model_name"] for path in args.checkpoints}
        for name in [name for name in args.models if name not in trained]:
            results |= report(random_subject(name, args, folder), args, folder)
    print("result: " + " ".join(f"{key}={value:.3f}" for key, value in results.items()))


if __name__ == "__main__":
    main()
