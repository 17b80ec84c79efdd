"""The detection parity every ONNX export test asserts: eager and onnxruntime results agree on
counts and labels, scores and boxes within 1e-3, and each mask with IoU at least 0.98."""

import torch

TOLERANCE = 1e-3
MIN_MASK_IOU = 0.98


def mask_iou(first, second):
    """IoU of two bool masks of one shape (1.0 when both are empty)."""
    union = (first | second).sum()
    return float((first & second).sum() / union) if union else 1.0


def assert_same_detection_set(eager, ours):
    """One image's :class:`Detections` agree (masks only where eager has them)."""
    assert len(ours.scores) == len(eager.scores)
    assert (ours.labels == eager.labels).all()
    torch.testing.assert_close(ours.scores, eager.scores, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(ours.boxes, eager.boxes, atol=TOLERANCE, rtol=0)
    if eager.masks is None:
        assert ours.masks is None
        return
    assert ours.masks.shape == eager.masks.shape and ours.masks.dtype == torch.bool
    assert all(mask_iou(e, o) >= MIN_MASK_IOU for e, o in zip(eager.masks, ours.masks))


def assert_same_detections(eager_results, onnx_results):
    """Per-image lists of :class:`Detections` agree image by image."""
    assert len(onnx_results) == len(eager_results)
    for eager, ours in zip(eager_results, onnx_results):
        assert_same_detection_set(eager, ours)
