"""YolactEdge against YOLACT on video, on CPU: time per frame, keyframe and non-keyframe cost,
and video mask AP.

Latency: for each of ``--backbones`` (``yolact_edge_r50``, ``yolact_edge_r101``; 550x550 input,
COCO's 80 class names) the bench builds the YolactEdge with random weights
(``bench/random_weights.py``; the flow predictions and SPA's refinements zeroed, so that a
non-keyframe carries the keyframe's features over unchanged and detects as much as a keyframe,
as with a trained flow module, at the same cost) and a plain ``Yolact`` holding the same weights
(all but the flow module and SPA), both as :func:`pansight.models.fuse.optimize_for_inference`'s
copies. On the same clip of ``--frames`` synthetic-world frames of ``--size`` pixels, YOLACT
runs ``predict`` on every frame and YolactEdge streams the clip with ``predict_video_frame``, a
keyframe every ``--interval`` frames; the two alternate ``--runs`` times after ``--warmup``
passes, each frame timed on its own. The table gives the mean time per frame (median over runs)
and YolactEdge's keyframe and non-keyframe times. Before timing, the keyframe path must give
YOLACT's detections on the first frame. ``--no-spa`` times YolactEdge without SPA;
``--stages`` also times one non-keyframe stage by stage (the model's steps one at a time).

Accuracy (with ``--checkpoint``, a trained YolactEdge, see the README): video mask AP
(:func:`pansight.engine.video_evaluator.evaluate_video`, YouTube-VIS style) on ``--val-clips``
validation clips of ``--val-frames`` frames, with every frame a keyframe (YOLACT) and with a
keyframe every ``--interval`` frames.

Usage: ``python bench/yolact_edge.py [--runs 3] [--frames 10] [--no-spa] [--stages]
[--checkpoint model.pt]``

Ends with ``result: latency_ratio_<backbone>=<YolactEdge / YOLACT, time per frame> ...
ap_drop=<YOLACT's mask AP minus YolactEdge's, in points; nan without --checkpoint>``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import defaultdict

import torch
from arguments import add_seed_flag, add_timing_flags, bench_parser
from random_weights import YOLACT_HEADS, randomize_zoo_model
from report import Column, Table, print_result, set_threads_and_print_header
from torch import Tensor

import pansight
from pansight.data.shapes_video import ShapesVideoDataset, render_clip
from pansight.engine.video_evaluator import evaluate_video
from pansight.models.fuse import optimize_for_inference
from pansight.models.yolact.edge.flow import transfer
from pansight.models.yolact.edge.model import YolactEdge
from pansight.models.yolact.head import merge_top_down
from pansight.models.yolact.model import Yolact
from pansight.models.yolact.original_import import coco_80_class_names
from pansight.models.zoo import build_model

PLAIN_YOLACT = "yolact_r50"
"""The zoo entry of the plain YOLACT, built with each YolactEdge's backbone."""
BACKBONES = {"r50": "yolact_edge_r50", "r101": "yolact_edge_r101"}
FLOW_PREFIXES = ("flow_reduce.", "flow_net.", "spa.")
"""State-dict prefixes of YolactEdge's own modules, which a plain YOLACT lacks."""
TABLE = Table(
    Column("backbone", 9, align="<"),
    Column("YOLACT ms/frame", 16, ".0f"),
    Column("Edge ms/frame", 14, ".0f"),
    Column("keyframe", 9, ".0f"),
    Column("non-key", 8, ".0f"),
    Column("edge/yolact", 12, ".3f"),
    Column("speed-up", 9),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    add_timing_flags(parser, runs=3, warmup=1, unit="passes over the clip")
    parser.add_argument("--frames", type=int, default=10, help="frames of the timed clip")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--interval", type=int, default=5, help="YolactEdge keyframe interval")
    parser.add_argument(
        "--backbones", nargs="+", choices=sorted(BACKBONES), default=["r50", "r101"]
    )
    parser.add_argument(
        "--no-spa", action="store_true", help="time YolactEdge without SPA (with_spa=false)"
    )
    parser.add_argument(
        "--stages", action="store_true", help="also time a non-keyframe stage by stage"
    )
    parser.add_argument("--checkpoint", help="a trained YolactEdge for the mask AP comparison")
    parser.add_argument("--val-clips", type=int, default=30, help="validation clips for AP")
    parser.add_argument("--val-frames", type=int, default=10, help="frames per validation clip")
    add_seed_flag(parser)
    return parser.parse_args(argv)


def build_pair(
    name: str, frames: list[Tensor], seed: int, with_spa: bool = True
) -> tuple[Yolact, YolactEdge]:
    """YOLACT and YolactEdge (zoo ``name``, SPA as ``with_spa`` says) with the same random
    weights, both optimized."""
    class_names = coco_80_class_names()
    edge = build_model(name, class_names, {"with_spa": with_spa}).eval()
    randomize_zoo_model(edge, frames[:2], seed, YOLACT_HEADS)
    identity_transfer(edge)
    plain = build_model(PLAIN_YOLACT, class_names, {"backbone": edge.config.backbone}).eval()
    shared = {k: v for k, v in edge.state_dict().items() if not k.startswith(FLOW_PREFIXES)}
    plain.load_state_dict(shared, strict=True)
    return optimize_for_inference(plain), optimize_for_inference(edge)


@torch.no_grad()
def identity_transfer(edge: YolactEdge) -> None:
    """Zero flow, unit scale, zero bias and zero SPA refinement: non-keyframes carry the
    keyframe's ``p4``/``p5`` over unchanged (the flow module still runs in full)."""
    predictions = (edge.flow_net.pred1, edge.flow_net.pred2, edge.flow_net.pred3)
    for prediction in predictions:
        for conv in (prediction.conv, prediction.scale, prediction.bias):
            conv.weight.zero_()
        prediction.scale.bias.fill_(1.0)
        prediction.bias.bias.zero_()
    for refine in edge.spa.refine_convs if edge.config.with_spa else ():
        refine[0].weight.zero_()
        refine[0].bias.zero_()


def check_keyframe_is_yolact(plain: Yolact, edge: YolactEdge, frame: Tensor) -> str:
    """The first frame's detections by both models must agree (same count and labels, boxes
    within a pixel)."""
    (expected,) = plain.predict([frame])
    got, _ = edge.predict_video_frame(frame)
    same = (
        len(got) == len(expected)
        and torch.equal(got.labels, expected.labels)
        and bool((got.boxes - expected.boxes).abs().max() <= 1.0 if len(got) else True)
    )
    if not same:
        raise SystemExit("YolactEdge's keyframe path does not reproduce YOLACT's detections")
    return f"keyframe path = YOLACT on frame 0 ({len(got)} detections)"


def frame_times(
    plain: Yolact, edge: YolactEdge, frames: list[Tensor], args: argparse.Namespace
) -> dict[str, list[list[float]]]:
    """Per run, the seconds of each frame for ``yolact`` and ``edge``, alternating runs."""
    times: dict[str, list[list[float]]] = defaultdict(list)
    for run in range(args.warmup + args.runs):
        for name in ("yolact", "edge"):
            per_frame, state = [], None
            for index, frame in enumerate(frames):
                start = time.perf_counter()
                if name == "yolact":
                    plain.predict([frame])
                else:
                    keyframe = index % args.interval == 0
                    _, state = edge.predict_video_frame(frame, state, keyframe)
                per_frame.append(time.perf_counter() - start)
            if run >= args.warmup:
                times[name].append(per_frame)
    return times


@torch.inference_mode()
def stage_times(edge: YolactEdge, frames: list[Tensor], runs: int) -> dict[str, float]:
    """Median seconds of each stage of a non-keyframe (``frames[1]`` after the keyframe
    ``frames[0]``), the steps of ``forward_frame`` and ``postprocess`` called one by one."""
    _, state = edge.predict_video_frame(frames[0])
    keyframe = edge.with_reduced_keyframe(state).keyframe
    times: dict[str, list[float]] = defaultdict(list)

    def timed(stage: str, step, *arguments):
        start = time.perf_counter()
        result = step(*arguments)
        times[stage].append(time.perf_counter() - start)
        return result

    def flow(lateral: Tensor):
        return edge.flow_net(edge.flow_reduce(lateral), keyframe.reduced_c3)

    def warp(flows) -> tuple[Tensor, Tensor]:
        return transfer(keyframe.p4, flows["p4"]), transfer(keyframe.p5, flows["p5"])

    for _ in range(runs + 1):
        batch = timed("preprocess", edge.preprocess, [frames[1]])[0]
        timed("scene-cut test", edge.is_scene_cut, keyframe, batch)
        c3 = timed("ResNet to c3", edge.c3_features, batch)
        lateral = timed("c3 lateral", edge.fpn.lateral, "c3", c3)
        p4, p5 = timed("warp", warp, timed("flow module", flow, lateral))
        p3 = timed("p3 from p4 + lateral", merge_top_down, p4, lateral)
        if edge.config.with_spa:
            p4, p5 = timed("SPA", edge.spa, lateral, p4, p5)
        levels = timed("FPN smoothing, p6, p7", edge.fpn.smooth, {"p3": p3, "p4": p4, "p5": p5})
        timed("protonet", edge.prototypes, levels["p3"])
        timed("prediction head", edge.predict_per_anchor, levels)
        timed("postprocess", edge.postprocess, edge.outputs_from_levels(levels), batch)
    return {stage: statistics.median(values[1:]) for stage, values in times.items()}


def latency_row(times: dict[str, list[list[float]]], interval: int) -> dict[str, float]:
    """Median over runs of: mean seconds per frame of each model, and YolactEdge's mean
    keyframe and non-keyframe seconds."""

    def median_of(runs: list[list[float]], pick) -> float:
        return statistics.median(statistics.mean(pick(run)) for run in runs)

    return {
        "yolact": median_of(times["yolact"], lambda run: run),
        "edge": median_of(times["edge"], lambda run: run),
        "keyframe": median_of(times["edge"], lambda run: run[::interval]),
        "non-keyframe": median_of(
            times["edge"], lambda run: [t for i, t in enumerate(run) if i % interval]
        ),
    }


def video_ap(args: argparse.Namespace) -> dict[str, float | bool]:
    """Video mask AP of the checkpoint with every frame a keyframe and at ``--interval``."""
    model = pansight.load(args.checkpoint).eval()
    if not isinstance(model, YolactEdge):
        raise SystemExit(f"{args.checkpoint}: not a YolactEdge checkpoint")
    clips = ShapesVideoDataset(
        "val", num_clips=args.val_clips, num_frames=args.val_frames, image_size=128, seed=args.seed
    )
    clips = [clips[index] for index in range(len(clips))]
    every = evaluate_video(model, clips, keyframe_interval=1, progress=False)
    edge = evaluate_video(model, clips, keyframe_interval=args.interval, progress=False)
    return {
        "with_spa": model.config.with_spa,
        "yolact": every["mask_AP"],
        "edge": edge["mask_AP"],
        "yolact50": every["mask_AP50"],
        "edge50": edge["mask_AP50"],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads_and_print_header(args.threads)
    height, width = args.size
    frames = [
        image
        for image, _ in render_clip(
            args.seed, num_frames=args.frames, image_size=(height, width), split="val"
        )
    ]
    rows, notes, stages = {}, [], {}
    for backbone in args.backbones:
        plain, edge = build_pair(BACKBONES[backbone], frames, args.seed, not args.no_spa)
        notes.append(f"{backbone}: " + check_keyframe_is_yolact(plain, edge, frames[0]))
        rows[backbone] = latency_row(frame_times(plain, edge, frames, args), args.interval)
        if args.stages:
            stages[backbone] = stage_times(edge, frames, args.runs)
        del plain, edge
    accuracy = video_ap(args) if args.checkpoint else None

    print(
        f"YolactEdge vs YOLACT, {args.frames} frames of {height}x{width} at 550x550, keyframe "
        f"every {args.interval} frames, {'no ' if args.no_spa else ''}SPA, {args.threads} "
        f"threads, median of {args.runs} runs"
    )
    print("\n".join(notes))
    print(TABLE.header())
    ratios = {}
    for backbone, row in rows.items():
        ratio = row["edge"] / row["yolact"]
        ratios[backbone] = ratio
        milliseconds = [1000 * row[key] for key in ("yolact", "edge", "keyframe", "non-keyframe")]
        print(TABLE.row(backbone, *milliseconds, ratio, f"{1 / ratio:.2f}x"))
    for backbone, times in stages.items():
        print(f"{backbone} non-keyframe by stage (median of {args.runs}):")
        for stage, seconds in times.items():
            print(f"  {stage:<24} {1000 * seconds:>7.1f} ms")
    drop = math.nan
    if accuracy is not None:
        drop = 100 * (accuracy["yolact"] - accuracy["edge"])
        print(
            f"video mask AP on {args.val_clips} validation clips of {args.val_frames} frames "
            f"({args.checkpoint}, with_spa={accuracy['with_spa']}): "
            f"YOLACT (every frame a keyframe) {accuracy['yolact']:.3f} "
            f"(AP50 {accuracy['yolact50']:.3f}), YolactEdge (interval {args.interval}) "
            f"{accuracy['edge']:.3f} (AP50 {accuracy['edge50']:.3f})"
        )
    fields = {f"latency_ratio_{backbone}": ratio for backbone, ratio in ratios.items()}
    print_result(fields | {"ap_drop": f"{drop:.2f}"})


if __name__ == "__main__":
    main()
