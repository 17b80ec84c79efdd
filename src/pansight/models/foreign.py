"""Models from weights saved outside pansight: every layout a family declares
(:class:`~pansight.models.registry.WeightFormat`: torchvision's Faster/Mask R-CNNs, the original
YOLACT and YolactEdge checkpoints) is recognized by its key names, built as the zoo model it
fits, and imported with every weight accounted for."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pansight.errors import CheckpointError, ConfigError
from pansight.models.base import PansightModel
from pansight.models.registry import WeightFormat, families, family_of_model
from pansight.models.zoo import build_model, read_state_dict


def weight_formats() -> list[WeightFormat]:
    """Every registered family's foreign layouts."""
    return [fmt for family in families() for fmt in family.weight_formats]


def format_of(state_dict: Mapping[str, Any]) -> WeightFormat | None:
    """The layout ``state_dict`` has, or ``None``."""
    return next((fmt for fmt in weight_formats() if fmt.recognizes(state_dict)), None)


def peek_foreign_weights(path: str | Path) -> dict[str, Tensor] | None:
    """The state dict in the file at ``path`` if it has a foreign layout pansight imports, else
    ``None`` (a pansight checkpoint, or a file torch cannot read). Zip-format files are
    memory-mapped, so looking into a large file reads little."""
    try:
        contents = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except Exception:  # not readable as torch weights: the checkpoint reader names the problem
        return None
    if isinstance(contents, dict) and format_of(contents) is not None:
        return contents
    return None


def import_foreign_weights(
    weights: str | Path | Mapping[str, Tensor],
    name: str | None = None,
    class_names: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> PansightModel:
    """A pansight model holding foreign weights, in eval mode.

    Args:
        weights: the state dict, or the file holding it (``torch.save(model.state_dict())``,
            a file torchvision downloads, a ``.pth`` the original YOLACT code saved).
        name: the zoo model to build; by default the one the layout fits.
        class_names: one name per object class; by default the layout's (COCO's names for a
            COCO-sized head, else ``class_1 .. class_K``).
        overrides: config ``key=value`` overrides (``score_thresh``, ``min_size``, ...).

    Raises:
        CheckpointError: the file cannot be read, has no layout pansight imports, or a weight
            has no place in the model or another shape (naming the key).
        ConfigError: ``name`` is a model of another family than the layout's, or an override
            is bad.
    """
    source = f"{weights}: " if isinstance(weights, str | Path) else ""
    state_dict = read_state_dict(weights) if isinstance(weights, str | Path) else weights
    fmt = format_of(state_dict)
    if fmt is None:
        known = ", ".join(f.description for f in weight_formats())
        raise CheckpointError(f"{source}not a state dict pansight imports (it reads {known})")
    fitting, default_names, layout_overrides = fmt.model_for(state_dict)
    family = family_of_model(fitting)
    if name is not None and (family is None or name not in family.models):
        choices = ", ".join(family.models) if family else fitting
        raise ConfigError(f"model {name!r} cannot take {fmt.description} weights; choose {choices}")
    model = build_model(
        name or fitting, class_names or default_names, {**layout_overrides, **(overrides or {})}
    )
    try:
        fmt.import_weights(model, state_dict)
    except CheckpointError as error:
        raise CheckpointError(f"{source}{error}") from None
    return model.eval()


__all__ = ["import_foreign_weights", "peek_foreign_weights", "weight_formats"]
