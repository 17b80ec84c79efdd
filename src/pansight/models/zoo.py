"""Every model pansight can build, by name, and rebuilding models from checkpoint payloads.

:data:`MODELS` is the one table the command line lists and builds from: the zoo entries every
model family declares (:mod:`pansight.models.registry`). An entry's default config is
``config_cls(**defaults)``; ``key=value`` overrides apply on top of it. Weights saved outside
pansight (torchvision's, the original YOLACT code's) are read by :mod:`pansight.models.foreign`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pansight.config import TASKS, apply_overrides, from_dict
from pansight.errors import CheckpointError, ConfigError
from pansight.models.base import PansightModel
from pansight.models.registry import ModelEntry, ModelTable

MODELS: Mapping[str, ModelEntry] = ModelTable()
"""Every registered model by name (read-only, always current)."""


def models_for_task(task: str) -> list[str]:
    """Names of the models in :data:`MODELS` that solve ``task``."""
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is unknown; choose one of {', '.join(TASKS)}")
    return [name for name, entry in MODELS.items() if entry.task == task]


def build_model(
    name: str,
    class_names: list[str],
    overrides: dict[str, Any] | None = None,
    task: str | None = None,
) -> PansightModel:
    """Build model ``name`` for ``class_names`` with ``key=value`` config ``overrides``.

    If the config names ``torchvision_weights``, the entry's ``import_weights`` imports them
    (ResNet weights by default; a head of another class count is skipped with a warning).

    Args:
        task: when given, ``name`` must be a model for this task.

    Raises:
        ConfigError: for an unknown name (listing the valid ones) or a bad override.
        CheckpointError: if ``torchvision_weights`` cannot be read or does not fit.
    """
    entry = _entry(name, task)
    config = apply_overrides(entry.default_config(), overrides or {})
    model = entry.builder(config, class_names)
    weights_path = getattr(config, "torchvision_weights", "")
    if weights_path:
        if entry.import_weights is None:
            raise ConfigError(f"model {name!r} takes no torchvision_weights")
        skipped = entry.import_weights(model, read_state_dict(weights_path, "torchvision weights"))
        if skipped:
            warnings.warn(
                f"{weights_path}: {', '.join(skipped)} not imported (the class count differs); "
                "the class head starts from random weights",
                stacklevel=2,
            )
    return model


def model_from_checkpoint(payload: dict[str, Any]) -> PansightModel:
    """Rebuild the model a checkpoint payload describes and load its weights strictly.

    Uses ``model_name``, ``model_config``, ``class_names`` and ``state_dict`` of the payload;
    ``torchvision_weights`` named in the config is not read again (the state dict holds them).

    Raises:
        CheckpointError: for a missing field, an unknown model name, a config that does not fit
            the model, or state-dict keys/shapes that differ from the model's.
    """
    for key in ("model_name", "model_config", "class_names", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"checkpoint has no {key!r}; is it a pansight checkpoint?")
    name = payload["model_name"]
    if name not in MODELS:
        raise CheckpointError(
            f"checkpoint model {name!r} is unknown; this pansight knows {', '.join(MODELS)}"
        )
    entry = MODELS[name]
    if payload.get("task", entry.task) != entry.task:
        raise CheckpointError(
            f"checkpoint task {payload['task']!r} does not match model {name!r} ({entry.task})"
        )
    try:
        config = from_dict(entry.config_cls, payload["model_config"])
    except ConfigError as error:
        raise CheckpointError(f"checkpoint model_config does not fit {name}: {error}") from None
    model = entry.builder(config, list(payload["class_names"]))
    load_state_dict_strictly(model, payload["state_dict"])
    return model


def load_state_dict_strictly(model: PansightModel, state_dict: Mapping[str, Tensor]) -> None:
    """Load ``state_dict`` into ``model``; CheckpointError naming the first key that differs."""
    own = model.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(
            f"checkpoint weights do not fit the model: {first} "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys)"
        )
    for key, value in state_dict.items():
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"checkpoint weight {key!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(own[key].shape)}"
            )
    model.load_state_dict(state_dict, strict=True)


def _entry(name: str, task: str | None) -> ModelEntry:
    """The entry called ``name``; ConfigError listing the valid names (for ``task``) otherwise."""
    if task is not None:
        names = models_for_task(task)
        if name not in names:
            choices = ", ".join(names) or "(none yet)"
            raise ConfigError(f"model {name!r} is not a {task} model; choose one of {choices}")
    elif name not in MODELS:
        listing = "; ".join(f"{t}: {', '.join(models_for_task(t))}" for t in _tasks_with_models())
        raise ConfigError(f"model {name!r} is unknown; choose one of {listing}")
    return MODELS[name]


def _tasks_with_models() -> list[str]:
    return [task for task in TASKS if models_for_task(task)]


def read_state_dict(path: str | Path, what: str = "weights") -> dict[str, Tensor]:
    """The state dict saved at ``path`` (a plain ``torch.save`` of a mapping of names to
    tensors); CheckpointError naming the file and ``what`` it should hold otherwise."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} file not found") from None
    except Exception as error:  # torch.load raises many types for corrupt or foreign files
        raise CheckpointError(f"{path}: cannot read {what}: {error}") from None
    if not isinstance(state_dict, dict) or not all(
        isinstance(value, Tensor) for value in state_dict.values()
    ):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state_dict
