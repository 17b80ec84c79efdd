"""One training step as pansight's trainer takes it (``Trainer._train_step``), built from
pansight itself: the task's recipe (``pansight.api.make_train_config``: batch size, image size,
optimizer), the synthetic world with its training augmentation (``pansight.data.factory``), the
trainer's loader and optimizer (``pansight.engine.loader``, ``pansight.engine.optim``) and the
zoo's model; in float32 or bfloat16 autocast, contiguous or channels-last."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pansight.api import make_train_config, model_label_space
from pansight.config import TrainConfig
from pansight.data.factory import build_dataset, wrap_for_training
from pansight.engine.loader import build_loader
from pansight.engine.optim import build_optimizer, build_scheduler
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
