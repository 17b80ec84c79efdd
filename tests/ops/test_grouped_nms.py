"""grouped_nms: a hand-computed case, and the very indices torchvision's batched_nms keeps."""

import pytest
import torch
from torchvision.ops import batched_nms

from pansight.ops import grouped_nms as grouped_nms_module
from pansight.ops.grouped_nms import best_after_grouped_nms, grouped_nms


def test_groups_do_not_suppress_each_other(monkeypatch):
    """Boxes 0 and 1 overlap (IoU 0.6) in group 7: the better one, 1, stays. Box 2 overlaps
    box 1 just as much but is alone in group 3, so it stays too."""
    monkeypatch.setattr(grouped_nms_module, "COORDINATE_TRICK_MAX_BOXES", 0)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 1.0], [2.5, 0.0, 12.5, 1.0], [5.0, 0.0, 15.0, 1.0]])
    scores = torch.tensor([0.5, 0.9, 0.7])
    groups = torch.tensor([7, 7, 3])
    assert grouped_nms(boxes, scores, groups, 0.5).tolist() == [1, 2]


def _clustered_boxes(count: int, groups: int, seed: int):
    """``count`` boxes jittered around 40 centers (so many overlap), scores with ties."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.rand(40, 2, generator=generator) * 500
    which = torch.randint(0, 40, (count,), generator=generator)
    corner = centers[which] + torch.randn(count, 2, generator=generator) * 8
    size = torch.rand(count, 2, generator=generator) * 60 + 20
    boxes = torch.cat([corner, corner + size], dim=1)
    scores = torch.randint(0, 200, (count,), generator=generator).float() / 200
    labels = torch.randint(0, groups, (count,), generator=generator)
    return boxes, scores, labels


@pytest.mark.parametrize("count", [0, 300, 1000, 1001, 6000])
def test_same_indices_as_batched_nms(count):
    boxes, scores, labels = _clustered_boxes(count, groups=50, seed=count)
    expected = batched_nms(boxes, scores, labels, 0.5)
    got = grouped_nms(boxes, scores, labels, 0.5)
    assert torch.equal(got, expected)
    if count > 1000:
        assert 0 < len(got) < count


@pytest.mark.parametrize(
    ("count", "keep"), [(0, 10), (50, 100), (6000, 100), (6000, 1), (3000, 5000)]
)
def test_best_after_nms_are_the_first_of_full_nms(count, keep):
    """Distinct scores: the best ``keep`` survivors are exactly the first ``keep`` of full NMS,
    also when the first look at ``4 * keep`` boxes is too short and must grow."""
    boxes, _, labels = _clustered_boxes(count, groups=20, seed=count + keep)
    scores = torch.rand(count, generator=torch.Generator().manual_seed(keep))
    expected = batched_nms(boxes, scores, labels, 0.5)[:keep]
    got = best_after_grouped_nms(boxes, scores, labels, 0.5, keep, first_look=1)
    assert torch.equal(got, expected)


def test_best_after_nms_with_tied_scores_matches_full_nms():
    boxes, scores, labels = _clustered_boxes(3000, groups=20, seed=5)
    assert len(scores.unique()) < len(scores)
    expected = batched_nms(boxes, scores, labels, 0.5)[:100]
    assert torch.equal(best_after_grouped_nms(boxes, scores, labels, 0.5, 100), expected)
