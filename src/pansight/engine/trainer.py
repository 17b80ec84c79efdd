"""One training loop for every pansight model.

:class:`Trainer` runs ``model.preprocess`` -> ``model(batch, targets)`` -> ``model.loss`` ->
backward -> optimizer and schedule steps, in the precision :mod:`pansight.engine.precision`
resolves and with data parallelism under ``torchrun``. It writes ``config.yaml``, ``last.pt``,
``model.pt`` and the logs to ``config.out``; a run resumed from ``last.pt`` continues exactly.

See docs/training.md for the iteration, the run folder and resuming.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from pansight.config import TrainConfig, save_yaml
from pansight.engine import distributed
from pansight.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    model_payload,
    restore_rng_state,
    save_checkpoint,
)
from pansight.engine.loader import build_loader
from pansight.engine.logs import MetricsLog, progress_bar
from pansight.engine.optim import build_optimizer, build_scheduler
from pansight.engine.precision import resolve_precision
from pansight.errors import CheckpointError, ConfigError, DataError, TrainingError
from pansight.models.base import PansightModel
from pansight.models.registry import training_view
from pansight.structures import ImageBatch, Target

Evaluate = Callable[[PansightModel], dict[str, float]]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def freeze_modules(model: nn.Module, prefixes: tuple[str, ...]) -> list[nn.Module]:
    """Stop the parameters of the modules named by ``prefixes`` from training; returns those
    modules (their batch norms are put in eval mode at every switch to training mode).

    Raises:
        ConfigError: a prefix names no module of ``model``, listing the top-level ones.
    """
    modules = dict(model.named_modules())
    frozen = []
    for prefix in prefixes:
        if prefix not in modules or not prefix:
            names = ", ".join(name for name in modules if name and "." not in name)
            raise ConfigError(f"freeze={prefix!r} names no module; top-level modules: {names}")
        modules[prefix].requires_grad_(False)
        frozen.append(modules[prefix])
    return frozen


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; under ``torchrun`` CUDA is ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available; use device=cpu or auto")
    return torch.device("cuda", distributed.local_rank())


class Trainer:
    """Trains ``model`` on ``train_set`` as ``config`` says; :meth:`fit` runs it.

    Args:
        config: the run (schedule, optimizer, output folder, resume checkpoint...).
        model: the model to train, built after :func:`seed_everything` for a reproducible start.
        train_set: yields ``(image, target)`` samples (see :mod:`pansight.engine.loader`); its
            ``category_ids`` / ``semantic_class_names`` attributes go into the checkpoints.
        model_name: the zoo name of the model, stored in checkpoints.
        evaluate: run once at the end on the trained model (in eval mode, without gradients);
            returns metric name -> value for the logs and the checkpoints.
        extra: additional plain entries stored in every checkpoint.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: PansightModel,
        train_set: Any,
        *,
        model_name: str,
        evaluate: Evaluate | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.model_name = model_name
        self.train_set = train_set
        self.evaluate = evaluate
        self.extra = dict(extra or {})
        self.out = Path(config.out)
        self.device = resolve_device(config.device)
        self.owns_process_group = distributed.init_from_env(self.device.type)
        self.is_main = distributed.is_main_process()
        seed_everything(config.seed)

        self.precision = resolve_precision(config.amp, self.device)
        memory_format = torch.channels_last if self.precision.channels_last else None
        self.model = model.to(self.device, memory_format=memory_format)
        self.frozen = freeze_modules(self.model, config.freeze)
        self.step_module = training_view(self.model)
        self.network = self._parallel(self.step_module)
        self.batches_per_epoch = len(self._loader(epoch=0))
        if self.batches_per_epoch == 0:
            raise DataError(f"the training set is empty ({len(train_set)} samples)")
        self.total_iters = config.epochs * self.batches_per_epoch
        if config.max_iters > 0:
            self.total_iters = min(self.total_iters, config.max_iters)
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.total_iters)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.loss_scaling)

        self.iteration = 0
        self.last_checkpoint: Path | None = None
        self.last_losses: dict[str, float] = {}

    def fit(self) -> dict[str, float]:
        """Train to the end; return the final metrics (last losses and ``evaluate``'s)."""
        self._start()
        try:
            while self.iteration < self.total_iters:
                self._train_epoch()
            metrics = self.last_losses | self._evaluate()
            self._save_checkpoints(metrics, final=True)
            distributed.barrier()
        finally:
            self._close()
        return metrics

    # -- stages of a run -------------------------------------------------------------------

    def _start(self) -> None:
        """Resume if asked, open the run folder, the logs and the progress bar.

        The random generators are restored last, so nothing before the first step draws from
        them: the resumed run makes exactly the draws the interrupted one would have made.
        """
        resumed = self._resume(Path(self.config.resume)) if self.config.resume else None
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            note = f"precision: {self.precision.name} ({self.precision.reason})"
            save_yaml(self.config, self.out / "config.yaml", notes=(note,))
        self.log = MetricsLog(self.out, enabled=self.is_main)
        self.progress = progress_bar(
            self.total_iters, self.iteration, enabled=self.is_main, label=self.precision.name
        )
        self.window = LogWindow()
        self._train_mode()
        if resumed is not None:
            restore_rng_state(resumed["rng"])

    def _train_epoch(self) -> None:
        """The rest of the current epoch (all of it unless resuming mid-epoch)."""
        epoch, batches_done = divmod(self.iteration, self.batches_per_epoch)
        for images, targets in self._loader(epoch, skip_batches=batches_done):
            self.last_losses = self._train_step(images, targets)
            self.iteration += 1
            self._report(epoch, num_images=len(images))
            if self._checkpoint_due():
                self._save_checkpoints({}, final=False)
            if self.iteration >= self.total_iters:
                break

    def _train_step(self, images: list[Tensor], targets: list[Target]) -> dict[str, float]:
        """One optimizer step on one batch; returns the losses (and ``loss``, their sum)."""
        batch, targets = self._prepare(images, targets)
        dtype = self.precision.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            outputs = self.network(batch, targets)
            losses = self.step_module.loss(outputs, targets)
        total = sum(losses.values())
        values = self._checked_values(losses, total)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self._clip_gradients()
        self.window.lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return values

    def _evaluate(self) -> dict[str, float]:
        """Run the ``evaluate`` hook on rank 0 and log its metrics."""
        if self.evaluate is None or not self.is_main:
            return {}
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = {name: float(value) for name, value in self.evaluate(self.model).items()}
        finally:
            self._train_mode()
        self.log.write("eval", self.iteration, self._epoch(), metrics)
        return metrics

    def _train_mode(self) -> None:
        """The model in training mode, but for the batch norms of frozen modules."""
        self.model.train()
        for module in self.frozen:
            for layer in module.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.eval()

    def _close(self) -> None:
        self.progress.close()
        self.log.close()
        if self.owns_process_group:
            distributed.cleanup()

    # -- pieces of a step ------------------------------------------------------------------

    def _prepare(
        self, images: list[Tensor], targets: list[Target]
    ) -> tuple[ImageBatch, list[Target]]:
        """Images onto the device, resized and padded by the model; targets into its frame."""
        images = [image.to(self.device, non_blocking=True) for image in images]
        batch, targets = self.step_module.preprocess(
            images, [target.to(self.device) for target in targets]
        )
        if self.precision.channels_last:
            batch = replace(
                batch, tensor=batch.tensor.contiguous(memory_format=torch.channels_last)
            )
        return batch, targets

    def _checked_values(self, losses: dict[str, Tensor], total: Tensor) -> dict[str, float]:
        """The losses as numbers; raises TrainingError (before any step) if one is not finite."""
        named = {**losses, "loss": total}
        numbers = torch.stack([value.detach().float() for value in named.values()]).tolist()
        values = dict(zip(named, numbers))
        for name, value in values.items():
            if not math.isfinite(value):
                where = self.last_checkpoint or "not written yet"
                raise TrainingError(
                    f"iteration {self.iteration + 1}: loss {name!r} is {value}; lower lr or set "
                    f"clip_grad; the last good checkpoint is {where}"
                )
        return values

    def _clip_gradients(self) -> None:
        if self.config.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)

    def _report(self, epoch: int, num_images: int) -> None:
        """Update the progress bar; every ``log_every`` iterations write the window's means."""
        self.window.add(self.last_losses, num_images * distributed.world_size())
        self.progress.update(1)
        self.progress.set_postfix(loss=f"{self.last_losses['loss']:.4f}", refresh=False)
        if self.config.log_every > 0 and self.iteration % self.config.log_every == 0:
            summary = self.window.summary()
            self.progress.set_postfix(
                loss=f"{summary['loss']:.4f}", img_s=f"{summary['images_per_s']:.1f}"
            )
            self.log.write("train", self.iteration, epoch, summary)
            self.window = LogWindow()

    # -- checkpoints -----------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every
        return every > 0 and self.iteration % every == 0 and self.iteration < self.total_iters

    def _save_checkpoints(self, metrics: dict[str, float], *, final: bool) -> None:
        """``last.pt`` (with training state); at the end also ``model.pt``. Rank 0 only."""
        if not self.is_main:
            return
        payload = model_payload(
            self.model,
            model_name=self.model_name,
            train_config=self.config,
            data_set=self.train_set,
            metrics=metrics,
        )
        payload |= self.extra
        save_checkpoint(self.out / "last.pt", payload | {"trainer": self._training_state()})
        self.last_checkpoint = self.out / "last.pt"
        if final:
            save_checkpoint(self.out / "model.pt", payload)

    def _training_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "epoch": self._epoch(),
            "rng": capture_rng_state(),
        }

    def _resume(self, path: Path) -> dict[str, Any]:
        """Restore weights, optimizer, schedule, loss scale and position from ``path``.

        Returns the checkpoint's training state (whose ``rng`` the caller restores).
        """
        checkpoint = load_checkpoint(path)
        if checkpoint.get("model_name") != self.model_name:
            raise CheckpointError(
                f"{path}: holds model {checkpoint.get('model_name')!r}, not {self.model_name!r}"
            )
        state = checkpoint.get("trainer")
        if state is None:
            raise CheckpointError(f"{path}: has no training state; resume from a last.pt")
        try:
            self.model.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as error:
            reason = str(error).splitlines()[0]
            raise CheckpointError(f"{path}: weights do not fit the model: {reason}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = state["iteration"]
        self.last_checkpoint = path
        return state

    # -- helpers ---------------------------------------------------------------------------

    def _loader(self, epoch: int, skip_batches: int = 0) -> torch.utils.data.DataLoader:
        return build_loader(
            self.train_set,
            self.config.batch_size,
            shuffle=True,
            seed=self.config.seed,
            epoch=epoch,
            workers=self.config.workers,
            skip_batches=skip_batches,
        )

    def _epoch(self) -> int:
        """The epoch of the last finished iteration (0-based)."""
        return max(self.iteration - 1, 0) // self.batches_per_epoch

    def _parallel(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` wrapped for data parallelism under ``torchrun``, else ``model`` itself."""
        if not distributed.is_distributed():
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # Heads may leave a branch unused in an iteration (e.g. no positive proposals).
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


@dataclass
class LogWindow:
    """Losses and throughput accumulated between two log lines."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    images: int = 0
    lr: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def add(self, losses: dict[str, float], images: int) -> None:
        for name, value in losses.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.steps += 1
        self.images += images

    def summary(self) -> dict[str, float]:
        """``lr``, the mean of each loss over the window, and ``images_per_s``."""
        means = {name: total / max(self.steps, 1) for name, total in self.sums.items()}
        seconds = max(time.perf_counter() - self.start, 1e-9)
        return {"lr": self.lr, **means, "images_per_s": self.images / seconds}
