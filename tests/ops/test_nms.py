"""Fast NMS against a hand-computed case and a loop that states its rule plainly; torchvision's
standard NMS beside it."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from pansight.ops.nms import fast_nms, overlaps_above, per_class_nms, standard_nms

# Three boxes in a row: A overlaps B (IoU 0.6), B overlaps C (IoU 0.6), A and C overlap less
# (IoU 10/30 = 1/3). Widths 10 and shifts of 2.5 give these numbers on 10 x 1 boxes.
CHAIN = torch.tensor(
    [[0.0, 0.0, 10.0, 1.0], [2.5, 0.0, 12.5, 1.0], [5.0, 0.0, 15.0, 1.0], [40.0, 40.0, 50.0, 50.0]]
)


def test_chain_case_by_hand():
    """Scores A > B > C. Standard NMS: A suppresses B, so B cannot suppress C -> A, C kept.
    Fast NMS: B (suppressed) still suppresses C -> only A kept. The far box D always stays."""
    iou = box_iou(CHAIN, CHAIN)
    assert iou[0, 1].item() == pytest.approx(0.6) and iou[1, 2].item() == pytest.approx(0.6)
    assert iou[0, 2].item() == pytest.approx(1 / 3)
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.3]])
    indices, labels, kept_scores = fast_nms(CHAIN, scores, iou_threshold=0.5)
    assert indices.tolist() == [0, 3]
    assert labels.tolist() == [0, 0]
    torch.testing.assert_close(kept_scores, torch.tensor([0.9, 0.3]))
    indices, _, _ = standard_nms(CHAIN, scores, iou_threshold=0.5)
    assert indices.tolist() == [0, 2, 3]


def test_classes_are_independent_and_results_sorted_by_score():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.2, 0.95, 0.6, 0.5]])
    indices, labels, kept = fast_nms(CHAIN, scores, iou_threshold=0.5)
    # class 0: order A, B, C, D; B and C suppressed (0.6 with A / with B) -> A, D
    # class 1: order B, C, D, A; C (0.6 with B) and A (0.6 with B) suppressed -> B, D
    assert list(zip(indices.tolist(), labels.tolist())) == [(1, 1), (0, 0), (3, 1), (3, 0)]
    assert kept.tolist() == sorted(kept.tolist(), reverse=True)


def test_top_k_and_max_detections():
    boxes = torch.tensor([[10.0 * i, 0.0, 10.0 * i + 5, 5.0] for i in range(6)])  # disjoint
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    indices, _, _ = fast_nms(boxes, scores, top_k=3)
    assert indices.tolist() == [5, 4, 3]
    indices, _, _ = fast_nms(boxes, scores.repeat(2, 1), max_detections=4)
    assert indices.tolist() == [5, 5, 4, 4]


def reference_fast_nms(boxes, scores, iou_threshold, top_k, max_detections):
    """Fast NMS written as loops: a box is dropped if ANY higher-scoring box of its class among
    the top_k overlaps it by more than the threshold (suppressed or not)."""
    found = []
    for label in range(scores.shape[0]):
        order = sorted(range(len(boxes)), key=lambda i: -scores[label, i].item())[:top_k]
        for rank, index in enumerate(order):
            ious = [box_iou(boxes[[index]], boxes[[other]]).item() for other in order[:rank]]
            if all(iou <= iou_threshold for iou in ious):
                found.append((scores[label, index].item(), index, label))
    found.sort(key=lambda item: -item[0])
    return [(index, label) for _, index, label in found[:max_detections]]


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_fast_nms_matches_the_loop_reference(data_seed):
    generator = torch.Generator().manual_seed(data_seed)
    corners = torch.rand(40, 2, generator=generator) * 80
    sizes = 5 + torch.rand(40, 2, generator=generator) * 30
    boxes = torch.cat([corners, corners + sizes], dim=1)
    scores = torch.rand(3, 40, generator=generator)
    indices, labels, _ = fast_nms(boxes, scores, iou_threshold=0.4, top_k=25, max_detections=30)
    expected = reference_fast_nms(boxes, scores, 0.4, 25, 30)
    assert list(zip(indices.tolist(), labels.tolist())) == expected


def test_standard_nms_never_keeps_fewer_than_fast_nms():
    generator = torch.Generator().manual_seed(3)
    corners = torch.rand(60, 2, generator=generator) * 50
    boxes = torch.cat([corners, corners + 20], dim=1)
    scores = torch.rand(2, 60, generator=generator)
    fast = fast_nms(boxes, scores, 0.5, 60, 1000)
    standard = standard_nms(boxes, scores, 0.5, 60, 1000)
    fast_pairs = set(zip(*(t.tolist() for t in fast[:2])))
    standard_pairs = set(zip(*(t.tolist() for t in standard[:2])))
    assert fast_pairs < standard_pairs


def test_no_candidates_gives_empty_results():
    for method in ("fast", "standard"):
        indices, labels, scores = per_class_nms(
            method, torch.zeros((0, 4)), torch.zeros((3, 0)), 0.5, 200, 100
        )
        assert indices.shape == labels.shape == scores.shape == (0,)
    with pytest.raises(ValueError, match="nms='greedy'"):
        per_class_nms("greedy", CHAIN, torch.ones(1, 4), 0.5, 200, 100)


def test_overlaps_above_is_box_iou_above_the_threshold_per_class():
    generator = torch.Generator().manual_seed(4)
    corners = torch.rand(3, 50, 2, generator=generator) * 40
    boxes = torch.cat([corners, corners + 5 + torch.rand(3, 50, 2, generator=generator) * 20], -1)
    for threshold in (0.3, 0.5, 0.7):
        expected = torch.stack([box_iou(per_class, per_class) > threshold for per_class in boxes])
        assert torch.equal(overlaps_above(boxes, threshold), expected)
    chain = CHAIN[None]  # IoU exactly 0.6 between neighbors: not above 0.6, above 0.59
    assert not overlaps_above(chain, 0.6)[0, 0, 1] and overlaps_above(chain, 0.59)[0, 0, 1]
