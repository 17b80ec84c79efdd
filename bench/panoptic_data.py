"""The synthetic panoptic pairs of ``bench/panoptic_eval.py``: ground truth from the synthetic
world's panoptic map with some void and crowd, and predictions perturbed from the same map."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pansight.data.shapes import THING_FLAGS, render_sample
from pansight.structures import PanopticMap, Segment

MAX_SEGMENT_ID = 256**3 - 1
VOID = 0
THING_LABELS = [label for label, is_thing in enumerate(THING_FLAGS) if is_thing]
STUFF_LABELS = [label for label, is_thing in enumerate(THING_FLAGS) if not is_thing]
PREDICTION_ID_RANGES = (1000, MAX_SEGMENT_ID)
"""A prediction's segment ids are drawn below one of these (as a model numbers its segments, or
as a COCO file's colors give them)."""
THING_ACTIONS = ("keep", "erode", "shift", "drop")
THING_ACTION_ODDS = (0.4, 0.25, 0.25, 0.1)


def map_from_ids(ids: np.ndarray, labels: dict[int, int], crowd: Sequence[int] = ()) -> PanopticMap:
    """A map of ``(H, W)`` ``ids`` whose segments (ids with pixels) have ``labels[id]``."""
    present, areas = np.unique(ids, return_counts=True)
    segments = [
        Segment(key, labels[key], THING_FLAGS[labels[key]], area, iscrowd=key in crowd)
        for key, area in zip(present.tolist(), areas.tolist())
        if key != VOID
    ]
    return PanopticMap(torch.from_numpy(ids), segments)


def ground_truth(world: PanopticMap, rng: np.random.Generator) -> PanopticMap:
    """The world's map with a void rectangle (most images) and, now and then, one crowd thing."""
    ids = world.ids.numpy().copy()
    height, width = ids.shape
    if rng.random() < 0.7:
        top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
        ids[top : top + rng.integers(6, height // 3), left : left + rng.integers(6, width // 3)] = 0
    things = [segment.id for segment in world.segments if segment.is_thing]
    crowd = [int(rng.choice(things))] if things and rng.random() < 0.3 else []
    return map_from_ids(ids, {s.id: s.label for s in world.segments}, crowd)


def perturbed_prediction(world: PanopticMap, rng: np.random.Generator) -> PanopticMap:
    """A prediction made from the world's map: things kept, eroded, shifted, dropped or
    relabelled; stuff sometimes relabelled; spurious things added. Ids are new and scattered."""
    world_ids = world.ids.numpy()
    largest = int(rng.choice(PREDICTION_ID_RANGES))
    new_ids = rng.choice(largest, size=len(world.segments) + 4, replace=False) + 1
    renamed = {segment.id: int(new_id) for segment, new_id in zip(world.segments, new_ids)}
    lookup = np.zeros(int(world_ids.max()) + 1, dtype=np.int64)
    lookup[list(renamed)] = list(renamed.values())
    ids = lookup[world_ids]
    labels = {renamed[s.id]: s.label for s in world.segments}
    stuff_ids = [renamed[s.id] for s in world.segments if not s.is_thing] or [VOID]
    for segment in world.segments:
        new_id = renamed[segment.id]
        if segment.is_thing:
            fill = int(rng.choice(stuff_ids + [VOID]))
            _perturb_thing(ids, new_id, fill, rng.choice(THING_ACTIONS, p=THING_ACTION_ODDS), rng)
            if rng.random() < 0.15:
                labels[new_id] = int(rng.choice(THING_LABELS))
        elif rng.random() < 0.15:
            labels[new_id] = int(rng.choice(STUFF_LABELS))
    for new_id in new_ids[len(world.segments) :].tolist():
        if rng.random() < 0.4:
            ids[_random_disk(ids.shape, rng)] = new_id
            labels[new_id] = int(rng.choice(THING_LABELS))
    return map_from_ids(ids, labels)


def _perturb_thing(
    ids: np.ndarray, segment_id: int, fill: int, action: str, rng: np.random.Generator
) -> None:
    """Apply ``action`` to segment ``segment_id`` of ``ids`` in place; pixels it leaves become
    ``fill``."""
    mask = ids == segment_id
    if action == "erode":
        eroded = mask
        for _ in range(rng.integers(1, 4)):
            eroded = _erode(eroded)
        ids[mask & ~eroded] = fill
    elif action == "shift":
        ids[mask] = fill
        ids[np.roll(mask, tuple(rng.integers(-6, 7, size=2)), axis=(0, 1))] = segment_id
    elif action == "drop":
        ids[mask] = fill


def _erode(mask: np.ndarray) -> np.ndarray:
    """``mask`` without its pixels that have a 4-neighbor outside it (or the image)."""
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def _random_disk(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    height, width = shape
    ys, xs = np.mgrid[0:height, 0:width]
    radius = rng.uniform(3, max(4, min(shape) / 8))
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2


def bench_pairs(
    count: int, size: int, max_objects: int, seed: int
) -> list[tuple[PanopticMap, PanopticMap]]:
    """``count`` ``(ground truth, prediction)`` pairs of ``size`` pixel synthetic images."""
    pairs = []
    for index in range(count):
        _, target = render_sample(
            index, image_size=size, seed=seed, split="val", max_objects=max_objects
        )
        rng = np.random.default_rng([seed, index])
        world = target.panoptic
        pairs.append((ground_truth(world, rng), perturbed_prediction(world, rng)))
    return pairs
