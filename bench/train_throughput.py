"""Training throughput on CPU, rung by rung: images per second of one training step in float32
and in bfloat16 autocast, each in the default (contiguous) and the channels-last memory layout.

A step is the trainer's (``bench/training_step.py``: preprocess, forward, loss, backward,
gradient clipping, optimizer and schedule steps) with the task's recipe, data and model. The
batches are loaded before the timing; the table gives a batch's second load apart (renders
cached: augmentation and collation, what every epoch after the first adds with ``workers=0``).
The four variants start from the same weights, each with its own optimizer, and take their
steps in turn on the same batches. bfloat16 is timed only where the processor runs it natively
(:func:`pansight.hardware.native_bf16`; emulated, it is 10 to 20 times slower than float32):
``--force-bf16`` times it anyway.

    python bench/train_throughput.py [--models classifier_r18 mask_rcnn_r18_fpn]
        [--steps 5 --warmup 2] [--skip-bf16 | --force-bf16]

Ends with ``result: <rung>_fp32_img_s=... <rung>_fp32_cl_vs_fp32=... <rung>_bf16_vs_fp32=...
<rung>_bf16_cl_vs_fp32=... amp_auto=...`` (ratios of images per second: above 1 is faster than
float32 eager).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from arguments import add_timing_flags, bench_parser
from report import Column, Table, load_average, print_result, set_threads_and_print_header
from timing import alternate_timings, medians
from training_step import RUNGS, VARIANTS, make_learner, stepper, training_setup

from pansight import hardware
from pansight.engine.precision import resolve_precision


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=list(RUNGS), choices=list(RUNGS))
    add_timing_flags(parser, runs=5, warmup=2, unit="steps per variant", runs_flag="--steps")
    parser.add_argument("--batches", type=int, default=2, help="distinct batches, taken in turn")
    parser.add_argument("--skip-bf16", action="store_true", help="time float32 only")
    parser.add_argument(
        "--force-bf16", action="store_true", help="time bfloat16 even where it is emulated"
    )
    return parser.parse_args(argv)


def bf16_decision(args: argparse.Namespace) -> tuple[bool, str]:
    """Whether to time bfloat16, and the note that says why not."""
    if args.skip_bf16:
        return False, "bf16 skipped (--skip-bf16)"
    if not hardware.native_bf16() and not args.force_bf16:
        return False, "bf16 skipped: emulated on this CPU, 10-20x slower (--force-bf16 to time)"
    if not hardware.native_bf16():
        return True, "bf16 timed although emulated on this CPU (--force-bf16)"
    return True, ""


def measure(model_name: str, variants: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Images per second of each variant (median step), and the batch's load time in ms."""
    setup = training_setup(model_name, args.batches)
    total_steps = args.warmup + args.steps
    calls = {
        variant: stepper(make_learner(setup, variant, total_steps), setup.batches)
        for variant in variants
    }
    batch_size = setup.config.batch_size
    step_seconds = medians(alternate_timings(calls, args.steps, args.warmup))
    row = {variant: batch_size / seconds for variant, seconds in step_seconds.items()}
    row["load_ms"] = 1000 * statistics.median(setup.load_seconds)
    row["batch"] = batch_size
    row["size"] = setup.config.data.image_size
    return row


def print_table(rows: dict[str, dict[str, float]], variants: list[str], note: str) -> None:
    """One line per model: images/s per variant and their ratios to float32 eager."""
    compared = list(VARIANTS)[1:]
    table = Table(
        Column("model", 20, align="<"),
        Column("batch", 5),
        Column("px", 4),
        Column("load ms", 8, ".0f"),
        *(Column(f"{variant} img/s", 12, ".1f") for variant in VARIANTS),
        *(Column(f"{variant}/fp32", 12, ".2f") for variant in compared),
    )
    print(f"\n{table.header()}")
    for model_name, row in rows.items():
        speeds = [row[v] if v in variants else "-" for v in VARIANTS]
        ratios = [row[v] / row["fp32"] if v in variants else "-" for v in compared]
        sizes = int(row["batch"]), int(row["size"])
        print(table.row(model_name, *sizes, row["load_ms"], *speeds, *ratios))
    print("(img/s: batch size / median step; _cl: channels-last; load ms: one batch loaded with")
    print(" the renders cached, augmented and collated, outside the timed step; x/fp32: ratio of")
    print(" img/s)")
    if note:
        print(note)


def result_fields(
    rows: dict[str, dict[str, float]], variants: list[str], amp_auto: str
) -> dict[str, object]:
    fields: dict[str, object] = {}
    for model_name, row in rows.items():
        label = RUNGS[model_name][1]
        fields[f"{label}_fp32_img_s"] = f"{row['fp32']:.2f}"
        fields |= {f"{label}_{v}_vs_fp32": row[v] / row["fp32"] for v in variants[1:]}
    return fields | {"amp_auto": amp_auto}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads_and_print_header(args.threads)
    with_bf16, note = bf16_decision(args)
    variants = [v for v, (dtype, _) in VARIANTS.items() if with_bf16 or dtype is None]
    precision = resolve_precision("auto", torch.device("cpu"))
    print(
        f"training step (preprocess, forward, loss, backward, optimizer), recipe batch and "
        f"image size, {args.threads} threads, median of {args.steps} alternating steps after "
        f"{args.warmup} warm-up, {args.batches} batches in turn (load average {load_average()})"
    )
    print(f"amp=auto picks {precision.name} here ({precision.reason})")
    rows = {}
    for model_name in args.models:
        rows[model_name] = measure(model_name, variants, args)
        print(f"  {model_name}: {rows[model_name]['fp32']:.1f} img/s fp32", flush=True)
    print_table(rows, variants, note)
    print_result(result_fields(rows, variants, precision.name))


if __name__ == "__main__":
    main()
