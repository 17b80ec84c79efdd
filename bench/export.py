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

Models int8 does not cover (:func:`pansight.export.quantize.supports_int8`) are neither
quantized nor timed in int8: their ``ort int8`` row shows ``-`` and the ``result:`` line has no
``<model>_int8_ratio`` for them.

What a call computes, per kind of model:

- Faster/Mask R-CNN and Panoptic FPN: the whole detection pipeline of each image (backbone, RPN,
  proposal NMS, RoIAlign, box branch, per-class NMS, mask branch, semantic branch), on images
  resized by their own ``min_size``/``max_size`` (``--size`` does not apply). With random
  weights every class scores near ``1 / (K + 1)`` (0.1 to 0.3 with the 10 classes here), above
  the default ``score_thresh`` of 0.05, so the detections fill ``detections_per_img`` (100)
  after NMS: the mask branch runs on as many boxes as a busy trained model's;
- YolactEdge, row ``yolact_edge_*``: the keyframe path (full backbone and FPN), what
  ``predictor(batch)`` and the eager ``model(batch)`` run for every image of ``predict``; the
  graph also outputs the keyframe features later frames reuse. Row ``yolact_edge_*_nonkey``
  (result key ``<model>_nonkey_...``): the non-keyframe path (backbone to C3, flow, warp, SPA,
  head) through ``forward_frame(batch, state, keyframe=False)``, the state being that of the
  same batch as a keyframe, computed once before timing;
- the others: ``model(batch)``, the network on the resized batch.

Latency: after ``--warmup`` calls each, the backends run alternately ``--runs`` times; medians
are compared. ``|diff|`` is the largest absolute difference from eager of the first output
(logits), for the R-CNNs of the detection scores of all images (``inf`` when a backend keeps
another number of detections).

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
fp32 median / eager median> <model>_int8_ratio=<ort int8 median / eager median> ...`` (no
``_int8_ratio`` where int8 does not cover the model; ``<model>_nonkey_...`` for YolactEdge's
non-keyframe path) plus ``<model>_int8_drop=<points>`` for checkpoints.
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
from timing import alternate_timings, print_header

import pansight
from pansight.config import DataConfig
from pansight.engine.checkpoint import load_checkpoint
from pansight.export import (
    Int8Options,
    export_checkpoint,
    export_onnx,
    exportable_models,
    load_onnx,
    quantize_onnx,
)
from pansight.export.graph import ExportSpec, export_spec
from pansight.export.quantize import supports_int8
from pansight.export.yolact_edge import YolactEdgeOnnxPredictor
from pansight.models.base import PansightModel
from pansight.models.yolact.edge.model import YolactEdge
from pansight.models.zoo import MODELS, build_model

DEFAULT_MODELS = ("classifier_r18", "localizer_r18", "fcn8s_r18")
BACKENDS = ("eager", "ort fp32", "ort int8")
RCNN_COMPARED_OUTPUT = "detection_scores"
NONKEY_SUFFIX = "_nonkey"
NUM_CLASSES = 10
NUM_THINGS = 6
METRICS = ("mask_AP", "mIoU", "top1", "mean_IoU", "box_AP")
"""The metric reported per task: the first of these the evaluation gives."""
MIB = 2**20
WIDTHS = (9, 7, 9, 8, 10)
"""Widths of the figure columns (ms, /eager, |diff|, call MB, process MB)."""


@dataclasses.dataclass
class Subject:
    """One model under test: the eager model, its ONNX files (``int8`` ``None`` where int8
    does not cover the model), its checkpoint (``None`` for random weights), and for
    YolactEdge whether the non-keyframe path is timed."""

    name: str
    model: PansightModel
    fp32: Path
    int8: Path | None
    checkpoint: Path | None
    nonkey: bool = False

    @property
    def label(self) -> str:
        """The row's name and the prefix of its ``result:`` keys."""
        return self.name + (NONKEY_SUFFIX if self.nonkey else "")

    @property
    def backends(self) -> tuple[str, ...]:
        return BACKENDS if self.int8 is not None else BACKENDS[:2]


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
    """Model ``name`` with seeded random weights, exported, and (where int8 covers it)
    quantized on synthetic images."""
    torch.manual_seed(args.seed)
    entry = MODELS[name]
    model = build_model(name, [f"class{k}" for k in range(NUM_CLASSES)], overrides(name, args))
    model.eval()
    fp32 = export_onnx(model, folder / f"{name}.onnx", dynamic=True)
    int8 = None
    if supports_int8(type(model)):
        single = entry.task in ("classify", "localize")
        calibration = DataConfig(mode="single" if single else "multi", image_size=128)
        options = Int8Options(calibration=calibration, num_images=args.calibration_images)
        int8 = quantize_onnx(fp32, folder / f"{name}_int8.onnx", options)
    return Subject(name, model, fp32, int8, None)


def overrides(name: str, args: argparse.Namespace) -> dict:
    """Config overrides of random model ``name``: ``--size`` as its ``input_size`` (if it has
    one); for panoptic models the first :data:`NUM_THINGS` classes things, the rest stuff."""
    fields = {field.name for field in dataclasses.fields(MODELS[name].config_cls)}
    found = {}
    if "input_size" in fields and args.size is not None:
        found["input_size"] = args.size
    if "thing_flags" in fields:
        found["thing_flags"] = tuple(k < NUM_THINGS for k in range(NUM_CLASSES))
    return found


def trained_subject(checkpoint: Path, args: argparse.Namespace, folder: Path) -> Subject:
    """The model of ``checkpoint``, exported, and (where int8 covers it) quantized on its own
    training data."""
    name = load_checkpoint(checkpoint)["model_name"]
    model = pansight.load(checkpoint)
    fp32 = export_checkpoint(checkpoint, folder / f"{name}.onnx", dynamic=True)
    int8 = None
    if supports_int8(type(model)):
        options = Int8Options(num_images=args.calibration_images)
        int8 = folder / f"{name}_int8.onnx"
        export_checkpoint(checkpoint, int8, dynamic=True, int8=options)
    return Subject(name, model, fp32, int8, checkpoint)


def with_nonkey(subject: Subject) -> list[Subject]:
    """``subject``, followed for a YolactEdge with the flow module by its non-keyframe twin."""
    model = subject.model
    if not (isinstance(model, YolactEdge) and model.config.with_flow):
        return [subject]
    return [subject, dataclasses.replace(subject, nonkey=True)]


def bench_batch(model: PansightModel, args: argparse.Namespace):
    """``args.images`` seeded random images through ``model.preprocess``."""
    generator = torch.Generator().manual_seed(args.seed)
    images = [torch.rand(3, 96, 128, generator=generator) for _ in range(args.images)]
    return model.preprocess(images)[0]


def compared_output(spec: ExportSpec) -> str:
    """The output whose difference from eager is reported: the first, for R-CNN graphs (whose
    first, boxes, are per-image lists like the rest) the detection scores."""
    return RCNN_COMPARED_OUTPUT if spec.per_image else spec.output_names[0]


def as_tensor(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """An output as one tensor (per-image lists concatenated)."""
    return torch.cat(output) if isinstance(output, list) else output


def largest_difference(found: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference of two outputs; ``inf`` when their shapes differ."""
    if found.shape != expected.shape:
        return float("inf")
    return float((found - expected).abs().max()) if expected.numel() else 0.0


def backend_calls(
    subject: Subject, batch, threads: int, which: tuple[str, ...] = BACKENDS
) -> dict[str, Callable[[], torch.Tensor]]:
    """The calls of the backends ``which`` (those of ``subject``) on ``batch``, each returning
    its compared output as one tensor (see the module docstring for what each runs)."""
    calls: dict[str, Callable[[], torch.Tensor]] = {}
    if "eager" in which:
        output = compared_output(export_spec(type(subject.model), subject.name))
        calls["eager"] = eager_call(subject, batch, output)
    for backend, path in (("ort fp32", subject.fp32), ("ort int8", subject.int8)):
        if backend in which and backend in subject.backends:
            predictor = load_onnx(path, threads=threads)
            output = compared_output(predictor.spec)
            if subject.nonkey:
                calls[backend] = nonkey_call(predictor, batch, output)
            else:
                calls[backend] = lambda p=predictor, o=output: as_tensor(getattr(p(batch), o))
    return calls


def eager_call(subject: Subject, batch, output: str) -> Callable[[], torch.Tensor]:
    """The eager model's call on ``batch``: ``model(batch)``, or for ``subject.nonkey`` a
    non-keyframe ``forward_frame`` on the batch's own keyframe state."""
    model = subject.model
    with torch.inference_mode():
        state = model.forward_frame(batch)[1] if subject.nonkey else None

    def call() -> torch.Tensor:
        with torch.inference_mode():
            if state is None:
                return as_tensor(getattr(model(batch), output))
            return getattr(model.forward_frame(batch, state, keyframe=False)[0], output)

    return call


def nonkey_call(
    predictor: YolactEdgeOnnxPredictor, batch, output: str
) -> Callable[[], torch.Tensor]:
    """The predictor's non-keyframe ``forward_frame`` on ``batch`` with the batch's own
    keyframe state."""
    state = predictor.forward_frame(batch)[1]
    return lambda: getattr(predictor.forward_frame(batch, state, keyframe=False)[0], output)


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
    state_file = folder / f"{subject.label}_state.pt"
    peaks = {}
    for backend in subject.backends:
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
    timings = alternate_timings(calls, args.runs, args.warmup)
    medians = {backend: statistics.median(timings[backend]) for backend in calls}
    peaks = peak_memory(subject, batch, args, folder)
    scores = metrics(subject, args.val_images) if subject.checkpoint and not subject.nonkey else {}
    for backend in BACKENDS:
        if backend not in calls:
            print(f"{subject.label:22s} {backend:9s} " + " ".join(f"{'-':>{w}s}" for w in WIDTHS))
            continue
        ratio = medians[backend] / medians["eager"]
        increase, total = peaks[backend]
        metric = "{}={:.4f}".format(*scores[backend]) if scores else "-"
        print(
            f"{subject.label:22s} {backend:9s} {medians[backend] * 1e3:9.2f} {ratio:7.3f} "
            f"{differences[backend]:9.2e} {increase / MIB:8.1f} {total / MIB:10.1f}  {metric}"
        )
    entries = {f"{subject.label}_ort_ratio": medians["ort fp32"] / medians["eager"]}
    if "ort int8" in medians:
        entries[f"{subject.label}_int8_ratio"] = medians["ort int8"] / medians["eager"]
    if scores and "ort int8" in scores:
        entries[f"{subject.label}_int8_drop"] = 100 * (scores["eager"][1] - scores["ort int8"][1])
    return entries


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_of:
        peak_memory_child(args)
        return
    torch.set_num_threads(args.threads)
    print_header(onnxruntime=True)
    print(
        f"threads={args.threads} images={args.images} runs={args.runs} warmup={args.warmup} "
        f"calibration_images={args.calibration_images} val_images={args.val_images}"
    )
    print(
        f"{'model':22s} {'backend':9s} {'ms':>9s} {'/eager':>7s} {'|diff|':>9s} {'call MB':>8s} "
        f"{'process MB':>10s}  metric"
    )
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        subjects = [trained_subject(path, args, folder) for path in args.checkpoints]
        trained = {subject.name for subject in subjects}
        for name in [name for name in args.models if name not in trained]:
            subjects.append(random_subject(name, args, folder))
        for timed in [twin for subject in subjects for twin in with_nonkey(subject)]:
            results |= report(timed, args, folder)
    print("result: " + " ".join(f"{key}={value:.3f}" for key, value in results.items()))


if __name__ == "__main__":
    main()
