"""Export a model's network (``forward``) to an ONNX graph carrying pansight metadata.

:func:`export_onnx` (and :func:`export_checkpoint` for a checkpoint file) traces the network on
the preprocessed ``images`` tensor; the graph's outputs are the fields of the model's ``Outputs``
that its ``postprocess`` reads, and pre- and postprocessing run in Python around the graph
(:class:`~pansight.export.predictor.OnnxPredictor`). Nodes that change no value are dropped
(:mod:`pansight.export.simplify`).

See docs/export.md for the graph's inputs and outputs and the choice of exporter.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from pansight.config import to_dict
from pansight.engine.model_files import open_weights
from pansight.errors import ConfigError
from pansight.export.metadata import ExportMetadata
from pansight.export.quantize import Int8Options, quantize_onnx
from pansight.export.rcnn import trace_rcnn_to_onnx
from pansight.export.specs import export_spec
from pansight.export.tracing import INPUT_NAME, trace_module, write_atomically
from pansight.export.yolact_edge import keyframe_switch_graph
from pansight.models.base import PansightModel
from pansight.models.registry import ExportSpec
from pansight.models.yolact.edge.model import YolactEdge
from pansight.models.zoo import MODELS
from pansight.structures import ImageBatch

DEFAULT_EXAMPLE_SIDE = 128
"""Side of the example image traced through models whose config names no ``input_size``."""


class GraphModule(nn.Module):
    """``model.forward`` as a function of the image tensor alone, returning a tuple of tensors.

    ``forward(images)``: ``(B, 3, H, W)`` preprocessed images -> the ``spec.output_names``
    fields of the model's outputs, in that order.
    """

    def __init__(self, model: PansightModel, spec: ExportSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        sizes = [(images.shape[-2], images.shape[-1])] * images.shape[0]
        outputs = self.model(ImageBatch(images, sizes, sizes))
        return tuple(getattr(outputs, name) for name in self.spec.output_names)


def export_onnx(
    model: PansightModel,
    path: str | Path,
    *,
    dynamic: bool = False,
    example_size: tuple[int, int] | None = None,
    model_name: str | None = None,
    train_data: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s network to ``path`` as ONNX with pansight metadata; return the path.

    Args:
        dynamic: make the batch axis dynamic (the predictor then runs a whole batch at once);
            otherwise the graph takes one image. Spatial axes stay those ``preprocess`` gives
            the example image (these models resize every image to the same square).
        example_size: ``(h, w)`` of the example image traced through ``preprocess``; default
            the config's ``input_size`` square.
        model_name: the zoo name written to the metadata; default the entry whose defaults
            ``model.config`` matches.
        train_data: the DataConfig dict the model was trained on (for ``eval``'s default).

    Raises:
        ConfigError: the model does not export yet, or ``example_size`` is not positive.
    """
    model_name = model_name or zoo_name(model)
    spec = export_spec(type(model), model_name)
    side = getattr(model.config, "input_size", DEFAULT_EXAMPLE_SIDE)
    height, width = example_size or (side, side)
    if height < 1 or width < 1:
        raise ConfigError(f"example_size={example_size} must be positive")
    example = torch.rand(3, height, width, generator=torch.Generator().manual_seed(0))
    batch, _ = model.preprocess([example.to(model.device)])
    graph = export_graph(model, spec, batch.tensor, dynamic)
    metadata = ExportMetadata(
        model_name=model_name,
        task=model.task,
        class_names=list(model.class_names),
        model_config=to_dict(model.config),
        train_data=dict(train_data or {}),
    )
    onnx.helper.set_model_props(graph, metadata.to_props())
    return write_atomically(graph, Path(path))


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    dynamic: bool = False,
    int8: Int8Options | None = None,
) -> Path:
    """Export the model of a pansight checkpoint (or of foreign weights pansight imports, e.g.
    an original YOLACT file) to ``out`` (default: ``checkpoint`` with the suffix ``.onnx``);
    return the path written. The metadata records the model's zoo name and training data set.
    With ``int8``, ``out`` holds the graph quantized to int8 by
    :func:`~pansight.export.quantize.quantize_onnx` (calibration defaults to that data set).

    Raises:
        CheckpointError: the checkpoint cannot be read or rebuilt.
        ConfigError: its model does not export yet, or ``out`` is the checkpoint itself.
        DataError: the int8 calibration data set is unreadable or empty.
    """

    out = Path(out) if out is not None else Path(checkpoint).with_suffix(".onnx")
    if out.resolve() == Path(checkpoint).resolve():
        raise ConfigError(f"{out}: the ONNX file would replace the checkpoint; choose another out")
    opened = open_weights(checkpoint)
    model = opened.model
    name = opened.model_name or zoo_name(model)
    export_spec(type(model), name)
    train_data = to_dict(opened.trained_on)
    if int8 is None:
        return export_onnx(model, out, dynamic=dynamic, model_name=name, train_data=train_data)
    with tempfile.TemporaryDirectory(prefix="pansight-fp32-") as folder:
        fp32 = export_onnx(
            model, Path(folder) / out.name, dynamic=dynamic, model_name=name, train_data=train_data
        )
        return quantize_onnx(fp32, out, int8)


def zoo_name(model: PansightModel) -> str:
    """The zoo name of ``model``: the entry of its class whose defaults its config holds (the
    first entry of its class when none does).

    Raises:
        ConfigError: no zoo entry builds this class.
    """
    candidates = [name for name, entry in MODELS.items() if entry.builder is type(model)]
    if not candidates:
        raise ConfigError(f"{type(model).__name__} is not a zoo model; ONNX export needs one")
    for name in candidates:
        defaults = MODELS[name].defaults.items()
        if all(getattr(model.config, key) == value for key, value in defaults):
            return name
    return candidates[0]


def export_graph(
    model: PansightModel, spec: ExportSpec, images: Tensor, dynamic: bool
) -> onnx.ModelProto:
    """``model``'s graph traced on ``images`` ``(1, 3, H, W)``: ``forward`` as
    :class:`GraphModule`, or for a YolactEdge with its flow module both video paths under a
    keyframe switch (:func:`~pansight.export.yolact_edge.keyframe_switch_graph`)."""
    if isinstance(model, YolactEdge) and model.config.with_flow:
        return keyframe_switch_graph(model, images, dynamic)
    if spec.per_image:
        return trace_rcnn_to_onnx(model, spec, images)
    return trace_to_onnx(GraphModule(model, spec), images, dynamic)


def trace_to_onnx(module: GraphModule, images: Tensor, dynamic: bool) -> onnx.ModelProto:
    """Trace ``module`` on ``images`` ``(1, 3, H, W)`` into an ONNX model (weights inside).

    With ``dynamic``, the input and every output but the spec's ``batch_free`` ones get a
    dynamic batch axis. The model is put in eval mode while tracing and given back in the mode
    it had.
    """
    output_names = module.spec.output_names
    batched = [INPUT_NAME, *(name for name in output_names if name not in module.spec.batch_free)]
    dynamic_axes = {name: {0: "batch"} for name in batched} if dynamic else None
    return trace_module(module, (images,), [INPUT_NAME], list(output_names), dynamic_axes)
