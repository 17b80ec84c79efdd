"""ONNX export of Faster R-CNN, Mask R-CNN and Panoptic FPN: the whole detection pipeline is in
the graph (one image of any size per run) and matches eager on images of different sizes, on a
batch, and on an image without detections; masks and panoptic maps come from the shared
postprocess."""

import onnx
import pytest
import torch
from onnx_parity import assert_same_detection_set

from pansight.export import export_onnx, load_onnx
from pansight.models.zoo import build_model

CLASSES = ["circle", "square", "triangle"]
PANOPTIC_CLASSES = ["circle", "sky", "square", "grass"]
TINY = {
    "min_size": 64,
    "max_size": 128,
    "fpn_channels": 16,
    "representation_size": 32,
    "mask_head_channels": 16,
    "anchor_sizes": (8, 16, 32, 64, 128),
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "score_thresh": 0.2,
    "detections_per_img": 20,
}
OVERRIDES = {
    "faster_rcnn_r18_fpn": {},
    "mask_rcnn_r18_fpn": {},
    "panoptic_fpn_r18": {
        "thing_flags": (True, False, True, False),
        "semantic_channels": 32,
        "instance_score_threshold": 0.2,
    },
}
IMAGE_SIZES = [(40, 50), (70, 33), (23, 90)]
"""Resized and padded to 64 x 96, 128 x 64 and 32 x 128: three graph input sizes."""


def tiny_model(name, **overrides):
    torch.manual_seed(0)
    classes = PANOPTIC_CLASSES if name.startswith("panoptic") else CLASSES
    return build_model(name, classes, {**TINY, **OVERRIDES[name], **overrides}).eval()


def images():
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, h, w, generator=generator) for h, w in IMAGE_SIZES]


@pytest.fixture(scope="module", params=list(OVERRIDES))
def exported(request, tmp_path_factory):
    """``(eager model, predictor)``; Faster R-CNN exported without ``dynamic`` (the same graph)."""
    name = request.param
    model = tiny_model(name)
    path = tmp_path_factory.mktemp("rcnn") / f"{name}.onnx"
    return model, load_onnx(export_onnx(model, path, dynamic=name != "faster_rcnn_r18_fpn"), 1)


def assert_same_panoptic(eager, ours):
    assert ours.ids.shape == eager.ids.shape
    assert (ours.ids == eager.ids).float().mean() >= 0.995
    assert [s.label for s in ours.segments] == [s.label for s in eager.segments]


def assert_same_results(model, eager_results, onnx_results):
    assert len(onnx_results) == len(eager_results)
    for eager, ours in zip(eager_results, onnx_results):
        if model.task == "panoptic":
            assert_same_panoptic(eager, ours)
        else:
            assert_same_detection_set(eager, ours)


def test_graph_takes_one_image_of_any_size(exported):
    _, predictor = exported
    graph = onnx.load(predictor.path)
    shapes = {
        tensor.name: [d.dim_value or d.dim_param for d in tensor.type.tensor_type.shape.dim]
        for tensor in graph.graph.input
    }
    assert shapes == {"images": [1, 3, "height", "width"], "image_sizes": ["sizes", 2]}
    assert predictor.batch_size == 1
    assert {"NonMaxSuppression", "RoiAlign", "TopK"} <= op_types(graph.graph)


def op_types(graph):
    """The op types of ``graph``'s nodes and of their subgraphs (``If`` branches)."""
    types = set()
    for node in graph.node:
        types.add(node.op_type)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                types |= op_types(attribute.g)
    return types


def test_raw_detections_match_eager(exported):
    model, predictor = exported
    for image in images():
        batch, _ = model.preprocess([image])
        with torch.no_grad():
            eager = model(batch)
        ours = predictor(batch)
        assert len(eager.detection_scores[0]) > 0, "a weak test otherwise"
        for name in ("detection_boxes", "detection_scores", "detection_labels"):
            torch.testing.assert_close(getattr(ours, name), getattr(eager, name), atol=1e-4, rtol=0)
        for name in ("mask_logits", "semantic_logits"):
            if getattr(eager, name, None) is not None:
                torch.testing.assert_close(
                    getattr(ours, name), getattr(eager, name), atol=1e-3, rtol=0
                )


def test_results_match_eager_one_by_one_and_batched(exported):
    model, predictor = exported
    for image in images():
        assert_same_results(model, model.predict([image]), predictor.predict([image]))
    eager_results = model.predict(images())
    if model.task == "panoptic":
        assert all(any(s.label in (0, 2) for s in result.segments) for result in eager_results)
    else:
        assert all(len(result.scores) > 0 for result in eager_results)
    assert_same_results(model, eager_results, predictor.predict(images()))


def test_no_detections(tmp_path):
    strict = tiny_model("mask_rcnn_r18_fpn", score_thresh=0.99)
    predictor = load_onnx(export_onnx(strict, tmp_path / "strict.onnx"), 1)
    eager_results = strict.predict(images()[:2])
    assert all(len(result.scores) == 0 for result in eager_results)
    onnx_results = predictor.predict(images()[:2])
    assert_same_results(strict, eager_results, onnx_results)
    assert onnx_results[0].masks.shape == (0, *IMAGE_SIZES[0])
