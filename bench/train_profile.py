"""Where a float32 training step's CPU time goes, for one model: torch.profiler over a few steps
of the trainer's step (``bench/training_step.py``), each loading its batch in the same process
(the trainer's default ``workers=0``).

Three views, in milliseconds per step and as a share of the profiled step: phases (data loading
with the renders cached, preprocess, forward, loss, backward, optimizer; the first, rendering
load is timed apart, unprofiled); regions (the model's sub-modules and the pansight functions
and methods it calls, marked by :class:`RegionMarks`; a backward operation counts towards the
region whose forward created it); and the top aten operations by self CPU time in data
loading, forward and backward. The step is also timed without the profiler, whose per-op
overhead weighs most on models of many small operations.

    python bench/train_profile.py mask_rcnn_r18_fpn [--steps 3 --warmup 1 --top 15]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/train_profile.py classifier_r18

Ends with ``result: step_ms=... first_load_ms=... profiled_step_ms=... data_ms=...
preprocess_ms=... forward_ms=... loss_ms=... backward_ms=... optimizer_ms=... conv_share=...``
(``step_ms``: the unprofiled step without data loading; ``first_load_ms``: a batch's rendering
load, unprofiled; the others profiled; ``conv_share``: convolutions, forward and backward, over
the profiled step without data loading).
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter

from arguments import add_timing_flags, bench_parser
from region_marks import RegionMarks
from report import print_result, set_threads_and_print_header
from timing import alternate_timings, medians
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.data import DataLoader
from training_step import RUNGS, Learner, make_learner, stepper, training_setup

PHASES = ("data", "preprocess", "forward", "loss", "backward", "optimizer")
FORWARD_PHASES = ("preprocess", "forward", "loss")
DIRECTIONS = ("data", "forward", "backward")
"""The operation tables: data loading, forward (with preprocess and loss), backward."""
BACKWARD_NODE = "autograd::engine::evaluate_function: "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = bench_parser(__doc__)
    parser.add_argument("model", choices=list(RUNGS))
    add_timing_flags(
        parser,
        runs=3,
        warmup=1,
        unit="steps",
        runs_flag="--steps",
        runs_help="timed, then profiled steps",
    )
    parser.add_argument("--top", type=int, default=15, help="operations listed per table")
    return parser.parse_args(argv)


# -- profiling -------------------------------------------------------------------------------


def profiled_steps(
    learner: Learner, loader: DataLoader, steps: int
) -> tuple[list[FunctionEvent], set[str]]:
    """The profiler's events of ``steps`` steps, each loading its batch first, and the region
    labels."""
    batches = iter(loader)
    with RegionMarks(learner.model) as marks:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
            for _ in range(steps):
                with record_function("data"):
                    batch = next(batches)
                learner.step(batch, phase=record_function)
    return list(profiler.events()), marks.labels


def lineage(event: FunctionEvent) -> list[FunctionEvent]:
    """``event`` and its ancestors, innermost first."""
    chain = [event]
    while chain[-1].cpu_parent is not None:
        chain.append(chain[-1].cpu_parent)
    return chain


class Attribution:
    """Self CPU time (microseconds, summed over the steps) by phase, region and operation."""

    def __init__(self, events: list[FunctionEvent], labels: set[str]) -> None:
        self.phase = Counter()
        self.phase_ops = Counter()
        self.region_forward = Counter()
        self.region_backward = Counter()
        self.ops = {direction: Counter() for direction in DIRECTIONS}
        self.op_calls = {direction: Counter() for direction in DIRECTIONS}
        self.conv = 0.0
        region_of_sequence: dict[int, str] = {}
        backward_events = []
        # An operation records the autograd sequence number current when it starts; the one
        # that creates a node takes the number, so the last to record a number is its creator.
        for event in sorted(events, key=lambda event: event.time_range.start):
            chain = lineage(event)
            phase = chain[-1].name if chain[-1].name in PHASES else "other"
            region = next((e.name for e in chain if e.name in labels), f"[{phase}]")
            self.phase[phase] += event.self_cpu_time_total
            self.phase_ops[phase] += event.name.startswith("aten::")
            if phase in FORWARD_PHASES:
                self.region_forward[region] += event.self_cpu_time_total
                if event.sequence_nr >= 0:
                    region_of_sequence[event.sequence_nr] = region
                self._count_op("forward", event, region)
            elif phase == "data":
                self._count_op("data", event, region)
            elif phase == "backward":
                backward_events.append((event, chain))
            if phase != "data" and is_outermost_conv(event):
                self.conv += event.cpu_time_total
        for event, chain in backward_events:
            node = next((e for e in chain if e.name.startswith(BACKWARD_NODE)), None)
            region = "[backward engine]"
            if node is not None:
                region = region_of_sequence.get(node.sequence_nr, "[backward, unattributed]")
            self.region_backward[region] += event.self_cpu_time_total
            self._count_op("backward", event, region)

    def _count_op(self, direction: str, event: FunctionEvent, region: str) -> None:
        if event.name in PHASES or event.name.startswith(BACKWARD_NODE):
            return
        key = f"{event.name} {event.input_shapes} @ {region}"
        self.ops[direction][key] += event.self_cpu_time_total
        self.op_calls[direction][key] += 1


def is_outermost_conv(event: FunctionEvent) -> bool:
    """A convolution (forward op or backward node) not inside another convolution event."""
    name = event.name.lower()
    parent = event.cpu_parent
    return "conv" in name and (parent is None or "conv" not in parent.name.lower())


# -- report ----------------------------------------------------------------------------------


def print_report(
    found: Attribution, steps: int, step_ms: float, first_load_ms: float, top: int
) -> dict[str, float]:
    per_step = {name: found.phase[name] / steps / 1000 for name in PHASES}
    profiled = sum(per_step.values())
    without_data = profiled - per_step["data"]
    print(
        f"\nfirst load of a batch (rendered, augmented, collated; unprofiled): "
        f"{first_load_ms:.0f} ms"
    )
    print(
        f"\nphases (ms per profiled step, aten operations per step, nested ones included; "
        f"unprofiled step without data: {step_ms:.0f} ms)"
    )
    for name in PHASES:
        share = 100 * per_step[name] / profiled
        calls = found.phase_ops[name] / steps
        print(f"  {name:<12} {per_step[name]:>9.1f} ms {share:>6.1f} % {calls:>8.0f} ops")
    print(f"  {'total':<12} {profiled:>9.1f} ms")

    print(
        f"\nregions, forward + backward (ms per step; share of the step without data, "
        f"{without_data:.0f} ms)"
    )
    print(f"  {'region':<44} {'forward':>9} {'backward':>9} {'total':>9} {'share':>7}")
    regions = found.region_forward + found.region_backward
    for region, total in regions.most_common():
        forward = found.region_forward[region] / steps / 1000
        backward = found.region_backward[region] / steps / 1000
        share = 100 * total / steps / 1000 / without_data
        print(
            f"  {region:<44} {forward:>9.1f} {backward:>9.1f} {forward + backward:>9.1f} "
            f"{share:>6.1f}%"
        )

    for direction in DIRECTIONS:
        total = sum(found.ops[direction].values()) / steps / 1000
        print(
            f"\ntop {top} {direction} operations by self CPU time ({total:.0f} ms per step "
            f"in all; share of the step without data; calls per step; region where the "
            f"operation ran or, in backward, whose forward created it)"
        )
        for key, micros in found.ops[direction].most_common(top):
            calls = found.op_calls[direction][key] / steps
            ms = micros / steps / 1000
            print(f"  {ms:>8.1f} ms {100 * ms / without_data:>5.1f} % {calls:>6.1f}x  {key}")
    conv_ms = found.conv / steps / 1000
    phases = {f"{name}_ms": per_step[name] for name in PHASES}
    return {"profiled_step_ms": profiled, **phases, "conv_share": conv_ms / without_data}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads_and_print_header(args.threads)
    setup = training_setup(args.model, max(args.warmup, args.steps))
    learner = make_learner(setup, "fp32", args.warmup + 2 * args.steps)
    print(
        f"{args.model}: float32 training step, batch {setup.config.batch_size} of "
        f"{setup.config.data.image_size} px scenes, {args.threads} threads; {args.warmup} warm-up "
        f"step(s), {args.steps} timed, then {args.steps} profiled",
        flush=True,
    )
    steps = {"step": stepper(learner, setup.batches)}
    step_ms = 1000 * medians(alternate_timings(steps, args.steps, args.warmup))["step"]
    events, labels = profiled_steps(learner, setup.loader, args.steps)
    found = Attribution(events, labels)
    first_load_ms = 1000 * statistics.median(setup.first_load_seconds)
    figures = print_report(found, args.steps, step_ms, first_load_ms, args.top)
    fields = {"step_ms": step_ms, "first_load_ms": first_load_ms, **figures}
    print_result(fields)


if __name__ == "__main__":
    main()
