"""Eager PyTorch against onnxruntime fp32 and int8, per exportable model: latency, peak memory
and, for trained models, the task metric.

Each of ``--models`` gets seeded random weights; each ``--checkpoints`` file (a trained pansight
checkpoint) replaces the random model of its name. A model is exported with a dynamic batch axis
(:func:`pansight.export.export_onnx`, :func:`~pansight.export.export_checkpoint`), quantized to
int8 where :func:`pansight.export.quantize.supports_int8` covers it (on
``--calibration-images`` training images of the checkpoint's data, or of the synthetic world),
and opened with :class:`pansight.export.OnnxPredictor` at ``--threads`` intra-op threads. All
three backends run the network only, on the same batch already through ``preprocess``: for the
R-CNNs and Panoptic FPN the whole detection pipeline at their own image size (random weights
fill the 100 detections per image, so the mask branch works as much as a trained model's); for
YolactEdge the keyframe path, and in rows ``<model>_nonkey`` the non-keyframe path
(``forward_frame(batch, state, keyframe=False)`` on the batch's own keyframe state).

Latency: after ``--warmup`` calls each, the backends run alternately ``--runs`` times; medians
are compared. ``|diff|`` is the largest absolute difference from eager of the first output (the
R-CNNs: of the detection scores; ``inf`` when a backend keeps another number of detections).
Peak memory: each backend runs once in a fresh subprocess (``bench/rss.py``) that loads only it;
``call MB`` is the resident memory the call adds at its peak, ``process MB`` the process's peak.
Metric (checkpoints only): the task's metric of each backend on ``--val-images`` validation
images through :func:`pansight.evaluate`; ``drop`` is eager minus int8, in points.

Usage: ``python bench/export.py [--runs 20] [--warmup 3] [--threads 2] [--images 1]
[--models classifier_r18 fcn8s_r18] [--size 224] [--checkpoints runs/sem/model.pt ...]
[--val-images 100] [--calibration-images 32]``

Ends with ``result: <model>_ort_ratio=<ort fp32 median / eager median> <model>_int8_ratio=<ort
int8 median / eager median> ...`` (no ``_int8_ratio`` where int8 does not cover the model;
``<model>_nonkey_...`` for YolactEdge's non-keyframe path) plus ``<model>_int8_drop=<points>``
for checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch
from arguments import add_images_flag, add_seed_flag, add_timing_flags, bench_parser
from export_subjects import (
    BACKENDS,
    Subject,
    backend_calls,
    random_subject,
    trained_subject,
    with_nonkey,
)
from report import Column, Table, print_result, set_threads_and_print_header
from rss import MIB, add_child_flags, forwarded_flags, peak_memory_in_child, print_call_peak
from timing import alternate_timings, medians

import pansight
from pansight.export import exportable_models
from pansight.models.base import PansightModel

DEFAULT_MODELS = ("classifier_r18", "localizer_r18", "fcn8s_r18")
METRICS = ("mask_AP", "mIoU", "top1", "mean_IoU", "box_AP")
"""The metric reported per task: the first of these the evaluation gives."""
TABLE = Table(
    Column("model", 22, align="<"),
    Column("backend", 9, align="<"),
    Column("ms", 9, ".2f"),
    Column("/eager", 7, ".3f"),
    Column("|diff|", 9, ".2e"),
    Column("call MB", 8, ".1f"),
    Column("process MB", 10, ".1f"),
)
"""The figures of a row; the metric follows them, two spaces apart."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__, threads_help="intra-op threads of all")
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("--checkpoints", nargs="*", type=Path, default=[], help="trained models")
    add_timing_flags(parser, runs=20, warmup=3, unit="calls per backend")
    add_images_flag(parser)
    parser.add_argument("--size", type=int, help="input_size of random models (default: own)")
    add_seed_flag(parser)
    parser.add_argument("--val-images", type=int, default=100, help="metric images")
    parser.add_argument("--calibration-images", type=int, default=32)
    add_child_flags(parser, BACKENDS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models) - set(exportable_models()))
    if unknown:
        parser.error(f"not exportable: {', '.join(unknown)}; choose from {exportable_models()}")
    return args


def bench_batch(model: PansightModel, args: argparse.Namespace):
    """``args.images`` seeded random images through ``model.preprocess``."""
    generator = torch.Generator().manual_seed(args.seed)
    images = [torch.rand(3, 96, 128, generator=generator) for _ in range(args.images)]
    return model.preprocess(images)[0]


def largest_difference(found: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference of two outputs; ``inf`` when their shapes differ."""
    if found.shape != expected.shape:
        return float("inf")
    return float((found - expected).abs().max()) if expected.numel() else 0.0


# -- measurements ------------------------------------------------------------------------------


def peak_memory_child(args: argparse.Namespace) -> None:
    """Subprocess body: load one backend, run it once, print its peak RSS figures in bytes."""
    torch.set_num_threads(args.threads)
    state = torch.load(args.state, weights_only=False)
    call = backend_calls(state["subject"], state["batch"], args.threads, (args.memory_of,))
    del state
    print_call_peak(call[args.memory_of])


def peak_memory(subject: Subject, batch, args: argparse.Namespace, folder: Path) -> dict:
    """``backend -> (call peak increase, process peak)`` in bytes, each from a subprocess."""
    state_file = folder / f"{subject.label}_state.pt"
    peaks = {}
    for backend in subject.backends:
        needed = subject if backend == "eager" else dataclasses.replace(subject, model=None)
        torch.save({"subject": needed, "batch": batch}, state_file)
        flags = forwarded_flags(args, ("threads",))
        peaks[backend] = peak_memory_in_child(__file__, backend, state_file, flags)
    state_file.unlink()
    return peaks


def metrics(subject: Subject, val_images: int) -> dict[str, tuple[str, float]]:
    """``backend -> (metric name, value)`` on the validation split of the checkpoint's data."""
    values = {}
    models = (subject.checkpoint, subject.fp32, subject.int8)
    for backend, model in zip(subject.backends, models):
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
    differences = {backend: largest_difference(call(), expected) for backend, call in calls.items()}
    seconds = medians(alternate_timings(calls, args.runs, args.warmup))
    peaks = peak_memory(subject, batch, args, folder)
    scores = metrics(subject, args.val_images) if subject.checkpoint and not subject.nonkey else {}
    for backend in BACKENDS:
        if backend not in calls:
            print(TABLE.row(subject.label, backend, *["-"] * 5))
            continue
        ratio = seconds[backend] / seconds["eager"]
        increase, total = peaks[backend]
        figures = seconds[backend] * 1e3, ratio, differences[backend], increase / MIB, total / MIB
        metric = "{}={:.4f}".format(*scores[backend]) if scores else "-"
        print(TABLE.row(subject.label, backend, *figures) + f"  {metric}")
    entries = {f"{subject.label}_ort_ratio": seconds["ort fp32"] / seconds["eager"]}
    if "ort int8" in seconds:
        entries[f"{subject.label}_int8_ratio"] = seconds["ort int8"] / seconds["eager"]
    if scores and "ort int8" in scores:
        entries[f"{subject.label}_int8_drop"] = 100 * (scores["eager"][1] - scores["ort int8"][1])
    return entries


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_of:
        peak_memory_child(args)
        return
    set_threads_and_print_header(args.threads, onnxruntime=True)
    print(
        f"threads={args.threads} images={args.images} runs={args.runs} warmup={args.warmup} "
        f"calibration_images={args.calibration_images} val_images={args.val_images}"
    )
    print(TABLE.header() + "  metric")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        calibration = args.calibration_images
        subjects = [trained_subject(path, folder, calibration) for path in args.checkpoints]
        trained = {subject.name for subject in subjects}
        for name in [name for name in args.models if name not in trained]:
            subjects.append(random_subject(name, folder, args.seed, args.size, calibration))
        for timed in [twin for subject in subjects for twin in with_nonkey(subject)]:
            results |= report(timed, args, folder)
    print_result(results)


if __name__ == "__main__":
    main()
