"""INT8 static quantization of an exported pansight ONNX file with onnxruntime.

:func:`quantize_onnx` reads an fp32 export, runs it on calibration images (preprocessed by the
model's own ``preprocess``, exactly as at prediction time) to find each activation's range, and
writes an int8 graph in the QDQ format: ``QuantizeLinear``/``DequantizeLinear`` pairs around
the convolutions, uint8 activations, int8 weights with one scale per output channel.
onnxruntime's CPU provider fuses each pair-wrapped ``Conv`` into one ``QLinearConv`` (u8s8,
the form its VNNI kernels take). The file keeps the export's metadata, with ``precision``
``int8`` and the names of the nodes left in float (``fp32_nodes``), so
:class:`~pansight.export.predictor.OnnxPredictor` opens it unchanged: inputs and outputs are
the same float tensors.

Some layers lose more than the rest when quantized; ``keep_fp32_outputs`` keeps in float the
convolutions that compute the named graph outputs (by default YOLACT's prediction head, as
YolactEdge does), ``exclude_nodes`` any other node by name.

Quantizing YOLACT R-50 (550 px, one CPU thread) takes about 30 s with 32 calibration images
and peaks at about 3 GB of resident memory (the same with 4 images: the graph copies dominate).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import Tensor

from pansight.config import DataConfig, from_dict
from pansight.errors import CheckpointError, ConfigError, DataError
from pansight.export.graph import INPUT_NAME, write_atomically
from pansight.models.classifier import Classifier
from pansight.models.fcn import FCN
from pansight.models.localizer import Localizer
from pansight.models.yolact import Yolact

DEFAULT_CALIBRATION_IMAGES = 32
CALIBRATION_SPLIT = "train"
"""Calibration reads the training split, so validation metrics stay honest."""
QUANTIZABLE = (Classifier, Localizer, FCN, Yolact)
"""The model classes whose graphs quantize (plain convolution networks, one image input)."""
DEFAULT_FP32_OUTPUTS: dict[type, tuple[str, ...]] = {
    Yolact: ("box_deltas", "class_logits", "mask_coefficients"),
}
"""Graph outputs whose final convolutions stay in float by default, per model class."""


@dataclass(frozen=True)
class Int8Options:
    """How to quantize.

    Attributes:
        calibration: the data set whose images calibrate the activation ranges (its
            ``train`` split); ``None``: the one the model was trained on.
        num_images: calibration images, evenly spaced over the split.
        keep_fp32_outputs: graph outputs whose final convolutions (those reached walking up
            from the output through non-convolution nodes) stay in float; ``None``: the
            model's default (:data:`DEFAULT_FP32_OUTPUTS`).
        exclude_nodes: further node names left in float.
        per_channel: one weight scale per output channel (else one per tensor).
        reduce_range: 7-bit weights (for processors without VNNI, where u8s8 products may
            saturate).
    """

    calibration: DataConfig | None = None
    num_images: int = DEFAULT_CALIBRATION_IMAGES
    keep_fp32_outputs: tuple[str, ...] | None = None
    exclude_nodes: tuple[str, ...] = ()
    per_channel: bool = True
    reduce_range: bool = False


class PreprocessedImages(CalibrationDataReader):
    """Feeds ``(1, 3, H, W)`` preprocessed images, one per ``get_next``, to the calibrator."""

    def __init__(self, inputs: list[np.ndarray]) -> None:
        self.inputs = inputs
        self._iterator: Iterator[np.ndarray] = iter(inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._iterator, None)
        return None if image is None else {INPUT_NAME: image}

    def rewind(self) -> None:
        self._iterator = iter(self.inputs)


def quantize_onnx(
    fp32_path: str | Path, out: str | Path, options: Int8Options | None = None
) -> Path:
    """Write the int8 version of the pansight fp32 ONNX file ``fp32_path`` to ``out`` (which
    may be ``fp32_path`` itself); return ``out``.

    Raises:
        CheckpointError: ``fp32_path`` is not a pansight fp32 export.
        ConfigError: the model does not quantize yet (not in :data:`QUANTIZABLE`), or
            ``options`` name outputs or nodes the graph lacks, ask for no images, or name a
            calibration data set that cannot serve the model's task.
        DataError: the calibration data set is unreadable or empty.
    """
    from pansight.export.predictor import OnnxPredictor

    options = options or Int8Options()
    fp32_path, out = Path(fp32_path), Path(out)
    predictor = OnnxPredictor(fp32_path, threads=1)
    if predictor.metadata.precision != "fp32":
        raise CheckpointError(f"{fp32_path}: already {predictor.metadata.precision}; quantize fp32")
    if type(predictor.model) not in QUANTIZABLE:
        supported = ", ".join(cls.__name__ for cls in QUANTIZABLE)
        raise ConfigError(
            f"int8 quantization of {predictor.metadata.model_name} is not supported yet; "
            f"it supports {supported}"
        )
    data = options.calibration or from_dict(DataConfig, predictor.metadata.train_data)
    images = calibration_images(data, predictor.task, options.num_images)
    inputs = [predictor.preprocess([image])[0].tensor.numpy() for image in images]
    with tempfile.TemporaryDirectory(prefix="pansight-int8-") as folder:
        prepared, quantized = Path(folder) / "prepared.onnx", Path(folder) / "int8.onnx"
        quant_pre_process(onnx.load(fp32_path), prepared)
        fp32_nodes = fp32_node_names(onnx.load(prepared), type(predictor.model), options)
        quantize_static(
            prepared,
            quantized,
            PreprocessedImages(inputs),
            quant_format=QuantFormat.QDQ,
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=fp32_nodes,
            calibrate_method=CalibrationMethod.MinMax,
        )
        int8_graph = onnx.load(quantized)
    metadata = replace(predictor.metadata, precision="int8", fp32_nodes=fp32_nodes)
    del int8_graph.metadata_props[:]
    onnx.helper.set_model_props(int8_graph, metadata.to_props())
    return write_atomically(int8_graph, out)


def calibration_images(data: DataConfig, task: str, num_images: int) -> list[Tensor]:
    """``num_images`` ``(3, h, w)`` images in ``[0, 1]``, evenly spaced over the training split
    of ``data`` (all of them when it holds fewer).

    Raises:
        ConfigError: ``num_images`` is not positive, or ``data`` cannot serve ``task``.
        DataError: the data set is unreadable or empty.
    """
    from pansight.data.factory import build_dataset

    if num_images < 1:
        raise ConfigError(f"num_images={num_images} must be at least 1 to calibrate int8")
    dataset = build_dataset(data, CALIBRATION_SPLIT, task)
    if len(dataset) == 0:
        raise DataError(
            f"calibration data set {data.name!r} ({data.root or 'generated'}) has no "
            f"{CALIBRATION_SPLIT} images; point --calibration at a data set with images"
        )
    count = min(num_images, len(dataset))
    indices = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    return [dataset[int(index)][0] for index in indices]


def fp32_node_names(graph: onnx.ModelProto, model_cls: type, options: Int8Options) -> list[str]:
    """Names of the nodes of ``graph`` to leave in float: the final convolutions of
    ``options.keep_fp32_outputs`` (default: the model class's) and ``options.exclude_nodes``.

    Raises:
        ConfigError: an output or node name the graph lacks.
    """
    outputs = options.keep_fp32_outputs
    if outputs is None:
        outputs = DEFAULT_FP32_OUTPUTS.get(model_cls, ())
    names = final_convolutions(graph, outputs)
    known = {node.name for node in graph.graph.node}
    missing = sorted(set(options.exclude_nodes) - known)
    if missing:
        raise ConfigError(f"exclude_nodes {missing} are not nodes of the graph")
    return sorted(set(names) | set(options.exclude_nodes))


def final_convolutions(graph: onnx.ModelProto, outputs: Sequence[str]) -> list[str]:
    """Names of the ``Conv`` nodes that compute graph ``outputs``, found walking up from each
    output through non-``Conv`` nodes (reshapes, concatenations, activations) and stopping at
    every ``Conv``.

    Raises:
        ConfigError: an output name the graph lacks.
    """
    graph_outputs = [output.name for output in graph.graph.output]
    missing = sorted(set(outputs) - set(graph_outputs))
    if missing:
        raise ConfigError(f"outputs {missing} are not graph outputs; it has {graph_outputs}")
    producer = {name: node for node in graph.graph.node for name in node.output}
    pending, seen, convolutions = list(outputs), set(), []
    while pending:
        node = producer.get(pending.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Conv":
            convolutions.append(node.name)
        else:
            pending.extend(node.input)
    return sorted(convolutions)
