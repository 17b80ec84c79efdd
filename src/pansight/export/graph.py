"""Export a model's network (``forward``) to an ONNX graph carrying pansight metadata.

What is exported is the network on the preprocessed tensor: ``images`` ``(B, 3, H, W)`` float
RGB in ``[0, 1]``, already resized by the model's own ``preprocess`` (pixel normalisation is
inside ``forward``, so inside the graph). The graph's outputs are the fields of the model's
``Outputs`` dataclass that its ``postprocess`` reads, named after them (YOLACT's priors, constant
for its fixed input size, are an output without a batch axis). Preprocessing and
postprocessing run in Python around the graph (:class:`~pansight.export.predictor.
OnnxPredictor`), with the very functions the eager model uses.

The exporter is ``torch.onnx.export(..., dynamo=False)`` (the TorchScript tracer): the
torch.export-based exporter needs ``onnxscript``, which pansight does not depend on, and the
traced graphs of these models are plain convolution networks it converts exactly. Each traced
graph then loses the nodes that change no value (:mod:`pansight.export.simplify`: a ReLU of a
value already non-negative), so onnxruntime does not run them.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import torch
from torch import Tensor, nn

from pansight.config import to_dict
from pansight.errors import CheckpointError, ConfigError
from pansight.export.metadata import ExportMetadata
from pansight.export.rcnn import RCNN_OUTPUTS, trace_rcnn_to_onnx
from pansight.export.simplify import drop_redundant_relus
from pansight.models.base import PansightModel
from pansight.models.classifier import Classifier, ClassifierOutputs
from pansight.models.fcn import FCN, FCNOutputs
from pansight.models.localizer import Localizer, LocalizerOutputs
from pansight.models.panoptic_fpn import PanopticFPN, PanopticFPNOutputs
from pansight.models.rcnn import FasterRCNN, MaskRCNN, RCNNOutputs
from pansight.models.yolact import Yolact, YolactOutputs
from pansight.models.yolact_edge import YolactEdge
from pansight.structures import ImageBatch

if TYPE_CHECKING:
    from pansight.export.quantize import Int8Options

OPSET = 17
INPUT_NAME = "images"
DEFAULT_EXAMPLE_SIDE = 128
"""Side of the example image traced through models whose config names no ``input_size``."""


@dataclass(frozen=True)
class ExportSpec:
    """How one model class maps onto a graph.

    Attributes:
        outputs_cls: the model's ``Outputs`` dataclass.
        output_names: its fields that become graph outputs (the others are ``None`` when the
            predictor rebuilds the outputs).
        batch_free: those of ``output_names`` without a batch axis (the same for every image of
            the fixed input size): never given a dynamic axis, and read from one run only.
        per_image: those of ``output_names`` the outputs hold as a list of per-image tensors
            (R-CNN detections). A spec with any is an R-CNN graph
            (:mod:`pansight.export.rcnn`): one image and its size per run, any ``H`` and ``W``,
            whether exported ``dynamic`` or not.
    """

    outputs_cls: type
    output_names: tuple[str, ...]
    batch_free: tuple[str, ...] = ()
    per_image: tuple[str, ...] = ()


EXPORT_SPECS: dict[type[PansightModel], ExportSpec] = {
    Classifier: ExportSpec(ClassifierOutputs, ("logits",)),
    Localizer: ExportSpec(LocalizerOutputs, ("logits", "boxes")),
    FCN: ExportSpec(FCNOutputs, ("logits",)),
    Yolact: ExportSpec(
        YolactOutputs,
        ("box_deltas", "class_logits", "mask_coefficients", "prototypes", "priors"),
        batch_free=("priors",),
    ),
    YolactEdge: ExportSpec(
        YolactOutputs,
        ("box_deltas", "class_logits", "mask_coefficients", "prototypes", "priors"),
        batch_free=("priors",),
    ),
    FasterRCNN: ExportSpec(RCNNOutputs, RCNN_OUTPUTS, per_image=RCNN_OUTPUTS),
    MaskRCNN: ExportSpec(RCNNOutputs, (*RCNN_OUTPUTS, "mask_logits"), per_image=RCNN_OUTPUTS),
    PanopticFPN: ExportSpec(
        PanopticFPNOutputs,
        (*RCNN_OUTPUTS, "mask_logits", "semantic_logits"),
        per_image=RCNN_OUTPUTS,
    ),
}
"""The model classes that export today."""


def export_spec(model_cls: type[PansightModel], model_name: str) -> ExportSpec:
    """The export spec of ``model_cls``.

    Raises:
        ConfigError: naming ``model_name``, if its class does not export yet.
    """
    if model_cls not in EXPORT_SPECS:
        raise ConfigError(
            f"ONNX export of {model_name} ({model_cls.__name__}) is not supported yet; "
            f"exportable models: {', '.join(exportable_models())}"
        )
    return EXPORT_SPECS[model_cls]


def exportable_models() -> list[str]:
    """The zoo names whose models export to ONNX."""
    from pansight.models.zoo import MODELS

    return [name for name, entry in MODELS.items() if entry.builder in EXPORT_SPECS]


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
    """Export the model of a pansight checkpoint to ``out`` (default: ``checkpoint`` with the
    suffix ``.onnx``); return the path written. The metadata records the checkpoint's model
    name and training data set. With ``int8``, ``out`` holds the graph quantized to int8 by
    :func:`~pansight.export.quantize.quantize_onnx` (calibration defaults to that data set).

    Raises:
        CheckpointError: the checkpoint cannot be read or rebuilt.
        ConfigError: its model does not export yet, or ``out`` is the checkpoint itself.
        DataError: the int8 calibration data set is unreadable or empty.
    """
    from pansight.engine.checkpoint import load_checkpoint
    from pansight.models.zoo import MODELS, model_from_checkpoint

    out = Path(out) if out is not None else Path(checkpoint).with_suffix(".onnx")
    if out.resolve() == Path(checkpoint).resolve():
        raise ConfigError(f"{out}: the ONNX file would replace the checkpoint; choose another out")
    payload = load_checkpoint(checkpoint)
    name = payload.get("model_name")
    if name in MODELS:
        export_spec(MODELS[name].builder, name)
    model = model_from_checkpoint(payload).eval()
    train_data = payload.get("train_config", {}).get("data", {})
    if int8 is None:
        return export_onnx(model, out, dynamic=dynamic, model_name=name, train_data=train_data)
    from pansight.export.quantize import quantize_onnx

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
    from pansight.models.zoo import MODELS

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
        from pansight.export.yolact_edge import keyframe_switch_graph

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


def trace_module(
    module: nn.Module,
    inputs: tuple[Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None,
) -> onnx.ModelProto:
    """Trace ``module`` (a wrapper holding the model as ``module.model``) on ``inputs`` into an
    ONNX model (weights inside), the model in eval mode meanwhile; ReLUs of values already
    non-negative are removed (:func:`~pansight.export.simplify.drop_redundant_relus`)."""
    buffer = io.BytesIO()
    was_training = module.model.training
    module.model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message=".*feature will be removed")
            torch.onnx.export(
                module,
                inputs,
                buffer,
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
            )
    finally:
        module.model.train(was_training)
    graph = onnx.load_model_from_string(buffer.getvalue())
    drop_redundant_relus(graph)
    return graph


def write_atomically(graph: onnx.ModelProto, path: Path) -> Path:
    """Write ``graph`` to ``path`` through a temporary file, so ``path`` is never torn.

    Raises:
        CheckpointError: naming ``path``, if it cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(graph.SerializeToString())
        os.replace(handle.name, path)
    except OSError as error:
        Path(handle.name).unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write the ONNX file: {error}") from None
    return path
