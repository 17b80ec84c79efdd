"""Panoptic fusion: instance masks and a stuff map become one panoptic map.

The heuristic of Panoptic FPN (Kirillov et al., 2019): instances are placed in order of score,
each on the pixels no earlier instance claimed; then stuff fills what is left, one segment per
stuff class. Every pixel ends up in at most one segment; pixels of no segment are void (id 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pansight.structures import PanopticMap, Segment

NO_STUFF = -1
"""Value of stuff-map pixels that no stuff class may take (the semantic branch calls them
"thing", or they are ignored)."""


def fuse_panoptic(
    masks: Tensor,
    scores: Tensor,
    labels: Tensor,
    stuff: Tensor,
    *,
    instance_score_threshold: float = 0.5,
    overlap_threshold: float = 0.5,
    stuff_min_area: int = 64,
) -> PanopticMap:
    """One panoptic map from instances and stuff, all in the same ``(H, W)`` pixels.

    Instances are taken best score first. One scoring below ``instance_score_threshold`` is
    dropped, and so is one whose pixels not yet claimed by a better instance are fewer than
    ``overlap_threshold`` of its mask; a kept instance gets its unclaimed pixels. Then each stuff
    class gets the pixels of ``stuff`` showing it that no instance claimed, if they are at least
    ``stuff_min_area``. Thing segments get ids ``1..N`` in score order, stuff segments follow in
    label order.

    Args:
        masks: ``(N, H, W)`` bool instance masks.
        scores: ``(N,)`` instance scores.
        labels: ``(N,)`` int64 instance labels in the panoptic label space.
        stuff: ``(H, W)`` int64 stuff label (panoptic label space) of every pixel, or
            :data:`NO_STUFF` where no stuff may go.
        instance_score_threshold: least score of a kept instance.
        overlap_threshold: least fraction of an instance's mask that must be unclaimed.
        stuff_min_area: least pixels of a stuff segment.

    Returns:
        The :class:`PanopticMap`: ``ids`` ``(H, W)`` int64 (0 = void); thing segments carry
        their instance's score, stuff segments score 1.
    """
    ids = torch.zeros(stuff.shape, dtype=torch.int64, device=stuff.device)
    segments = _place_instances(
        ids, masks, scores, labels, instance_score_threshold, overlap_threshold
    )
    segments += _place_stuff(ids, stuff, stuff_min_area, first_id=len(segments) + 1)
    return PanopticMap(ids, segments)


def _place_instances(
    ids: Tensor,
    masks: Tensor,
    scores: Tensor,
    labels: Tensor,
    score_threshold: float,
    overlap_threshold: float,
) -> list[Segment]:
    """Write the kept instances into ``ids`` (``(H, W)``, changed in place); their segments."""
    segments: list[Segment] = []
    for index in torch.argsort(scores, descending=True, stable=True).tolist():
        score = float(scores[index])
        if score < score_threshold:
            break
        mask = masks[index].to(ids.device)
        area = int(mask.sum())
        unclaimed = mask & (ids == 0)
        unclaimed_area = int(unclaimed.sum())
        if area == 0 or unclaimed_area < overlap_threshold * area:
            continue
        segment_id = len(segments) + 1
        ids[unclaimed] = segment_id
        segments.append(Segment(segment_id, int(labels[index]), True, unclaimed_area, score))
    return segments


def _place_stuff(ids: Tensor, stuff: Tensor, min_area: int, first_id: int) -> list[Segment]:
    """Write the stuff segments into the unclaimed pixels of ``ids`` (changed in place)."""
    free_stuff = torch.where(ids == 0, stuff, NO_STUFF)
    segments: list[Segment] = []
    for label in free_stuff.unique().tolist():
        if label == NO_STUFF:
            continue
        region = free_stuff == label
        area = int(region.sum())
        if area < min_area:
            continue
        segment_id = first_id + len(segments)
        ids[region] = segment_id
        segments.append(Segment(segment_id, int(label), False, area))
    return segments
