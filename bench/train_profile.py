"""Where a float32 training step's CPU time goes, for one model: torch.profiler over a few steps
of ``bench/train_throughput.py``'s training step, each with its batch loaded in the same
process (the trainer's default ``workers=0``).

Three views, all in milliseconds per step and as a share of the profiled step:

- phases: data (the loader's second pass: the world's renders come from its cache, so this is
  augmentation and collation; the first, rendering pass is timed apart, unprofiled),
  preprocess, forward, loss, backward, optimizer;
- regions: each of the model's sub-modules (the torchvision ResNet body, the FPN, our RoIAlign,
  the heads...) and each pansight function or model method the forward and the loss call
  (target matching, sampling, the losses...), innermost mark counting; the backward of an
  operation is charged to the region whose forward created its autograd node (they share a
  sequence number), so a region's total is its forward plus its backward;
- operations: the top aten operations by self CPU time in data loading, in forward (with
  preprocess and loss) and in backward, grouped by input shapes and region.

The marks are added around the model for the profiled steps only (forward hooks, wrappers on
the model's methods and on the pansight functions its modules call) and removed afterwards; the
model code is not changed. The step is also timed without the profiler, which adds per-op
overhead that weighs most on models of many small operations.

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
import functools
import inspect
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from types import ModuleType

import torch
from timing import print_header
from torch import nn
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.data import DataLoader
from train_throughput import RUNGS, Batch, Learner, make_learner, training_setup

PHASES = ("data", "preprocess", "forward", "loss", "backward", "optimizer")
FORWARD_PHASES = ("preprocess", "forward", "loss")
DIRECTIONS = ("data", "forward", "backward")
"""The operation tables: data loading, forward (with preprocess and loss), backward."""
BACKWARD_NODE = "autograd::engine::evaluate_function: "
UNMARKED_METHODS = {"forward", "preprocess", "loss", "postprocess", "predict", "train", "eval"}
"""Model methods left unwrapped: the phases already mark them, or training does not call them."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=list(RUNGS))
    parser.add_argument("--steps", type=int, default=3, help="profiled (and timed) steps")
    parser.add_argument("--warmup", type=int, default=1, help="unprofiled steps first")
    parser.add_argument("--top", type=int, default=15, help="operations listed per table")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    return parser.parse_args(argv)


# -- region marks ----------------------------------------------------------------------------


class RegionMarks:
    """``record_function`` ranges around a model's parts while it is open, removed on exit.

    Marked: every direct sub-module (``name (Class)``), every public method of the model's
    pansight classes but the phases (``name()``), and every pansight function bound in the
    namespace of the model's modules and of those functions' own modules (``name()``).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.labels: set[str] = set()
        self.open: list[record_function] = []
        self.undo: list[Callable[[], None]] = []

    def __enter__(self) -> RegionMarks:
        for name, child in self.model.named_children():
            self._hook(child, f"{name} ({type(child).__name__})")
        for name in self._methods():
            self._wrap_attribute(self.model, name, getattr(self.model, name), instance=True)
        for module in self._modules():
            for name, value in list(vars(module).items()):
                if inspect.isfunction(value) and value.__module__.startswith("pansight."):
                    self._wrap_attribute(module, name, value, instance=False)
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self.undo):
            undo()
        self.undo.clear()

    def _methods(self) -> Iterator[str]:
        classes = [c for c in type(self.model).__mro__ if c.__module__.startswith("pansight.")]
        seen = set()
        for cls in classes:
            for name, value in vars(cls).items():
                if name.startswith("_") or name in UNMARKED_METHODS or name in seen:
                    continue
                if inspect.isfunction(value):
                    seen.add(name)
                    yield name

    def _modules(self) -> list[ModuleType]:
        """The model's classes' modules, then the modules of the pansight functions they bind."""
        names = {c.__module__ for c in type(self.model).__mro__}
        for name in list(names):
            for value in vars(sys.modules[name]).values():
                if inspect.isfunction(value) and value.__module__.startswith("pansight."):
                    names.add(value.__module__)
        return [sys.modules[name] for name in sorted(names) if name.startswith("pansight.")]

    def _hook(self, module: nn.Module, label: str) -> None:
        self.labels.add(label)

        def enter(*_: object) -> None:
            mark = record_function(label)
            mark.__enter__()
            self.open.append(mark)

        def leave(*_: object) -> None:
            self.open.pop().__exit__(None, None, None)

        handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
        self.undo += [handle.remove for handle in handles]

    def _wrap_attribute(self, owner: object, name: str, call: Callable, instance: bool) -> None:
        label = f"{name}()"
        self.labels.add(label)

        @functools.wraps(call)
        def marked(*args: object, **kwargs: object) -> object:
            with record_function(label):
                return call(*args, **kwargs)

        setattr(owner, name, marked)
        if instance:
            self.undo.append(lambda: delattr(owner, name))
        else:
            self.undo.append(lambda: setattr(owner, name, call))


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


def timed_steps(learner: Learner, batches: list[Batch], steps: int) -> list[float]:
    """Seconds of ``steps`` unprofiled steps on ``batches`` in turn (loaded beforehand)."""
    seconds = []
    for index in range(steps):
        start = time.perf_counter()
        learner.step(batches[index % len(batches)])
        seconds.append(time.perf_counter() - start)
    return seconds


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
    torch.set_num_threads(args.threads)
    print_header()
    setup = training_setup(args.model, max(args.warmup, args.steps))
    learner = make_learner(setup, "fp32", args.warmup + 2 * args.steps)
    print(
        f"{args.model}: float32 training step, batch {setup.config.batch_size} of "
        f"{setup.config.data.image_size} px scenes, {args.threads} threads; {args.warmup} warm-up "
        f"step(s), {args.steps} timed, then {args.steps} profiled",
        flush=True,
    )
    timed_steps(learner, setup.batches, args.warmup)
    step_ms = 1000 * statistics.median(timed_steps(learner, setup.batches, args.steps))
    events, labels = profiled_steps(learner, setup.loader, args.steps)
    found = Attribution(events, labels)
    first_load_ms = 1000 * statistics.median(setup.first_load_seconds)
    figures = print_report(found, args.steps, step_ms, first_load_ms, args.top)
    fields = {"step_ms": step_ms, "first_load_ms": first_load_ms, **figures}
    print("result: " + " ".join(f"{name}={value:.3f}" for name, value in fields.items()))


if __name__ == "__main__":
    main()
