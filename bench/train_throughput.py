"""Training throughput on CPU, rung by rung: images per second of one training step in float32
and in bfloat16 autocast, each in the default (contiguous) and the channels-last memory layout.

A step is what pansight's trainer does per iteration (``Trainer._train_step``): the model's
``preprocess`` -> ``forward`` -> ``loss`` -> sum -> backward -> gradient clipping where the
recipe clips -> optimizer step -> schedule step. Everything comes from pansight itself: the
task's recipe (``pansight.api.make_train_config``: batch size, image size, optimizer), the
synthetic world with its training augmentation (``pansight.data.factory``), the trainer's
loader and optimizer (``pansight.engine.loader``, ``pansight.engine.optim``) and the zoo's model.
The batches are loaded before the timing; the table gives their load time apart, as the
trainer with ``workers=0`` adds it to every step: a second pass over the same batches, so with
the world's renders cached (augmentation and collation: what every epoch after the first costs).

The four variants start from the same weights, each with its own optimizer, and take their
steps in turn on the same batches (``timing.alternate_timings``), so that a busy machine slows
them alike. bfloat16 autocast is timed only where the processor runs it natively
(:func:`pansight.hardware.native_bf16`): elsewhere oneDNN emulates it, 10 to 20 times slower
than float32, and a row would take minutes; ``--force-bf16`` times it anyway.

    python bench/train_throughput.py [--models classifier_r18 mask_rcnn_r18_fpn]
        [--steps 5 --warmup 2] [--skip-bf16 | --force-bf16]

Ends with ``result: <rung>_fp32_img_s=... <rung>_fp32_cl_vs_fp32=... <rung>_bf16_vs_fp32=...
<rung>_bf16_cl_vs_fp32=... amp_auto=...`` (ratios of images per second: above 1 is faster than
float32 eager).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from timing import alternate_timings, print_header
from torch import Tensor
from torch.utils.data import DataLoader

from pansight import hardware
from pansight.api import make_train_config, model_label_space
from pansight.config import TrainConfig
from pansight.data.factory import build_dataset, wrap_for_training
from pansight.engine.loader import build_loader
from pansight.engine.optim import build_optimizer, build_scheduler
from pansight.engine.precision import resolve_precision
from pansight.engine.trainer import seed_everything
from pansight.models.base import PansightModel
from pansight.models.zoo import build_model
from pansight.structures import Target

RUNGS = {
    "classifier_r18": ("classify", "classify"),
    "localizer_r18": ("localize", "localize"),
    "faster_rcnn_r18_fpn": ("detect", "detect"),
    "fcn8s_r18": ("semantic", "semantic"),
    "mask_rcnn_r18_fpn": ("instance", "instance"),
    "yolact_r18": ("instance", "yolact"),
    "panoptic_fpn_r18": ("panoptic", "panoptic"),
}
"""Model -> (task, label in the result line): each rung's default model, and YOLACT."""

VARIANTS = {
    "fp32": (None, False),
    "fp32_cl": (None, True),
    "bf16": (torch.bfloat16, False),
    "bf16_cl": (torch.bfloat16, True),
}
"""Variant -> (autocast dtype or ``None`` for float32, channels-last)."""

Batch = tuple[list[Tensor], list[Target]]
Phase = Callable[[str], AbstractContextManager]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(RUNGS), choices=list(RUNGS))
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--batches", type=int, default=2, help="distinct batches, taken in turn")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--skip-bf16", action="store_true", help="time float32 only")
    parser.add_argument(
        "--force-bf16", action="store_true", help="time bfloat16 even where it is emulated"
    )
    return parser.parse_args(argv)


# -- the training step -----------------------------------------------------------------------


@dataclass
class Setup:
    """One rung ready to train: its recipe, a freshly initialized model and loaded batches.

    Attributes:
        config: the task's training recipe (``make_train_config``).
        model: the model in training mode, weights as ``build_model`` initialized them.
        loader: the trainer's loader over ``num_batches`` batches of the augmented data.
        batches: ``(images, targets)`` as ``loader`` yields them.
        first_load_seconds: each batch's first load (rendered, unless this process rendered
            the same scenes before; augmented; collated).
        load_seconds: each batch's second load (renders cached: augmented, collated).
    """

    config: TrainConfig
    model: PansightModel
    loader: DataLoader
    batches: list[Batch]
    first_load_seconds: list[float]
    load_seconds: list[float]


def training_setup(model_name: str, num_batches: int) -> Setup:
    """The recipe, model and ``num_batches`` training batches of ``model_name``'s rung, built
    as ``pansight.api.train`` builds them."""
    task = RUNGS[model_name][0]
    config, model_overrides = make_train_config(task, {"model": model_name})
    data = dataclasses.replace(config.data, num_train=config.batch_size * num_batches)
    config = dataclasses.replace(config, data=data)
    seed_everything(config.seed)
    train_set = build_dataset(config.data, "train", task)
    class_names, label_fields = model_label_space(train_set, task)
    model = build_model(model_name, class_names, {**model_overrides, **label_fields})
    augmented = wrap_for_training(train_set, task, config.data, config.seed)
    loader = build_loader(augmented, config.batch_size, shuffle=True, seed=config.seed)
    batches, first_load_seconds = timed_loads(loader)
    load_seconds = timed_loads(loader)[1]
    return Setup(config, model.train(), loader, batches, first_load_seconds, load_seconds)


def timed_loads(loader: DataLoader) -> tuple[list[Batch], list[float]]:
    """Every batch of one pass over ``loader``, and the seconds each took to load."""
    batches, seconds = [], []
    iterator = iter(loader)
    while True:
        start = time.perf_counter()
        batch = next(iterator, None)
        if batch is None:
            return batches, seconds
        seconds.append(time.perf_counter() - start)
        batches.append(batch)


def no_phase(name: str) -> AbstractContextManager:
    """The phase marker of an unprofiled step: nothing."""
    return contextlib.nullcontext()


@dataclass
class Learner:
    """A model with its optimizer and schedule, stepping in one precision and memory layout."""

    model: PansightModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig
    autocast_dtype: torch.dtype | None
    channels_last: bool

    def step(self, batch: Batch, phase: Phase = no_phase) -> dict[str, float]:
        """One training step on ``batch`` as the trainer takes it; returns the losses.

        ``phase(name)`` wraps each part (``preprocess``, ``forward``, ``loss``, ``backward``,
        ``optimizer``), so a profiler can mark them.
        """
        images, targets = batch
        with phase("preprocess"):
            prepared, targets = self.model.preprocess(list(images), list(targets))
            if self.channels_last:
                tensor = prepared.tensor.contiguous(memory_format=torch.channels_last)
                prepared = dataclasses.replace(prepared, tensor=tensor)
        dtype = self.autocast_dtype
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            with phase("forward"):
                outputs = self.model(prepared, targets)
            with phase("loss"):
                losses = self.model.loss(outputs, targets)
                total = sum(losses.values())
                # The trainer reads every loss as a number (to check it is finite) each step.
                values = torch.stack([value.detach().float() for value in losses.values()])
                numbers = dict(zip(losses, values.tolist()))
        with phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
        with phase("optimizer"):
            if self.config.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
            self.optimizer.step()
            self.scheduler.step()
        return numbers


def make_learner(setup: Setup, variant: str, total_steps: int) -> Learner:
    """A copy of ``setup.model`` (same initial weights) with its own AdamW and schedule, in
    ``variant``'s precision and memory layout."""
    autocast_dtype, channels_last = VARIANTS[variant]
    model = copy.deepcopy(setup.model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, setup.config)
    scheduler = build_scheduler(optimizer, setup.config, total_steps)
    return Learner(model, optimizer, scheduler, setup.config, autocast_dtype, channels_last)


def stepper(learner: Learner, batches: list[Batch]) -> Callable[[], object]:
    """A call that takes ``learner``'s next step, on the batches in turn (every variant called
    once per round sees the same batch in that round)."""
    taken = [0]

    def step() -> object:
        batch = batches[taken[0] % len(batches)]
        taken[0] += 1
        return learner.step(batch)

    return step


# -- measurement and report ------------------------------------------------------------------


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
    timings = alternate_timings(calls, args.steps, args.warmup)
    batch_size = setup.config.batch_size
    row = {variant: batch_size / statistics.median(seconds) for variant, seconds in timings.items()}
    row["load_ms"] = 1000 * statistics.median(setup.load_seconds)
    row["batch"] = batch_size
    row["size"] = setup.config.data.image_size
    return row


def print_table(rows: dict[str, dict[str, float]], variants: list[str], note: str) -> None:
    """One line per model: images/s per variant and their ratios to float32 eager."""
    columns = [f"{variant} img/s" for variant in VARIANTS] + [
        f"{variant}/fp32" for variant in list(VARIANTS)[1:]
    ]
    print(
        f"\n{'model':<20} {'batch':>5} {'px':>4} {'load ms':>8} "
        + " ".join(f"{column:>12}" for column in columns)
    )
    for model_name, row in rows.items():
        speeds = [f"{row[v]:>12.1f}" if v in variants else f"{'-':>12}" for v in VARIANTS]
        ratios = [
            f"{row[v] / row['fp32']:>12.2f}" if v in variants else f"{'-':>12}"
            for v in list(VARIANTS)[1:]
        ]
        print(
            f"{model_name:<20} {int(row['batch']):>5} {int(row['size']):>4} "
            f"{row['load_ms']:>8.0f} " + " ".join(speeds + ratios)
        )
    print("(img/s: batch size / median step; _cl: channels-last; load ms: one batch loaded with")
    print(" the renders cached, augmented and collated, outside the timed step; x/fp32: ratio of")
    print(" img/s)")
    if note:
        print(note)


def result_line(rows: dict[str, dict[str, float]], variants: list[str], amp_auto: str) -> str:
    fields = []
    for model_name, row in rows.items():
        label = RUNGS[model_name][1]
        fields.append(f"{label}_fp32_img_s={row['fp32']:.2f}")
        fields += [f"{label}_{v}_vs_fp32={row[v] / row['fp32']:.3f}" for v in variants[1:]]
    return "result: " + " ".join(fields + [f"amp_auto={amp_auto}"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print_header()
    with_bf16, note = bf16_decision(args)
    variants = [v for v, (dtype, _) in VARIANTS.items() if with_bf16 or dtype is None]
    precision = resolve_precision("auto", torch.device("cpu"))
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"training step (preprocess, forward, loss, backward, optimizer), recipe batch and "
        f"image size, {args.threads} threads, median of {args.steps} alternating steps after "
        f"{args.warmup} warm-up, {args.batches} batches in turn (load average {load})"
    )
    print(f"amp=auto picks {precision.name} here ({precision.reason})")
    rows = {}
    for model_name in args.models:
        rows[model_name] = measure(model_name, variants, args)
        print(f"  {model_name}: {rows[model_name]['fp32']:.1f} img/s fp32", flush=True)
    print_table(rows, variants, note)
    print(result_line(rows, variants, precision.name))


if __name__ == "__main__":
    main()
