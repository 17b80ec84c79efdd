"""Fast NMS against standard NMS on YOLACT-like candidate sets, with YOLACT's settings: their
times, and the (candidate, class) pairs each keeps. Used by ``bench/yolact.py``."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from timing import alternate_timings
from torch import Tensor
from torchvision.ops import box_convert

from pansight.models.yolact.original_import import coco_80_class_names
from pansight.ops.nms import fast_nms, standard_nms

NUM_CLASSES = len(coco_80_class_names())
"""COCO's 80 classes: the classes of the candidates."""
NMS_THRESH, TOP_K, MAX_DETECTIONS = 0.5, 200, 100
"""YOLACT's NMS settings (:class:`~pansight.models.yolact.model.YolactConfig`'s defaults)."""
NMS_FRAME = 550
"""Side of the square frame the candidate boxes lie in, in pixels."""
OBJECT_SIDES = (16, 300)
"""Smallest and largest side of the candidates' objects, in pixels."""
NMS_WARMUP = 2
"""Untimed calls per method before the timed ones."""


def candidate_sets(
    count: int, objects: int, candidates: int, jitter: float, seed: int
) -> list[tuple[Tensor, Tensor]]:
    """``count`` sets of :func:`nms_candidates`, drawn from one generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return [nms_candidates(objects, candidates, jitter, generator) for _ in range(count)]


def nms_candidates(
    objects: int, candidates: int, jitter: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One candidate set: ``(N, 4)`` xyxy boxes in a :data:`NMS_FRAME` square and ``(C, N)``
    scores in ``[0, 1)``, ``N = candidates`` and ``C =`` :data:`NUM_CLASSES`.

    ``objects`` objects get random centers, sides between :data:`OBJECT_SIDES` pixels
    (log-uniform) and a class each. Every candidate copies a random object, its center moved by
    ``N(0, jitter)`` times the object's sides and its sides scaled by ``exp(N(0, 2 jitter))``.
    Scores are ``U(0, 0.3)``, plus ``U(0, 0.7)`` for the copied object's class.
    """
    centers = torch.rand(objects, 2, generator=generator) * NMS_FRAME
    low, high = (math.log(side) for side in OBJECT_SIDES)
    sides = torch.empty(objects, 2).uniform_(low, high, generator=generator).exp()
    classes = torch.randint(NUM_CLASSES, (objects,), generator=generator)
    owner = torch.randint(objects, (candidates,), generator=generator)
    shift = jitter * torch.randn(candidates, 2, generator=generator) * sides[owner]
    scale = (2 * jitter * torch.randn(candidates, 2, generator=generator)).exp()
    boxes = box_convert(
        torch.cat([centers[owner] + shift, sides[owner] * scale], dim=1), "cxcywh", "xyxy"
    )
    scores = 0.3 * torch.rand(NUM_CLASSES, candidates, generator=generator)
    own_class = torch.zeros(NUM_CLASSES, candidates, dtype=torch.bool)
    own_class[classes[owner], torch.arange(candidates)] = True
    scores = scores + own_class * 0.7 * torch.rand(NUM_CLASSES, candidates, generator=generator)
    return boxes.clamp(0, NMS_FRAME), scores


def kept_pairs(result: tuple[Tensor, Tensor, Tensor]) -> set[tuple[int, int]]:
    """The kept ``(candidate, class)`` pairs of an NMS result."""
    indices, labels, _ = result
    return set(zip(indices.tolist(), labels.tolist()))


def nms_differences(sets: list[tuple[Tensor, Tensor]], max_detections: int) -> dict[str, int]:
    """Kept pairs of both methods over ``sets``: in total, and only by one of them."""
    counts = dict.fromkeys(("fast", "standard", "only fast", "only standard"), 0)
    for boxes, scores in sets:
        fast = kept_pairs(fast_nms(boxes, scores, NMS_THRESH, TOP_K, max_detections))
        standard = kept_pairs(standard_nms(boxes, scores, NMS_THRESH, TOP_K, max_detections))
        counts["fast"] += len(fast)
        counts["standard"] += len(standard)
        counts["only fast"] += len(fast - standard)
        counts["only standard"] += len(standard - fast)
    return counts


def nms_calls(sets: list[tuple[Tensor, Tensor]]) -> dict[str, Callable[[], None]]:
    """Each method run over all ``sets`` with YOLACT's settings."""

    def call(method: Callable) -> Callable[[], None]:
        def run_all() -> None:
            for boxes, scores in sets:
                method(boxes, scores, NMS_THRESH, TOP_K, MAX_DETECTIONS)

        return run_all

    return {"fast": call(fast_nms), "standard": call(standard_nms)}


def compare_nms(
    sets: list[tuple[Tensor, Tensor]], runs: int
) -> tuple[dict[str, list[float]], dict[str, dict[str, int]]]:
    """Seconds of each method per call over all ``sets``, alternating ``runs`` times after
    :data:`NMS_WARMUP` calls, and the kept-pair counts of :func:`nms_differences` with and
    without the cut to :data:`MAX_DETECTIONS`."""
    timings = alternate_timings(nms_calls(sets), runs, NMS_WARMUP)
    differences = {
        f"top {MAX_DETECTIONS}": nms_differences(sets, MAX_DETECTIONS),
        "no cut": nms_differences(sets, NUM_CLASSES * TOP_K),
    }
    return timings, differences
