"""What onnxruntime's integer kernels compute for an int8 (QDQ) graph, against what the graph
says, and the bounds the int8 tests hold them to.

The float reference: onnxruntime with every graph optimization off runs the file as written,
``DequantizeLinear`` -> float ``Conv`` -> ``QuantizeLinear``, in float arithmetic; it fuses no
integer kernels, so it is the same on every processor. With optimizations on (as
:class:`~pansight.export.predictor.OnnxPredictor` opens a file) the pairs fuse into
``QLinearConv``, ``QLinearAdd``, ... whose arithmetic depends on the processor.

The kernels are checked tensor by tensor (:func:`kernel_steps`): every ``QuantizeLinear``
output the kernels compute is compared with the reference computed from the kernels' own
inputs to that node. Comparing whole outputs instead would not separate right kernels from
wrong ones: the float reference and the integer kernels round a value lying within float error
of a half step differently (a few elements in 10,000), and every such one-step difference
changes the rounding of a few more elements in each later layer, so after 20 layers the two
can be nearly as far apart as two independent roundings of the network (measured: up to 0.85
times the reference's own distance from fp32, with kernels that are right at every node).
"""

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from pansight.export.predictor import OnnxPredictor, open_session

MAX_STEPS_OFF = 1
"""A kernel's output may differ from the reference by one quantization step (a rounding of a
value within float error of a half step), never more: saturated u8s8 pair sums (AVX2 without
VNNI, 8-bit weights) put elements tens of steps off (measured on an emulated Haswell: 24 to
229 steps)."""
MAX_FRACTION_OFF = 1 / 12
"""Of one tensor's elements, fewer than this may be off by a step. A fraction f of elements
off by one step Δ is an rms error of √f·Δ; rounding to the step itself is an rms error of
Δ/√12 at every element; so while f < 1/12 the kernels add less error than the quantization
they implement. Measured: at most 5e-4 with 32-bit accumulation (VNNI, or 7-bit weights on
AVX2); with saturation 0.06 to 1 (the step bound catches the small fractions)."""
QUANTIZATION_BOUND = {8: 0.08, 7: 0.16}
"""Largest relative error ``|int8 - fp32| / |fp32|`` of a graph output, per weight width.

Every quantized tensor adds rounding noise Δ/√12. Calibrated ranges span about 6.6 times a
tensor's rms (median over these models), so 8-bit activations add about 0.75% of it (6.6 /
255 / √12); 8-bit per-channel weights (a step of max|w|/127, max|w| about three rms) about
0.7%: about 1% per layer. Over the ~25 quantized layers of these ResNet-18 paths the noise
adds in quadrature to about 5%: 0.08 leaves a factor of 1.6 (measured 0.02-0.06 at 8 bits).
7-bit weights have twice the step (max|w|/64), so the error grows by at most a factor of 2:
0.16 (measured 0.03-0.07). The reference's error is float arithmetic, the same on every
processor; the kernels' outputs, another rounding of the same arithmetic, are held to the
same bound."""


def reference_session(model: str | onnx.ModelProto) -> onnxruntime.InferenceSession:
    """A session running ``model`` (a path or a model) as written: no fusion, float math."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    source = model if isinstance(model, str) else model.SerializeToString()
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def kernel_session(model: onnx.ModelProto) -> onnxruntime.InferenceSession:
    """A session on ``model`` opened as :class:`OnnxPredictor` opens a file (every
    optimization, the float weights kept float), on one thread."""
    with tempfile.TemporaryDirectory(prefix="pansight-kernels-") as folder:
        path = Path(folder) / "model.onnx"
        onnx.save(model, path)
        return open_session(path, 1)


def reference_predictor(int8: OnnxPredictor) -> OnnxPredictor:
    """The predictor of ``int8``'s file (of its own class) running it as written (without the
    warning an 8-bit file gives without VNNI: this runs no integer kernels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return type(int8)(int8.path, 1, reference_session(str(int8.path)))


def relative_error(found, expected) -> float:
    """``|found - expected| / |expected|`` (Frobenius norms)."""
    return float((found - expected).norm() / expected.norm())


def quantized_tensors(model: onnx.ModelProto) -> list[str]:
    """The uint8 tensors of ``model``'s top-level graph: the outputs of its ``QuantizeLinear``
    nodes, in graph order."""
    return [node.output[0] for node in model.graph.node if node.op_type == "QuantizeLinear"]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the uint8 tensors ``names``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {output.name for output in probe.graph.output}
    probe.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None)
        for name in names
        if name not in known
    )
    return probe


def cut_at_quantized_tensors(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which every ``QuantizeLinear`` output ``T`` is a graph input read
    by the nodes after it, while the node writes ``T/reference``, a graph output: each node
    then computes from inputs given from outside."""
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    for node in cut.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        name = node.output[0]
        node.output[0] = f"{name}/reference"
        cut.graph.input.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None)
        )
        cut.graph.output.append(
            onnx.helper.make_tensor_value_info(f"{name}/reference", onnx.TensorProto.UINT8, None)
        )
    return cut


def kernel_steps(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> dict[str, tuple[float, int]]:
    """For each uint8 tensor of ``model`` run on ``feeds``: the fraction of its elements where
    the kernels differ from the float reference computed from the kernels' inputs to that node,
    and the largest difference, in quantization steps."""
    names = quantized_tensors(model)
    probe = kernel_session(with_outputs(model, names))
    outputs = [output.name for output in probe.get_outputs()]
    kernels = dict(zip(outputs, probe.run(outputs, feeds)))
    reference = reference_session(cut_at_quantized_tensors(model))
    wanted = {value.name for value in reference.get_inputs()}
    given = {**feeds, **{name: kernels[name] for name in names if name in wanted}}
    recomputed = reference.run([f"{name}/reference" for name in names], given)
    steps = {}
    for name, expected in zip(names, recomputed):
        off = np.abs(kernels[name].astype(np.int32) - expected.astype(np.int32))
        steps[name] = (float((off > 0).mean()), int(off.max(initial=0)))
    return steps


def assert_kernels_compute(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    """Every uint8 tensor the kernels compute for ``feeds`` is within :data:`MAX_STEPS_OFF`
    steps of the reference, with fewer than :data:`MAX_FRACTION_OFF` of its elements off."""
    steps = kernel_steps(model, feeds)
    assert steps
    wrong = {
        name: found
        for name, found in steps.items()
        if found[1] > MAX_STEPS_OFF or found[0] >= MAX_FRACTION_OFF
    }
    assert not wrong, wrong
