"""Model files holding weights: a pansight checkpoint, or a state dict of a foreign layout a model
family imports (torchvision's Faster/Mask R-CNN, the original YOLACT and YolactEdge
checkpoints; see :mod:`pansight.models.foreign`), told apart and read into a model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pansight.config import DataConfig, from_dict
from pansight.engine.checkpoint import FORMAT, load_checkpoint
from pansight.errors import CheckpointError
from pansight.models.base import PansightModel
from pansight.models.foreign import import_foreign_weights, peek_foreign_weights, weight_formats
from pansight.models.zoo import model_from_checkpoint


@dataclass(frozen=True)
class OpenedModel:
    """A model read from a file (or given in memory).

    Attributes:
        model: the model in eval mode (or, from :func:`pansight.loading.open_model`, the
            predictor of an ONNX export).
        trained_on: the data set it was trained on (the synthetic world when the file does not
            say: foreign weights, a model in memory).
        model_name: its zoo name when the file records it (``None`` otherwise).
    """

    model: Any
    trained_on: DataConfig
    model_name: str | None = None


def open_weights(path: str | Path) -> OpenedModel:
    """The model of the weights file at ``path``, in eval mode.

    Raises:
        CheckpointError: naming the file, when it is missing, unreadable, or neither a
            pansight checkpoint nor weights of a layout pansight imports.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    foreign = peek_foreign_weights(path)
    if foreign is not None:
        return OpenedModel(
            named_errors(path, lambda: import_foreign_weights(foreign)), DataConfig()
        )
    try:
        payload = load_checkpoint(path)
    except CheckpointError as error:
        if f"format={FORMAT!r}" not in str(error):
            raise
        known = ", ".join(f.description for f in weight_formats())
        raise CheckpointError(
            f"{path}: neither a pansight checkpoint nor an ONNX export, nor weights pansight "
            f"imports ({known})"
        ) from None
    trained_on = from_dict(DataConfig, payload.get("train_config", {}).get("data", {}))
    model = named_errors(path, lambda: model_from_checkpoint(payload))
    return OpenedModel(model.eval(), trained_on, payload.get("model_name"))


def named_errors(path: Path, build: Callable[[], PansightModel]) -> PansightModel:
    """``build()``, its CheckpointError prefixed with ``path``."""
    try:
        return build()
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
