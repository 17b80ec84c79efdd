"""INT8 static quantization of an exported pansight ONNX file with onnxruntime.

:func:`quantize_onnx` calibrates an fp32 export on images preprocessed as at prediction time and
writes an int8 QDQ graph (uint8 activations, int8 weights per output channel) that
:class:`~pansight.export.predictor.OnnxPredictor` opens unchanged. Weights take 7 bits where
:func:`pansight.hardware.int8_needs_reduced_range` says so (no VNNI), 8 elsewhere
(:class:`Int8Options`). It covers every model whose export spec has an
:class:`~pansight.models.registry.Int8Spec`.

See docs/export.md for the QDQ layout, the VNNI / 7-bit weight facts and what stays in float.
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

from pansight import hardware
from pansight.config import DataConfig, from_dict
from pansight.data.factory import build_dataset
from pansight.errors import CheckpointError, ConfigError, DataError
from pansight.export.predictor import load_onnx
from pansight.export.rcnn import IMAGE_SIZES_NAME
from pansight.export.specs import int8_spec, quantizable_models
from pansight.export.tracing import INPUT_NAME, write_atomically
from pansight.export.yolact_edge import (
    KEYFRAME_PREFIX,
    STATE_FIELDS,
    STATE_INPUTS,
    TRANSFER_PREFIX,
    YolactEdgeOnnxPredictor,
    branch_models,
    switch_model,
)
from pansight.models.yolact.edge.model import KeyframeFeatures, YolactEdge
from pansight.structures import ImageBatch

DEFAULT_CALIBRATION_IMAGES = 32
CALIBRATION_SPLIT = "train"
"""Calibration reads the training split, so validation metrics stay honest."""


@dataclass(frozen=True)
class Int8Options:
    """How to quantize.

    Attributes:
        calibration: the data set whose images calibrate the activation ranges (its
            ``train`` split); ``None``: the one the model was trained on.
        num_images: calibration images, evenly spaced over the split.
        keep_fp32_outputs: graph outputs whose final convolutions (those reached walking up
            from the output through non-convolution nodes) stay in float; ``None``: the
            model's default (its :class:`~pansight.models.registry.Int8Spec`).
        exclude_nodes: further node names left in float.
        per_channel: one weight scale per output channel (else one per tensor).
        reduce_range: 7-bit weights (for processors without VNNI, where u8s8 products of
            8-bit weights saturate), else 8-bit; ``None``: what this processor needs
            (:func:`pansight.hardware.int8_needs_reduced_range`). A file with 7-bit weights
            is right everywhere, one with 8-bit weights only on processors with VNNI.
    """

    calibration: DataConfig | None = None
    num_images: int = DEFAULT_CALIBRATION_IMAGES
    keep_fp32_outputs: tuple[str, ...] | None = None
    exclude_nodes: tuple[str, ...] = ()
    per_channel: bool = True
    reduce_range: bool | None = None

    @property
    def weight_bits(self) -> int:
        """The weights' width these options give on this processor: 7 or 8."""
        reduce_range = self.reduce_range
        if reduce_range is None:
            reduce_range = hardware.int8_needs_reduced_range()
        return 7 if reduce_range else 8


def supports_int8(model_cls: type) -> bool:
    """Whether :func:`quantize_onnx` quantizes the exports of ``model_cls``."""
    return int8_spec(model_cls) is not None


class CalibrationFeeds(CalibrationDataReader):
    """Feeds the graph's inputs for one preprocessed image per ``get_next`` to the calibrator."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self._iterator: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = iter(self.feeds)


def graph_feeds(batch: ImageBatch, per_image: bool) -> dict[str, np.ndarray]:
    """The inputs of a graph for ``batch``, one preprocessed image: ``images`` ``(1, 3, H,
    W)``, and for an R-CNN graph (``per_image``) ``image_sizes`` ``(1, 2)`` int64 ``(h, w)``."""
    feeds = {INPUT_NAME: batch.tensor.detach().float().cpu().numpy()}
    if per_image:
        feeds[IMAGE_SIZES_NAME] = np.array(batch.image_sizes, dtype=np.int64).reshape(-1, 2)
    return feeds


def quantize_onnx(
    fp32_path: str | Path, out: str | Path, options: Int8Options | None = None
) -> Path:
    """Write the int8 version of the pansight fp32 ONNX file ``fp32_path`` to ``out`` (which
    may be ``fp32_path`` itself); return ``out``.

    Raises:
        CheckpointError: ``fp32_path`` is not a pansight fp32 export.
        ConfigError: the model does not quantize yet (its export spec has no ``int8``), or
            ``options`` name outputs or nodes the graph lacks, ask for no images, or name a
            calibration data set that cannot serve the model's task.
        DataError: the calibration data set is unreadable or empty.
    """
    options = options or Int8Options()
    weight_bits = options.weight_bits
    options = replace(options, reduce_range=weight_bits == 7)
    fp32_path, out = Path(fp32_path), Path(out)
    predictor = load_onnx(fp32_path, threads=1)
    if predictor.metadata.precision != "fp32":
        raise CheckpointError(f"{fp32_path}: already {predictor.metadata.precision}; quantize fp32")
    model = predictor.model
    if not supports_int8(type(model)):
        supported = ", ".join(quantizable_models())
        raise ConfigError(
            f"int8 quantization of {predictor.metadata.model_name} is not supported yet; "
            f"it supports {supported}"
        )
    data = options.calibration or from_dict(DataConfig, predictor.metadata.train_data)
    images = calibration_images(data, predictor.task, options.num_images)
    batches = [predictor.preprocess([image])[0] for image in images]
    fp32_graph = onnx.load(fp32_path)
    with tempfile.TemporaryDirectory(prefix="pansight-int8-") as folder:
        job = QuantizationJob(type(model), options, Path(folder), bool(predictor.spec.per_image))
        if isinstance(model, YolactEdge) and model.config.with_flow:
            int8_graph, fp32_nodes = quantize_switch(job, fp32_graph, predictor, batches)
        else:
            check_exclude_nodes([fp32_graph], options)
            feeds = [graph_feeds(batch, job.per_image) for batch in batches]
            int8_graph, fp32_nodes = job.quantize(fp32_graph, feeds)
    metadata = replace(
        predictor.metadata, precision="int8", fp32_nodes=fp32_nodes, int8_weight_bits=weight_bits
    )
    del int8_graph.metadata_props[:]
    onnx.helper.set_model_props(int8_graph, metadata.to_props())
    return write_atomically(int8_graph, out)


@dataclass(frozen=True)
class QuantizationJob:
    """onnxruntime's static quantization of graphs of ``model_cls`` as ``options`` say, with
    work files in ``folder``; ``per_image``: R-CNN graphs (no symbolic shape inference, which
    their data-dependent shapes defeat)."""

    model_cls: type
    options: Int8Options
    folder: Path
    per_image: bool = False

    def quantize(
        self, graph: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], prefix: str = ""
    ) -> tuple[onnx.ModelProto, list[str]]:
        """``graph`` quantized after calibration on ``feeds`` (one dict of graph inputs per
        image), and the names of its nodes left in float; ``prefix`` is that of the graph's
        names (an ``If`` branch's), which the output names of ``options`` lack."""
        stem = self.folder / (prefix.strip("/") or "graph")
        prepared, quantized = stem.with_suffix(".prepared.onnx"), stem.with_suffix(".int8.onnx")
        quant_pre_process(graph, prepared, skip_symbolic_shape=self.per_image)
        fp32_nodes = fp32_node_names(onnx.load(prepared), self.model_cls, self.options, prefix)
        operators = int8_spec(self.model_cls).operators
        quantize_static(
            prepared,
            quantized,
            CalibrationFeeds(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=self.options.per_channel,
            reduce_range=self.options.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=fp32_nodes,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(operators) if operators else None,
        )
        return onnx.load(quantized), fp32_nodes


def quantize_switch(
    job: QuantizationJob,
    joined: onnx.ModelProto,
    predictor: YolactEdgeOnnxPredictor,
    batches: list[ImageBatch],
) -> tuple[onnx.ModelProto, list[str]]:
    """A YolactEdge graph (:mod:`pansight.export.yolact_edge`) quantized branch by branch: the
    keyframe path calibrated on ``batches``, the non-keyframe path on each batch with its own
    keyframe state and with the previous batch's; the quantized branches joined back under the
    ``If``. Returns it and the names of the nodes left in float."""
    keyframe, transfer = branch_models(joined)
    check_exclude_nodes([keyframe, transfer], job.options)
    states = [predictor.forward_frame(batch)[1].keyframe for batch in batches]
    pairs = [(index, index) for index in range(len(batches))]
    pairs += [(index - 1, index) for index in range(1, len(batches))]
    transfer_feeds = [
        graph_feeds(batches[frame], False) | keyframe_feeds(states[key]) for key, frame in pairs
    ]
    keyframe, keyframe_nodes = job.quantize(
        keyframe, [graph_feeds(batch, False) for batch in batches], KEYFRAME_PREFIX
    )
    transfer, transfer_nodes = job.quantize(transfer, transfer_feeds, TRANSFER_PREFIX)
    graphs = [outputs_from_nodes(keyframe.graph), outputs_from_nodes(transfer.graph)]
    int8 = switch_model(graphs, list(joined.graph.input), list(joined.graph.output), keyframe)
    return int8, sorted(keyframe_nodes + transfer_nodes)


def outputs_from_nodes(graph: onnx.GraphProto) -> onnx.GraphProto:
    """``graph`` with every output that is an initializer (a constant folded by the
    optimizer, such as YOLACT's priors) computed by an ``Identity`` node instead, as an ``If``
    branch's outputs must be; the initializer takes the suffix ``/value``."""
    constants = {tensor.name: tensor for tensor in graph.initializer}
    for output in graph.output:
        if output.name in constants:
            constants[output.name].name = f"{output.name}/value"
            graph.node.append(
                onnx.helper.make_node("Identity", [f"{output.name}/value"], [output.name])
            )
    return graph


def keyframe_feeds(keyframe: KeyframeFeatures) -> dict[str, np.ndarray]:
    """The keyframe-state inputs of a YolactEdge graph holding ``keyframe``'s features."""
    return {
        name: getattr(keyframe, field).float().cpu().numpy()
        for field, name in zip(STATE_FIELDS, STATE_INPUTS)
    }


def check_exclude_nodes(graphs: list[onnx.ModelProto], options: Int8Options) -> None:
    """Raises ConfigError: ``options.exclude_nodes`` names a node none of ``graphs`` has."""
    known = {node.name for graph in graphs for node in graph.graph.node}
    missing = sorted(set(options.exclude_nodes) - known)
    if missing:
        raise ConfigError(f"exclude_nodes {missing} are not nodes of the graph")


def calibration_images(data: DataConfig, task: str, num_images: int) -> list[Tensor]:
    """``num_images`` ``(3, h, w)`` images in ``[0, 1]``, evenly spaced over the training split
    of ``data`` (all of them when it holds fewer).

    Raises:
        ConfigError: ``num_images`` is not positive, or ``data`` cannot serve ``task``.
        DataError: the data set is unreadable or empty.
    """
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


def fp32_node_names(
    graph: onnx.ModelProto, model_cls: type, options: Int8Options, prefix: str = ""
) -> list[str]:
    """Names of the nodes of ``graph`` to leave in float: the final convolutions of
    ``options.keep_fp32_outputs`` (default: the model class's; output names as the graph has
    them after ``prefix``) with the nodes between them and those outputs, and the nodes of
    ``options.exclude_nodes`` the graph has.

    Raises:
        ConfigError: an output name the graph lacks.
    """
    outputs = options.keep_fp32_outputs
    if outputs is None:
        spec = int8_spec(model_cls)
        outputs = spec.fp32_outputs if spec is not None else ()
    convolutions, between = output_heads(graph, [prefix + output for output in outputs])
    known = {node.name for node in graph.graph.node}
    return sorted(set(convolutions) | set(between) | (set(options.exclude_nodes) & known))


def final_convolutions(graph: onnx.ModelProto, outputs: Sequence[str]) -> list[str]:
    """Names of the ``Conv`` nodes that compute graph ``outputs`` (:func:`output_heads`).

    Raises:
        ConfigError: an output name the graph lacks.
    """
    return output_heads(graph, outputs)[0]


def output_heads(graph: onnx.ModelProto, outputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Names of the ``Conv`` nodes that compute graph ``outputs``, found walking up from each
    output through non-``Conv`` nodes (reshapes, concatenations, activations) and stopping at
    every ``Conv`` (and at ``Shape``, which reads no values), and names of those non-``Conv``
    nodes.

    A convolution kept in float needs the nodes after it kept in float too: a
    ``QuantizeLinear`` on its output (which onnxruntime's QDQ propagation moves up through
    transposes and reshapes) makes onnxruntime quantize its weights itself (8 bits, one scale
    per tensor: its ``WeightBiasQuantization`` pass) and run it as an integer kernel.

    Raises:
        ConfigError: an output name the graph lacks.
    """
    graph_outputs = [output.name for output in graph.graph.output]
    missing = sorted(set(outputs) - set(graph_outputs))
    if missing:
        raise ConfigError(f"outputs {missing} are not graph outputs; it has {graph_outputs}")
    producer = {name: node for node in graph.graph.node for name in node.output}
    pending, seen, convolutions, between = list(outputs), set(), [], []
    while pending:
        node = producer.get(pending.pop())
        if node is None or node.name in seen or node.op_type == "Shape":
            continue
        seen.add(node.name)
        if node.op_type == "Conv":
            convolutions.append(node.name)
        else:
            between.append(node.name)
            pending.extend(node.input)
    return sorted(convolutions), sorted(between)
