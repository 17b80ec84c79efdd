"""Exact graph simplification: a ReLU of a value that cannot be negative leaves the graph, the
outputs stay the same bit for bit, and every other ReLU stays."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper

from pansight.export import export_onnx
from pansight.export.simplify import drop_redundant_relus
from pansight.models.zoo import build_model

SHAPE = [1, 2, 5, 6]
UPSAMPLED = [1, 2, 10, 12]


def graph_of(nodes, output, output_shape=UPSAMPLED, initializers=()):
    """A model with input ``x`` ``SHAPE`` and float output ``output``."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
        initializer=list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def resize(source, target, mode="linear", transform="half_pixel"):
    """Nodes upsampling ``source`` twice into ``target`` (``scales`` as a Constant)."""
    scales = helper.make_node(
        "Constant",
        [],
        [target + "_scales"],
        value=helper.make_tensor("s", TensorProto.FLOAT, [4], [1, 1, 2, 2]),
    )
    node = helper.make_node(
        "Resize",
        [source, "", target + "_scales"],
        [target],
        mode=mode,
        coordinate_transformation_mode=transform,
    )
    return [scales, node]


def run(model, x):
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"x": x})[0]


def inputs():
    return np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)


def test_relu_after_bilinear_upsampling_of_a_relu_goes_and_outputs_stay():
    nodes = [
        helper.make_node("Relu", ["x"], ["r1"], name="r1"),
        *resize("r1", "up"),
        helper.make_node("Relu", ["up"], ["r2"], name="r2"),
        helper.make_node("Neg", ["r2"], ["y"]),
    ]
    model = graph_of(nodes, "y")
    expected = run(model, inputs())
    assert drop_redundant_relus(model) == ["r2"]
    onnx.checker.check_model(model)
    assert [node.name for node in model.graph.node if node.op_type == "Relu"] == ["r1"]
    np.testing.assert_array_equal(run(model, inputs()), expected)


def test_chains_of_relus_keep_the_first():
    nodes = [
        helper.make_node("Relu", ["x"], ["r1"], name="r1"),
        helper.make_node("Relu", ["r1"], ["r2"], name="r2"),
        helper.make_node("MaxPool", ["r2"], ["pooled"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["pooled"], ["r3"], name="r3"),
        helper.make_node("Neg", ["r3"], ["y"]),
    ]
    model = graph_of(nodes, "y", SHAPE)
    expected = run(model, inputs())
    assert drop_redundant_relus(model) == ["r2", "r3"]
    onnx.checker.check_model(model)
    assert list(model.graph.node[-1].input) == ["pooled"]
    assert list(model.graph.node[-2].input) == ["r1"]
    np.testing.assert_array_equal(run(model, inputs()), expected)


@pytest.mark.parametrize(
    "upsampling",
    [
        pytest.param(lambda: resize("r1", "up", mode="cubic"), id="cubic overshoots"),
        pytest.param(
            lambda: resize("r1", "up", transform="tf_crop_and_resize"), id="crop extrapolates"
        ),
        pytest.param(lambda: [helper.make_node("Neg", ["r1"], ["up"])], id="not sign-keeping"),
    ],
)
def test_relus_of_values_that_may_be_negative_stay(upsampling):
    nodes = [
        helper.make_node("Relu", ["x"], ["r1"], name="r1"),
        *upsampling(),
        helper.make_node("Relu", ["up"], ["r2"], name="r2"),
        helper.make_node("Neg", ["r2"], ["y"]),
    ]
    model = graph_of(nodes, "y")
    assert drop_redundant_relus(model) == []
    assert sum(node.op_type == "Relu" for node in model.graph.node) == 2


def test_relu_of_a_graph_input_and_relu_giving_a_graph_output_stay():
    nodes = [
        helper.make_node("Relu", ["x"], ["r1"], name="r1"),
        helper.make_node("Relu", ["r1"], ["y"], name="r2"),
    ]
    model = graph_of(nodes, "y", SHAPE)
    assert drop_redundant_relus(model) == []


def test_yolact_graph_has_no_relu_after_the_protonet_upsampling(tmp_path):
    torch.manual_seed(0)
    tiny = {"input_size": 64, "fpn_channels": 16, "proto_channels": 16, "num_prototypes": 8}
    model = build_model("yolact_r18", ["a", "b"], tiny).eval()
    graph = onnx.load(export_onnx(model, tmp_path / "yolact.onnx")).graph
    producers = {output: node for node in graph.node for output in node.output}
    relu_inputs = [
        producers[node.input[0]].op_type for node in graph.node if node.op_type == "Relu"
    ]
    assert "Conv" in relu_inputs
    assert "Resize" not in relu_inputs
