"""RoIAlign forward + backward on CPU: torchvision's kernel vs pansight's separable form.

The shapes are those of a Mask R-CNN training step on the synthetic world (4 images of 128 px,
128 sampled RoIs per image on ``p2``-sized maps for the box branch, 32 positives for the mask
branch). Both run in this process, alternating, after a warm-up; the table shows medians.

    python bench/roi_align.py [--runs 15] [--threads 2]

Ends with ``result: box_ratio=<separable/torchvision> mask_ratio=<...>``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from timing import print_header
from torchvision.ops import roi_align

from pansight.ops.roi_align import separable_roi_align


def make_case(rois_per_image: int, channels: int, side: int, seed: int):
    """Features ``(4, C, side, side)`` needing gradients and per-image boxes in input pixels."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(4, channels, side, side, generator=generator, requires_grad=True)
    extent = side * 4
    boxes = []
    for _ in range(4):
        corners = torch.rand(rois_per_image, 2, generator=generator) * extent * 0.8
        sizes = torch.rand(rois_per_image, 2, generator=generator) * extent * 0.4 + 4
        boxes.append(torch.cat([corners, corners + sizes], dim=1))
    return features, boxes


def time_step(pool: Callable, features: torch.Tensor, boxes, size: int) -> float:
    """Seconds for one pooling forward and the backward of a weighted sum."""
    started = time.perf_counter()
    pooled = pool(features, boxes, size)
    torch.autograd.grad(pooled.sum(), features)
    return time.perf_counter() - started


def torchvision_pool(features, boxes, size):
    return roi_align(features, boxes, size, spatial_scale=0.25, sampling_ratio=2)


def separable_pool(features, boxes, size):
    return separable_roi_align(features, boxes, size, 0.25, 2)


def compare(name: str, case, size: int, runs: int) -> float:
    features, boxes = case
    for pool in (torchvision_pool, separable_pool):
        time_step(pool, features, boxes, size)
    times: dict[str, list[float]] = {"torchvision": [], "separable": []}
    for _ in range(runs):
        times["torchvision"].append(time_step(torchvision_pool, features, boxes, size))
        times["separable"].append(time_step(separable_pool, features, boxes, size))
    reference = statistics.median(times["torchvision"])
    ours = statistics.median(times["separable"])
    print(f"{name:10s} {reference * 1e3:14.1f} {ours * 1e3:12.1f} {ours / reference:7.2f}")
    return ours / reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print_header()
    print(f"threads={args.threads} runs={args.runs} (median ms of forward + backward)")
    print(f"{'branch':10s} {'torchvision':>14s} {'separable':>12s} {'ratio':>7s}")
    box_ratio = compare("box 7x7", make_case(128, 128, 32, 0), 7, args.runs)
    mask_ratio = compare("mask 14x14", make_case(32, 128, 32, 1), 14, args.runs)
    print(f"result: box_ratio={box_ratio:.3f} mask_ratio={mask_ratio:.3f}")


if __name__ == "__main__":
    main()
