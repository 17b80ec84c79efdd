"""The models ``bench/export.py`` compares, each a :class:`Subject`: exported to ONNX and, where
int8 covers it, quantized; and the calls of its backends (eager, onnxruntime fp32 and int8) on
one batch, each returning the output compared across backends."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

import pansight
from pansight.config import DataConfig
from pansight.engine.checkpoint import load_checkpoint
from pansight.export import Int8Options, export_checkpoint, export_onnx, load_onnx, quantize_onnx
from pansight.export.graph import ExportSpec, export_spec
from pansight.export.quantize import supports_int8
from pansight.export.yolact_edge import YolactEdgeOnnxPredictor
from pansight.models.base import PansightModel
from pansight.models.yolact.edge.model import YolactEdge
from pansight.models.zoo import MODELS, build_model

BACKENDS = ("eager", "ort fp32", "ort int8")
RCNN_COMPARED_OUTPUT = "detection_scores"
"""The output compared across backends for R-CNN graphs (for the others: their first)."""
NONKEY_SUFFIX = "_nonkey"
"""Suffix of the row of YolactEdge's non-keyframe path."""
NUM_CLASSES = 10
"""Classes of the random models, of which the first :data:`NUM_THINGS` are things."""
NUM_THINGS = 6


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


def random_subject(
    name: str, folder: Path, seed: int, size: int | None, calibration_images: int
) -> Subject:
    """Model ``name`` with random weights (seeded with ``seed``; ``size`` its input size where
    not ``None``) exported to ``folder``, and where int8 covers it quantized on
    ``calibration_images`` synthetic images."""
    torch.manual_seed(seed)
    entry = MODELS[name]
    model = build_model(name, [f"class{k}" for k in range(NUM_CLASSES)], overrides(name, size))
    model.eval()
    fp32 = export_onnx(model, folder / f"{name}.onnx", dynamic=True)
    int8 = None
    if supports_int8(type(model)):
        single = entry.task in ("classify", "localize")
        calibration = DataConfig(mode="single" if single else "multi", image_size=128)
        options = Int8Options(calibration=calibration, num_images=calibration_images)
        int8 = quantize_onnx(fp32, folder / f"{name}_int8.onnx", options)
    return Subject(name, model, fp32, int8, None)


def overrides(name: str, size: int | None) -> dict:
    """Config overrides of random model ``name``: ``size`` as its ``input_size`` (if it has
    one); for panoptic models the first :data:`NUM_THINGS` classes things, the rest stuff."""
    fields = {field.name for field in dataclasses.fields(MODELS[name].config_cls)}
    found = {}
    if "input_size" in fields and size is not None:
        found["input_size"] = size
    if "thing_flags" in fields:
        found["thing_flags"] = tuple(k < NUM_THINGS for k in range(NUM_CLASSES))
    return found


def trained_subject(checkpoint: Path, folder: Path, calibration_images: int) -> Subject:
    """The model of ``checkpoint`` exported to ``folder``, and where int8 covers it quantized
    on ``calibration_images`` images of its own training data."""
    name = load_checkpoint(checkpoint)["model_name"]
    model = pansight.load(checkpoint)
    fp32 = export_checkpoint(checkpoint, folder / f"{name}.onnx", dynamic=True)
    int8 = None
    if supports_int8(type(model)):
        options = Int8Options(num_images=calibration_images)
        int8 = folder / f"{name}_int8.onnx"
        export_checkpoint(checkpoint, int8, dynamic=True, int8=options)
    return Subject(name, model, fp32, int8, checkpoint)


def with_nonkey(subject: Subject) -> list[Subject]:
    """``subject``, followed for a YolactEdge with the flow module by its non-keyframe twin."""
    model = subject.model
    if not (isinstance(model, YolactEdge) and model.config.with_flow):
        return [subject]
    return [subject, dataclasses.replace(subject, nonkey=True)]


def compared_output(spec: ExportSpec) -> str:
    """The output whose difference from eager is reported: the first, for R-CNN graphs (whose
    first, boxes, are per-image lists like the rest) the detection scores."""
    return RCNN_COMPARED_OUTPUT if spec.per_image else spec.output_names[0]


def as_tensor(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """An output as one tensor (per-image lists concatenated)."""
    return torch.cat(output) if isinstance(output, list) else output


def backend_calls(
    subject: Subject, batch, threads: int, which: tuple[str, ...] = BACKENDS
) -> dict[str, Callable[[], torch.Tensor]]:
    """The calls of the backends ``which`` (those of ``subject``) on ``batch``, each returning
    its compared output as one tensor."""
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
