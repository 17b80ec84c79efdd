"""Panoptic fusion on hand-built instances and stuff maps (labels: things 0..1, stuff 2..3)."""

import torch

from pansight.models.panoptic.fusion import NO_STUFF, fuse_panoptic
from pansight.structures import PanopticMap

SIZE = (8, 8)
GRASS, SKY = 2, 3


def box_mask(top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    mask = torch.zeros(SIZE, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


def instances(*items: tuple[torch.Tensor, float, int]):
    masks = torch.stack([mask for mask, _, _ in items]) if items else torch.zeros((0, *SIZE))
    scores = torch.tensor([score for _, score, _ in items], dtype=torch.float32)
    labels = torch.tensor([label for _, _, label in items], dtype=torch.int64)
    return masks.bool(), scores, labels


def sky_over_grass() -> torch.Tensor:
    stuff = torch.full(SIZE, GRASS, dtype=torch.int64)
    stuff[:4] = SKY
    return stuff


def check_consistent(panoptic: PanopticMap) -> None:
    """Ids are exactly the segments' ids (and 0), and each area is its id's pixel count."""
    ids = panoptic.ids
    present = set(ids.unique().tolist()) - {0}
    assert present == {segment.id for segment in panoptic.segments}
    for segment in panoptic.segments:
        assert segment.area == int((ids == segment.id).sum())


def test_better_instance_keeps_the_overlap_and_a_mostly_covered_one_is_dropped():
    first = box_mask(0, 0, 4, 4)  # 16 pixels, score 0.9
    second = box_mask(2, 2, 6, 6)  # 16 pixels, 4 of them claimed by the first: kept with 12
    covered = box_mask(0, 0, 4, 3)  # 12 pixels, all claimed by the first: dropped
    masks, scores, labels = instances((second, 0.8, 1), (covered, 0.7, 0), (first, 0.9, 0))
    stuff = torch.full(SIZE, NO_STUFF, dtype=torch.int64)
    panoptic = fuse_panoptic(masks, scores, labels, stuff)
    check_consistent(panoptic)
    assert [(s.id, s.label, s.is_thing, s.area) for s in panoptic.segments] == [
        (1, 0, True, 16),
        (2, 1, True, 12),
    ]
    assert [s.score for s in panoptic.segments] == [
        torch.tensor(0.9).item(),
        torch.tensor(0.8).item(),
    ]
    assert (panoptic.ids[first] == 1).all()
    assert (panoptic.ids[second & ~first] == 2).all()
    assert int((panoptic.ids == 0).sum()) == 64 - 28


def test_overlap_threshold_is_the_unclaimed_share_needed():
    first = box_mask(0, 0, 4, 4)
    half_covered = box_mask(0, 2, 4, 6)  # 16 pixels, 8 claimed
    masks, scores, labels = instances((first, 0.9, 0), (half_covered, 0.8, 1))
    stuff = torch.full(SIZE, NO_STUFF, dtype=torch.int64)
    kept = fuse_panoptic(masks, scores, labels, stuff, overlap_threshold=0.5)
    dropped = fuse_panoptic(masks, scores, labels, stuff, overlap_threshold=0.6)
    assert [s.area for s in kept.segments] == [16, 8]
    assert [s.area for s in dropped.segments] == [16]


def test_instances_below_the_score_threshold_are_dropped():
    masks, scores, labels = instances(
        (box_mask(0, 0, 2, 2), 0.3, 0), (box_mask(4, 4, 6, 6), 0.6, 1)
    )
    panoptic = fuse_panoptic(masks, scores, labels, sky_over_grass(), instance_score_threshold=0.5)
    things = [s for s in panoptic.segments if s.is_thing]
    assert [(s.label, s.area) for s in things] == [(1, 4)]
    assert panoptic.ids[0, 0] != things[0].id
    check_consistent(panoptic)


def test_stuff_fills_what_instances_leave_and_small_stuff_is_void():
    stuff = sky_over_grass()
    stuff[7, 7] = 1 + SKY  # a third stuff class on one pixel: below the least area
    masks, scores, labels = instances((box_mask(2, 2, 6, 6), 0.9, 0))
    panoptic = fuse_panoptic(masks, scores, labels, stuff, stuff_min_area=2)
    check_consistent(panoptic)
    assert [(s.id, s.label, s.is_thing, s.area, s.score) for s in panoptic.segments] == [
        (1, 0, True, 16, torch.tensor(0.9).item()),
        (2, GRASS, False, 32 - 8 - 1, 1.0),
        (3, SKY, False, 32 - 8, 1.0),
    ]
    assert panoptic.ids[7, 7] == 0


def test_thing_pixels_of_the_stuff_map_never_become_stuff():
    stuff = sky_over_grass()
    stuff[5:, 5:] = NO_STUFF  # the semantic branch says "thing" where no instance was kept
    masks, scores, labels = instances((box_mask(5, 5, 8, 8), 0.2, 0))
    panoptic = fuse_panoptic(masks, scores, labels, stuff, stuff_min_area=1)
    check_consistent(panoptic)
    assert (panoptic.ids[5:, 5:] == 0).all()
    assert all(not s.is_thing for s in panoptic.segments)
    assert sum(s.area for s in panoptic.segments) == 64 - 9


def test_no_instances_and_no_stuff_give_an_empty_map():
    masks, scores, labels = instances()
    panoptic = fuse_panoptic(masks, scores, labels, torch.full(SIZE, NO_STUFF))
    assert panoptic.segments == [] and panoptic.ids.shape == SIZE
    assert (panoptic.ids == 0).all() and panoptic.ids.dtype == torch.int64
