"""Per-class non-maximum suppression: YOLACT's Fast NMS next to torchvision's standard NMS.

Both take the same inputs (``N`` candidate boxes shared by all classes and a score per class and
candidate), look at the ``top_k`` best candidates of each class, and return the kept
(candidate, class) pairs sorted by score, at most ``max_detections`` of them. They differ in one
rule only: in standard NMS a box that was suppressed suppresses nothing; Fast NMS lets every
higher-scoring box suppress, which turns the sequential loop into a few matrix operations.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor
from torchvision.ops import batched_nms

NMS_METHODS = ("fast", "standard")


def overlaps_above(boxes: Tensor, iou_threshold: float) -> Tensor:
    """``(C, k, k)`` bool: whether the IoU of boxes ``i`` and ``j`` of ``(C, k, 4)`` xyxy boxes
    exceeds ``iou_threshold``.

    Tested without a division: ``inter / (area_i + area_j - inter) > t`` is
    ``inter - t / (1 + t) * (area_i + area_j) > 0``.
    """
    num_classes, k = boxes.shape[:2]
    work = boxes.new_empty((3, num_classes, k, k))
    above = torch.empty((num_classes, k, k), dtype=torch.bool, device=boxes.device)
    return _overlaps_above_into(_coordinates(boxes, iou_threshold), work, above)


def _coordinates(boxes: Tensor, iou_threshold: float) -> Tensor:
    """``(5, C, k)`` contiguous ``x1, y1, x2, y2`` and ``t / (1 + t)`` times the areas."""
    x1, y1, x2, y2 = boxes.permute(2, 0, 1)
    scaled_areas = (x2 - x1) * (y2 - y1) * (iou_threshold / (1 + iou_threshold))
    return torch.stack([x1, y1, x2, y2, scaled_areas])


def _overlaps_above_into(coords: Tensor, work: Tensor, out: Tensor) -> Tensor:
    """:func:`overlaps_above` from :func:`_coordinates` ``(5, c, k)``, computed in the
    preallocated ``work`` ``(3, >= c, k, k)`` floats and written to ``out`` ``(c, k, k)``
    (reusing buffers spares the page faults of fresh large allocations)."""
    rows, cols = coords[:, :, :, None], coords[:, :, None, :]
    count = coords.shape[1]
    widths, heights, scratch = work[:, :count]
    torch.minimum(rows[2], cols[2], out=widths)
    widths.sub_(torch.maximum(rows[0], cols[0], out=scratch)).clamp_(min=0)
    torch.minimum(rows[3], cols[3], out=heights)
    heights.sub_(torch.maximum(rows[1], cols[1], out=scratch)).clamp_(min=0)
    widths.mul_(heights).sub_(rows[4]).sub_(cols[4])
    return torch.gt(widths, 0, out=out)


CHUNK_ELEMENTS = 1 << 18
"""Box pairs Fast NMS tests at once: classes go through in groups whose ``(k, k)`` pair
matrices together stay this small, so the temporaries stay in the processor's cache (on a CPU
this makes Fast NMS several times faster than one ``(C, k, k)`` pass)."""


_WORKSPACES = threading.local()


def _workspace(
    shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """This thread's reusable Fast NMS buffers: ``(3, *shape)`` floats and ``shape`` bools.

    Kept between calls (a few megabytes at most, one set per thread): a fresh allocation this
    large is new memory on every call, and its page faults cost more than the NMS itself.
    """
    key = (shape, dtype, device)
    cached = getattr(_WORKSPACES, "buffers", None)
    if cached is None or cached[0] != key:
        work = torch.empty((3, *shape), dtype=dtype, device=device)
        above = torch.empty(shape, dtype=torch.bool, device=device)
        cached = _WORKSPACES.buffers = (key, work, above)
    return cached[1], cached[2]


def _unsuppressed(boxes: Tensor, iou_threshold: float) -> Tensor:
    """Fast NMS's rule on ``(C, k, 4)`` boxes sorted by descending score within each class:
    ``(C, k)`` bool, true where no higher-scoring box of the class overlaps by more than
    ``iou_threshold``."""
    num_classes, k = boxes.shape[:2]
    group = min(num_classes, max(1, CHUNK_ELEMENTS // max(1, k * k)))
    coords = _coordinates(boxes, iou_threshold)
    work, above = _workspace((group, k, k), boxes.dtype, boxes.device)
    keep = []
    for start in range(0, num_classes, group):
        part = coords[:, start : start + group]
        overlaps = _overlaps_above_into(part, work, above[: part.shape[1]])
        # box i is suppressed by a box j < i; the overlap matrix is symmetric, so read row i
        keep.append(~overlaps.tril_(diagonal=-1).any(dim=2))
    return torch.cat(keep)


def fast_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.5,
    top_k: int = 200,
    max_detections: int = 100,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fast NMS (Bolya et al., YOLACT, 2019), all classes at once, without a sequential loop.

    Per class: sort the candidates by score and keep the ``top_k`` best; compute their
    ``(top_k, top_k)`` IoU matrix; keep its upper triangle (IoU with higher-scoring boxes only);
    a box survives if the largest IoU in its column is at most ``iou_threshold``. The survivors
    of all classes are then sorted by score and the first ``max_detections`` returned.

    Args:
        boxes: ``(N, 4)`` xyxy candidate boxes (any frame, the IoU does not depend on it).
        scores: ``(C, N)`` score of every candidate for every class.

    Returns:
        ``indices`` ``(D,)`` into the candidates, ``labels`` ``(D,)`` class index into the rows of
        ``scores``, ``scores`` ``(D,)``; sorted by descending score.
    """
    class_scores, order = _top_candidates(scores, top_k)
    num_classes, num_kept = order.shape
    if num_kept == 0:
        return _empty_result(scores)
    keep = _unsuppressed(boxes[order], iou_threshold)
    labels = torch.arange(num_classes, device=scores.device)[:, None].expand_as(keep)
    return _best(order[keep], labels[keep], class_scores[keep], max_detections)


def standard_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.5,
    top_k: int = 200,
    max_detections: int = 100,
) -> tuple[Tensor, Tensor, Tensor]:
    """torchvision's per-class NMS (``batched_nms``) on the same ``top_k`` candidates per class
    as :func:`fast_nms`; same arguments and return values."""
    class_scores, order = _top_candidates(scores, top_k)
    if order.numel() == 0:
        return _empty_result(scores)
    labels = torch.arange(order.shape[0], device=scores.device)[:, None].expand_as(order)
    indices, labels, class_scores = order.flatten(), labels.flatten(), class_scores.flatten()
    keep = batched_nms(boxes[indices].float(), class_scores.float(), labels, iou_threshold)
    return _best(indices[keep], labels[keep], class_scores[keep], max_detections)


def per_class_nms(
    method: str,
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    top_k: int,
    max_detections: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`fast_nms` (``method="fast"``) or :func:`standard_nms` (``"standard"``)."""
    if method == "fast":
        return fast_nms(boxes, scores, iou_threshold, top_k, max_detections)
    if method == "standard":
        return standard_nms(boxes, scores, iou_threshold, top_k, max_detections)
    raise ValueError(f"nms={method!r}; choose one of {', '.join(NMS_METHODS)}")


def _top_candidates(scores: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """Per class the ``top_k`` best scores and their candidate indices, both ``(C, k)``,
    best first (``topk``, not a full sort: on a CPU it is several times faster)."""
    return scores.topk(min(top_k, scores.shape[1]), dim=1, sorted=True)


def _best(
    indices: Tensor, labels: Tensor, scores: Tensor, max_detections: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``max_detections`` highest-scoring entries, sorted by descending score."""
    scores, order = scores.sort(descending=True)
    order, scores = order[:max_detections], scores[:max_detections]
    return indices[order], labels[order], scores


def _empty_result(scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    empty = torch.zeros((0,), dtype=torch.int64, device=scores.device)
    return empty, empty.clone(), scores.new_zeros((0,))
