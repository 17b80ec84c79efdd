"""Exact simplifications of a traced ONNX graph, made before it is written.

A pass removes a node only where its output equals its input for every finite input, so the
simplified graph computes the traced one's outputs bit for bit (up to the sign of a zero).
:func:`drop_redundant_relus` removes a ``Relu`` whose input is never negative: another
``Relu``'s output, possibly moved on by operators that only select, copy or average values with
non-negative weights (:data:`SIGN_KEEPING`).

See docs/export.md for why these passes exist and the node they remove from YOLACT.
"""

from __future__ import annotations

import onnx

NON_NEGATIVE = frozenset({"Relu"})
"""Operators whose output is never negative, whatever their input."""

SIGN_KEEPING = frozenset(
    {
        "MaxPool",
        "Resize",
        "Upsample",
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Identity",
    }
)
"""Operators whose output values are values of their first input, or averages of them with
non-negative weights (``Resize`` only in the modes :func:`keeps_sign` accepts), so a
non-negative input gives a non-negative output."""

SIGN_KEEPING_RESIZE_MODES = (b"nearest", b"linear")
"""``Resize`` modes whose weights are non-negative (``cubic`` overshoots)."""


def drop_redundant_relus(model: onnx.ModelProto) -> list[str]:
    """Remove, in place, every ``Relu`` of ``model``'s main graph whose input is never
    negative (docs/export.md); return the names of the removed nodes.

    A ``Relu`` whose output is a graph output stays (the output keeps its name). Readers of a
    removed node's output read its input instead.
    """
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    graph_outputs = {value.name for value in graph.output}
    replacements: dict[str, str] = {}
    kept, dropped = [], []
    for node in graph.node:
        source = node.input[0] if node.input else ""
        if (
            node.op_type == "Relu"
            and node.output[0] not in graph_outputs
            and is_non_negative(source, producers)
        ):
            replacements[node.output[0]] = replacements.get(source, source)
            dropped.append(node.name)
        else:
            kept.append(node)
    if not dropped:
        return []
    for node in kept:
        for index, name in enumerate(node.input):
            node.input[index] = replacements.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)
    return dropped


def is_non_negative(name: str, producers: dict[str, onnx.NodeProto]) -> bool:
    """Whether value ``name`` is never negative: the output of a :data:`NON_NEGATIVE` node,
    or of a chain of sign-keeping nodes (:func:`keeps_sign`) starting from one. Graph inputs
    and initializers are not inspected (``False``)."""
    node = producers.get(name)
    while node is not None and node.op_type not in NON_NEGATIVE:
        if not keeps_sign(node):
            return False
        node = producers.get(node.input[0])
    return node is not None


def keeps_sign(node: onnx.NodeProto) -> bool:
    """Whether ``node`` gives non-negative outputs for a non-negative first input: a
    :data:`SIGN_KEEPING` operator, a ``Resize`` or ``Upsample`` only in nearest or linear mode
    and not cropping (``tf_crop_and_resize`` fills with ``extrapolation_value``)."""
    if node.op_type not in SIGN_KEEPING:
        return False
    if node.op_type not in ("Resize", "Upsample"):
        return True
    attributes = {attribute.name: attribute for attribute in node.attribute}
    mode = attributes["mode"].s if "mode" in attributes else b"nearest"
    transform = attributes.get("coordinate_transformation_mode")
    cropping = transform is not None and transform.s == b"tf_crop_and_resize"
    return mode in SIGN_KEEPING_RESIZE_MODES and not cropping
