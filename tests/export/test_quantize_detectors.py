"""INT8 quantization of the detection pipelines: R-CNN graphs (a tiny Panoptic FPN stands for
them all) quantize their convolutions only, their integer kernels compute the quantized graph
and their detections stay close to fp32; YolactEdge quantizes both of its paths but their heads,
on keyframes and warped frames alike. Shared settings and helpers are test_quantize.py's."""

import dataclasses

import onnx
import pytest
import torch
from int8_kernels import QUANTIZATION_BOUND, assert_kernels_compute, relative_error
from test_quantize import (
    DATA,
    OPTIONS,
    RCNN_FLOAT_OPERATORS,
    TINY_RCNN,
    YOLACT_HEAD,
    assert_head_stays_float,
    calibration_feeds,
    tiny_model,
)
from torchvision.ops import box_iou

from pansight.data.factory import build_dataset
from pansight.export import export_onnx, load_onnx, quantize_onnx
from pansight.export.quantize import (
    calibration_images,
    final_convolutions,
    graph_feeds,
    keyframe_feeds,
)
from pansight.export.yolact_edge import KEYFRAME_PREFIX, TRANSFER_PREFIX, branch_models
from pansight.models.zoo import build_model
from pansight.structures import Detections, PanopticMap


def tiny_panoptic_fpn():
    """A tiny random Panoptic FPN for ``DATA``'s things and stuff: its graph is Mask R-CNN's
    plus the semantic branch, so it stands for all R-CNN graphs."""
    flags = tuple(build_dataset(DATA, "val", "panoptic").thing_flags)
    overrides = {**TINY_RCNN, "thing_flags": flags, "semantic_channels": 32}
    torch.manual_seed(0)
    class_names = [f"class{k}" for k in range(len(flags))]
    return build_model("panoptic_fpn_r18", class_names, overrides).eval()


@pytest.fixture(scope="module")
def exported_rcnn(tmp_path_factory):
    """``(fp32 predictor, int8 predictor)`` of the tiny Panoptic FPN, int8 calibrated on
    ``DATA``."""
    folder = tmp_path_factory.mktemp("panoptic_fpn")
    model = tiny_panoptic_fpn()
    fp32 = export_onnx(model, folder / "fp32.onnx", train_data=dataclasses.asdict(DATA))
    return load_onnx(fp32, 1), load_onnx(quantize_onnx(fp32, folder / "int8.onnx", OPTIONS), 1)


def nodes_within(graph):
    """The nodes of ``graph`` and of its subgraphs (``If`` branches), recursively."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from nodes_within(attribute.g)


def test_rcnn_int8_quantizes_convolutions_only(exported_rcnn):
    _, int8 = exported_rcnn
    nodes = list(nodes_within(onnx.load(int8.path).graph))
    dequantized = {
        output for node in nodes if node.op_type == "DequantizeLinear" for output in node.output
    }
    convolutions = [node for node in nodes if node.op_type == "Conv"]
    assert convolutions
    assert all(set(node.input[:2]) <= dequantized for node in convolutions)
    assert set(RCNN_FLOAT_OPERATORS) <= {node.op_type for node in nodes}
    fully_connected = [node for node in nodes if node.op_type == "Gemm"]
    assert fully_connected and not any(node.input[1] in dequantized for node in fully_connected)


def matched_detections(expected, found, index):
    """For image ``index``: which fp32 detections have an int8 one of their label with IoU
    above 0.9 (the same detection: quantization moves boxes by hundredths of a pixel, while the
    near-duplicates NMS keeps overlap less), and the indices of the best such int8 detection."""
    same_label = expected.detection_labels[index][:, None] == found.detection_labels[index][None]
    overlaps = box_iou(expected.detection_boxes[index], found.detection_boxes[index])
    overlaps = torch.where(same_label & (overlaps > 0.9), overlaps, 0.0)
    best = overlaps.max(dim=1)
    return best.values > 0, best.indices


def test_rcnn_int8_kernels_compute_the_quantized_graph(exported_rcnn):
    """As for the plain networks: every uint8 tensor of the R-CNN graph (its convolutions are
    all outside the NMS branches) is the float reference's, to one step at a few elements."""
    _, int8 = exported_rcnn
    for feeds in calibration_feeds(int8):
        assert_kernels_compute(onnx.load(int8.path), feeds)


def test_rcnn_int8_detections_stay_close_to_fp32(exported_rcnn):
    """Random weights score every class alike, so the order of near-ties (and with it which
    boxes NMS keeps) moves under quantization: at least 70% of the 20 fp32 detections per
    image are kept (measured 80-95% at both widths). Their scores and boxes move with the
    features, whose error the quantization bound holds, so their tolerances scale with it: at
    8 bits 0.02 and 0.5 px, twice that at 7 (measured within 0.006 and 0.05 px at both)."""
    fp32, int8 = exported_rcnn
    bits = int8.metadata.int8_weight_bits
    scale = QUANTIZATION_BOUND[bits] / QUANTIZATION_BOUND[8]
    batch, _ = fp32.preprocess(calibration_images(DATA, fp32.task, OPTIONS.num_images))
    expected, found = fp32(batch), int8(batch)
    kept = []
    for index in range(len(batch)):
        matched, best = matched_detections(expected, found, index)
        kept.append(matched.float().mean())
        scores = expected.detection_scores[index][matched]
        found_scores = found.detection_scores[index][best[matched]]
        assert torch.allclose(found_scores, scores, atol=0.02 * scale)
        boxes = expected.detection_boxes[index][matched]
        found_boxes = found.detection_boxes[index][best[matched]]
        assert torch.allclose(found_boxes, boxes, atol=0.5 * scale)
    assert min(kept) >= 0.7, kept
    reference, quantized = expected.semantic_logits, found.semantic_logits
    assert relative_error(quantized, reference) < QUANTIZATION_BOUND[bits]
    assert (reference.argmax(1) == quantized.argmax(1)).float().mean() > 0.9


def test_rcnn_int8_predictor_gives_the_eager_result_types(exported_rcnn):
    _, int8 = exported_rcnn
    results = int8.predict(calibration_images(DATA, int8.task, 2))
    assert len(results) == 2 and all(isinstance(result, PanopticMap) for result in results)


@pytest.fixture(scope="module")
def exported_edge(tmp_path_factory):
    """``(fp32 predictor, int8 predictor)`` of a tiny YolactEdge, int8 calibrated on ``DATA``."""
    folder = tmp_path_factory.mktemp("yolact_edge")
    model = tiny_model("yolact_edge_r18")
    fp32 = export_onnx(model, folder / "fp32.onnx", train_data=dataclasses.asdict(DATA))
    return load_onnx(fp32, 1), load_onnx(quantize_onnx(fp32, folder / "int8.onnx", OPTIONS), 1)


def test_yolact_edge_int8_quantizes_both_paths_but_their_heads(exported_edge):
    fp32, int8 = exported_edge
    (switch,) = onnx.load(int8.path).graph.node
    assert switch.op_type == "If" and int8.has_flow
    branches = zip(
        branch_models(onnx.load(fp32.path)),
        branch_models(onnx.load(int8.path)),
        (KEYFRAME_PREFIX, TRANSFER_PREFIX),
    )
    for fp32_branch, int8_branch, prefix in branches:
        outputs = [prefix + output for output in YOLACT_HEAD]
        heads = final_convolutions(fp32_branch, outputs)
        assert len(heads) == 3 * 5  # box, class and coefficient convs at five pyramid levels
        assert_head_stays_float(int8_branch, int8.metadata.fp32_nodes, heads, outputs)


def test_yolact_edge_int8_kernels_compute_both_paths(exported_edge):
    """As for the plain networks, on each path's graph: the keyframe path on an image, the
    non-keyframe path on the next image with the keyframe state the kernels computed."""
    _, int8 = exported_edge
    keyframe_graph, transfer_graph = branch_models(onnx.load(int8.path))
    images = calibration_images(DATA, int8.task, 2)
    keyframe, _ = int8.preprocess(images[:1])
    frame, _ = int8.preprocess(images[1:])
    _, state = int8.forward_frame(keyframe)
    assert_kernels_compute(keyframe_graph, graph_feeds(keyframe, False))
    assert_kernels_compute(
        transfer_graph, graph_feeds(frame, False) | keyframe_feeds(state.keyframe)
    )


def test_yolact_edge_int8_stays_close_to_fp32_on_keyframes_and_warped_frames(exported_edge):
    """Within the quantization bound of the weight width chosen (measured: relative errors
    up to 6% at 8 bits and 7.5% at 7, on both paths)."""
    fp32, int8 = exported_edge
    bound = QUANTIZATION_BOUND[int8.metadata.int8_weight_bits]
    for image in calibration_images(DATA, fp32.task, 2):
        keyframe, _ = fp32.preprocess([image])
        frame, _ = fp32.preprocess([image.roll(2, dims=-1)])
        runs = []
        for predictor in (fp32, int8):
            key_outputs, state = predictor.forward_frame(keyframe)
            warped_outputs, after = predictor.forward_frame(frame, state, keyframe=False)
            assert not after.last_was_keyframe
            runs.append((key_outputs, warped_outputs))
        for expected, found in zip(*runs):
            for output in fp32.spec.output_names:
                error = relative_error(getattr(found, output), getattr(expected, output))
                assert error < bound, (output, error)
    detections = int8.predict_video(calibration_images(DATA, int8.task, 2))
    assert all(isinstance(result, Detections) for result in detections)
