"""RoIAlign forward + backward on CPU: torchvision's kernel vs pansight's separable form.

The shapes are those of a Mask R-CNN training step on the synthetic world (4 images of 128 px,
128 sampled RoIs per image on ``p2``-sized maps for the box branch, 32 positives for the mask
branch). Both run in this process, alternating, after a warm-up; the table shows medians.

    python bench/roi_align.py [--runs 15] [--threads 2]

Ends with ``result: box_ratio=<separable/torchvision> mask_ratio=<...>``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from arguments import add_timing_flags, bench_parser
from report import Column, Table, print_result, set_threads_and_print_header
from timing import alternate_timings, medians
from torchvision.ops import roi_align

from pansight.ops.roi_align import separable_roi_align

TABLE = Table(
    Column("branch", 10, align="<"),
    Column("torchvision", 14, ".1f"),
    Column("separable", 12, ".1f"),
    Column("ratio", 7, ".2f"),
)


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


def torchvision_pool(features, boxes, size):
    return roi_align(features, boxes, size, spatial_scale=0.25, sampling_ratio=2)


def separable_pool(features, boxes, size):
    return separable_roi_align(features, boxes, size, 0.25, 2)


def compare(name: str, case, size: int, runs: int) -> float:
    """Print the row of one branch: median ms of a pooling forward and the backward of its sum,
    per kernel, after one warm-up call each; return separable / torchvision."""
    features, boxes = case

    def step(pool: Callable) -> Callable[[], object]:
        return lambda: torch.autograd.grad(pool(features, boxes, size).sum(), features)

    calls = {"torchvision": step(torchvision_pool), "separable": step(separable_pool)}
    seconds = medians(alternate_timings(calls, runs, warmup=1))
    ratio = seconds["separable"] / seconds["torchvision"]
    print(TABLE.row(name, seconds["torchvision"] * 1e3, seconds["separable"] * 1e3, ratio))
    return ratio


def main() -> None:
    parser = bench_parser(__doc__)
    add_timing_flags(parser, runs=15, warmup=None)
    args = parser.parse_args()
    set_threads_and_print_header(args.threads)
    print(f"threads={args.threads} runs={args.runs} (median ms of forward + backward)")
    print(TABLE.header())
    box_ratio = compare("box 7x7", make_case(128, 128, 32, 0), 7, args.runs)
    mask_ratio = compare("mask 14x14", make_case(32, 128, 32, 1), 14, args.runs)
    print_result({"box_ratio": box_ratio, "mask_ratio": mask_ratio})


if __name__ == "__main__":
    main()
