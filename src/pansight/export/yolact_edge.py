"""ONNX export of YolactEdge: one graph holding both paths, and its onnxruntime video predictor.

:func:`keyframe_switch_graph` joins the keyframe and non-keyframe paths under an ONNX ``If`` on
the graph's ``keyframe`` input, so one file carries the whole model: inputs ``images``,
``keyframe`` and the keyframe state :data:`STATE_INPUTS`; outputs YOLACT's, then the state after
this frame, :data:`STATE_OUTPUTS`. :class:`YolactEdgeOnnxPredictor` runs the graph with the
eager model's keyframe decision and state type.

See docs/export.md for the shapes of the state and what each branch holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import Tensor, nn

from pansight.errors import ConfigError
from pansight.export.predictor import OnnxPredictor
from pansight.export.tracing import INPUT_NAME, trace_module
from pansight.models.streaming import stream_detections
from pansight.models.yolact import HEAD_OUTPUTS
from pansight.models.yolact.edge.model import (
    KeyframeFeatures,
    StreamState,
    YolactEdge,
)
from pansight.models.yolact.model import YolactOutputs
from pansight.ops.histograms import color_histograms
from pansight.structures import Detections, ImageBatch

KEYFRAME_INPUT = "keyframe"
STATE_FIELDS = ("c3_lateral", "reduced_c3", "p4", "p5")
"""The :class:`KeyframeFeatures` fields the graph reads and writes, in graph order."""
STATE_INPUTS = tuple(f"keyframe_{name}" for name in STATE_FIELDS)
STATE_OUTPUTS = tuple(f"next_keyframe_{name}" for name in STATE_FIELDS)
KEYFRAME_PREFIX, TRANSFER_PREFIX = "keyframe/", "transfer/"
"""Prefixes of the names inside the ``If`` branches."""


def image_batch(images: Tensor) -> ImageBatch:
    """``images`` ``(B, 3, S, S)`` as a batch whose original sizes are the input size."""
    sizes = [(images.shape[-2], images.shape[-1])] * images.shape[0]
    return ImageBatch(images, sizes, sizes)


def head_outputs(outputs: YolactOutputs) -> tuple[Tensor, ...]:
    return tuple(getattr(outputs, name) for name in HEAD_OUTPUTS)


class KeyframeGraph(nn.Module):
    """The keyframe path: ``images`` -> YOLACT's outputs and the frame's keyframe state."""

    def __init__(self, model: YolactEdge) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        top_down, c3_lateral = model.fpn.top_down(model.body(model.normalize(images)))
        outputs = model.outputs_from_levels(model.fpn.smooth(top_down))
        reduced_c3 = model.flow_reduce(c3_lateral)
        return (*head_outputs(outputs), c3_lateral, reduced_c3, top_down["p4"], top_down["p5"])


class TransferGraph(nn.Module):
    """The non-keyframe path: ``images`` and the keyframe state -> YOLACT's outputs and the
    state unchanged."""

    def __init__(self, model: YolactEdge) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        c3_lateral, reduced_c3, p4, p5 = state
        keyframe = KeyframeFeatures(c3_lateral, p4, p5, images.new_zeros(0), reduced_c3)
        top_down, _ = self.model.transferred_top_down(image_batch(images), keyframe)
        outputs = self.model.outputs_from_levels(self.model.fpn.smooth(top_down))
        return (*head_outputs(outputs), *state)


def keyframe_switch_graph(model: YolactEdge, images: Tensor, dynamic: bool) -> onnx.ModelProto:
    """Trace both paths of ``model`` on ``images`` ``(1, 3, S, S)`` and join them under an
    ``If`` on ``keyframe`` (docs/export.md); ``dynamic`` makes the batch axis of every
    input and output but the flag and ``priors`` dynamic."""
    output_names = [*HEAD_OUTPUTS, *STATE_OUTPUTS]

    def batch_axes(input_names: list[str]) -> dict[str, dict[int, str]] | None:
        batched = [*input_names, *(name for name in output_names if name != "priors")]
        return {name: {0: "batch"} for name in batched} if dynamic else None

    keyframe_module = KeyframeGraph(model)
    keyframe_inputs = [INPUT_NAME]
    keyframe = trace_module(
        keyframe_module, (images,), keyframe_inputs, output_names, batch_axes(keyframe_inputs)
    )
    transfer_inputs = [INPUT_NAME, *STATE_INPUTS]
    transfer = trace_module(
        TransferGraph(model),
        (images, *example_state(keyframe_module, images)),
        transfer_inputs,
        output_names,
        batch_axes(transfer_inputs),
    )
    return join_under_if(keyframe, transfer)


def example_state(keyframe_module: KeyframeGraph, images: Tensor) -> tuple[Tensor, ...]:
    """The keyframe state of ``images``, to trace the non-keyframe path on (the model in eval
    mode meanwhile)."""
    model = keyframe_module.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return keyframe_module(images)[len(HEAD_OUTPUTS) :]
    finally:
        model.train(was_training)


def join_under_if(keyframe: onnx.ModelProto, transfer: onnx.ModelProto) -> onnx.ModelProto:
    """One model: ``transfer``'s inputs plus a scalar bool ``keyframe``, and one ``If`` node
    running ``keyframe``'s graph (which reads ``images`` only) when it is true, ``transfer``'s
    otherwise. Both graphs have the same output names; each keeps its weights."""
    branches = [
        onnx.compose.add_prefix_graph(model.graph, prefix, rename_inputs=False)
        for model, prefix in ((keyframe, KEYFRAME_PREFIX), (transfer, TRANSFER_PREFIX))
    ]
    flag = onnx.helper.make_tensor_value_info(KEYFRAME_INPUT, onnx.TensorProto.BOOL, [])
    inputs = [transfer.graph.input[0], flag, *transfer.graph.input[1:]]
    return switch_model(branches, inputs, list(transfer.graph.output), keyframe)


def switch_model(
    branches: list[onnx.GraphProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    template: onnx.ModelProto,
) -> onnx.ModelProto:
    """One model of ``inputs`` and ``outputs`` whose single ``If`` on ``keyframe`` runs
    ``branches[0]`` when it is true, ``branches[1]`` otherwise; opsets and IR version are
    ``template``'s.

    Each branch keeps its own weights, though both paths share some (``c3`` and after):
    onnxruntime runs such a branch as fast as the path's graph alone, but a third slower when
    the branch reads its weights from the outer graph (``yolact_edge_r18`` keyframe at 160 px,
    2 threads: 15.8 against 21.0 ms), and the shared weights add a sixth to the file."""
    for branch in branches:
        del branch.input[:]
    node = onnx.helper.make_node(
        "If",
        [KEYFRAME_INPUT],
        [output.name for output in outputs],
        then_branch=branches[0],
        else_branch=branches[1],
    )
    graph = onnx.helper.make_graph([node], "yolact_edge", inputs, outputs)
    joined = onnx.helper.make_model(
        graph, opset_imports=template.opset_import, ir_version=template.ir_version
    )
    onnx.checker.check_model(joined)
    return joined


def branch_models(joined: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The keyframe and the non-keyframe branch of a :func:`join_under_if` model as standalone
    models: inputs ``images`` (and the keyframe state :data:`STATE_INPUTS`), their weights,
    outputs and all other names as in the branch (prefixed ``keyframe/`` or ``transfer/``).
    :func:`switch_model` joins them (or versions of them) back."""
    (switch,) = joined.graph.node
    branches = {attribute.name: attribute.g for attribute in switch.attribute}
    inputs = {value.name: value for value in joined.graph.input}
    models = []
    for name, input_names in (
        ("then_branch", (INPUT_NAME,)),
        ("else_branch", (INPUT_NAME, *STATE_INPUTS)),
    ):
        graph = onnx.GraphProto()
        graph.CopyFrom(branches[name])
        graph.input.extend(inputs[input_name] for input_name in input_names)
        models.append(
            onnx.helper.make_model(
                graph, opset_imports=joined.opset_import, ir_version=joined.ir_version
            )
        )
    return models[0], models[1]


class YolactEdgeOnnxPredictor(OnnxPredictor):
    """An exported YolactEdge run by onnxruntime: :class:`OnnxPredictor`'s ``predict`` (every
    image a keyframe) and the eager model's video interface, :meth:`predict_video_frame` and
    :meth:`predict_video`, with the same :class:`StreamState` and keyframe rules.

    A file exported without the flow module (``with_flow=false``) is a YOLACT graph: every
    frame is a keyframe.

    Attributes:
        has_flow: whether the graph has the non-keyframe path (the model was built
            ``with_flow``).
    """

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        session: onnxruntime.InferenceSession | None = None,
    ) -> None:
        super().__init__(path, threads, session)
        graph_inputs = self.session.get_inputs()
        self.has_flow = any(graph_input.name == KEYFRAME_INPUT for graph_input in graph_inputs)
        self._state_shapes = {
            graph_input.name: graph_input.shape[1:]
            for graph_input in graph_inputs
            if graph_input.name in STATE_INPUTS
        }

    def forward_frame(
        self, batch: ImageBatch, state: StreamState | None = None, keyframe: bool | None = None
    ) -> tuple[YolactOutputs, StreamState]:
        """As :meth:`~pansight.models.yolact.edge.model.YolactEdge.forward_frame`: one video frame
        per image of ``batch`` -> its outputs and the state after it.

        Raises:
            ConfigError: the images' size differs from the graph's, or their number from the
                batch size of a graph exported without ``dynamic``.
        """
        sizes = tuple((int(height), int(width)) for height, width in batch.original_sizes)
        next_index = 0 if state is None else state.frame_index + 1
        images = batch.tensor.detach().float().cpu()
        self._check_spatial_size(images)
        if self.batch_size not in (None, len(images)):
            raise ConfigError(
                f"{self.path}: the graph streams {self.batch_size} frame(s) at a time, not "
                f"{len(images)}; export it with --dynamic for other batch sizes"
            )
        if state is None or self.model.is_keyframe(state, sizes, keyframe, batch):
            outputs, features = self._run_frame(images, None)
            features["histograms"] = color_histograms(batch.tensor)
            return outputs, StreamState(KeyframeFeatures(**features), sizes, next_index, 0)
        outputs, _ = self._run_frame(images, state.keyframe)
        steps = state.frames_since_keyframe + 1
        return outputs, dataclasses.replace(
            state, frame_index=next_index, frames_since_keyframe=steps
        )

    def predict_video_frame(
        self, image: Tensor, state: StreamState | None = None, keyframe: bool | None = None
    ) -> tuple[Detections, StreamState]:
        """Detections for one ``(3, h, w)`` frame in ``[0, 1]`` and the state after it (as the
        eager model's :meth:`~pansight.models.yolact.edge.model.YolactEdge.predict_video_frame`)."""
        with torch.no_grad():
            batch, _ = self.preprocess([image.cpu()])
            outputs, state = self.forward_frame(batch, state, keyframe)
            (detections,) = self.postprocess(outputs, batch)
        return detections, state

    def predict_video(self, frames: Iterable[Tensor]) -> list[Detections]:
        """Detections of each ``(3, h, w)`` frame, keyframes every ``keyframe_interval``."""
        return list(stream_detections(self, frames))

    def _run(self, images: Tensor) -> list[np.ndarray]:
        if not self.has_flow:
            return super()._run(images)
        feeds = self._feeds(images, None)
        return self.session.run(list(self.spec.output_names), feeds)

    def _run_frame(
        self, images: Tensor, keyframe: KeyframeFeatures | None
    ) -> tuple[YolactOutputs, dict[str, Tensor]]:
        """The outputs of one frame batch ``(B, 3, S, S)`` (the keyframe path when
        ``keyframe`` is ``None``) and, for a keyframe, its :data:`STATE_FIELDS` (empty
        tensors without the flow module, whose frames never read them)."""
        if not self.has_flow:
            return self(image_batch(images)), dict.fromkeys(STATE_FIELDS, images.new_zeros(0))
        names = [*HEAD_OUTPUTS, *(STATE_OUTPUTS if keyframe is None else ())]
        feeds = self._feeds(images, keyframe)
        arrays = [torch.from_numpy(array) for array in self.session.run(names, feeds)]
        fields = dict.fromkeys(field.name for field in dataclasses.fields(YolactOutputs))
        fields.update(zip(HEAD_OUTPUTS, arrays))
        return YolactOutputs(**fields), dict(zip(STATE_FIELDS, arrays[len(HEAD_OUTPUTS) :]))

    def _feeds(self, images: Tensor, keyframe: KeyframeFeatures | None) -> dict[str, np.ndarray]:
        """The graph's inputs: the images, the flag, and the keyframe's state (zeros of the
        state's shapes for the keyframe path, which does not read them)."""
        feeds = {INPUT_NAME: images.numpy(), KEYFRAME_INPUT: np.array(keyframe is None)}
        for field, name in zip(STATE_FIELDS, STATE_INPUTS):
            if keyframe is None:
                shape = [len(images), *self._state_shapes[name]]
                feeds[name] = np.zeros(shape, dtype=np.float32)
            else:
                feeds[name] = getattr(keyframe, field).float().cpu().numpy()
        return feeds
