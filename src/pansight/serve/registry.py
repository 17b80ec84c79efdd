"""The models a server holds, each behind one small :class:`Predictor` interface.

A predictor turns one image into one result; which engine computes it (eager PyTorch or
onnxruntime) is the predictor's business. :data:`BACKENDS` maps a checkpoint's file suffix to
the backend that runs it; :func:`pansight.load` loads every kind.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from pansight.api import load
from pansight.errors import ConfigError
from pansight.structures import Result, on_cpu


class Predictor(Protocol):
    """One loaded model as the server sees it.

    Attributes:
        name: the name clients ask for (unique within a registry).
        task: ``classify``, ``localize``, ``detect``, ``semantic``, ``instance`` or ``panoptic``.
        class_names: one name per contiguous label of the results.
        backend: what runs the model (``eager``, ...).
    """

    name: str
    task: str
    class_names: list[str]
    backend: str

    def predict(self, image: Tensor) -> Result:
        """The result for one ``(3, H, W)`` float RGB image in ``[0, 1]``, on the CPU, in
        original-image pixels."""
        ...


@dataclass
class LoadedModel:
    """A model loaded by :func:`pansight.load`: a
    :class:`~pansight.models.base.PansightModel` run by PyTorch in eval mode, or an
    :class:`~pansight.export.OnnxPredictor` run by onnxruntime (both ``predict`` alike)."""

    name: str
    model: Any
    backend: str

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    def predict(self, image: Tensor) -> Result:
        with torch.inference_mode():
            (result,) = self.model.predict([image])
        return on_cpu(result)


BACKENDS: dict[str, str] = {".pt": "eager", ".pth": "eager", ".onnx": "onnxruntime"}
"""Checkpoint file suffix -> the backend that runs it (:func:`pansight.load` reads them all)."""


def load_model(name: str, path: Path) -> LoadedModel:
    """The checkpoint, torchvision weights or pansight ONNX file ``path`` as model ``name``."""
    return LoadedModel(name, load(path), BACKENDS[path.suffix.lower()])


RUN_CHECKPOINT_STEMS = ("model", "last")
"""Checkpoint stems that say nothing, so the model takes its run folder's name instead."""


class ModelRegistry:
    """Predictors by name, in the order they were added."""

    def __init__(self, predictors: Iterable[Predictor] = ()) -> None:
        self._predictors: dict[str, Predictor] = {}
        for predictor in predictors:
            self.add(predictor)

    def add(self, predictor: Predictor) -> None:
        """Add ``predictor``; its name must be new.

        Raises:
            ConfigError: a predictor of that name is already held.
        """
        if predictor.name in self._predictors:
            raise ConfigError(f"two models are named {predictor.name!r}")
        self._predictors[predictor.name] = predictor

    def get(self, name: str) -> Predictor | None:
        return self._predictors.get(name)

    def names(self) -> list[str]:
        return list(self._predictors)

    def __iter__(self):
        return iter(self._predictors.values())

    def __len__(self) -> int:
        return len(self._predictors)


def load_registry(checkpoints: list[Path]) -> ModelRegistry:
    """Load every checkpoint with the backend its suffix names (see :data:`BACKENDS`).

    Each model is named after its file (``runs/sem/model.pt`` -> ``sem``, ``yolact.pt`` ->
    ``yolact``), with ``-2``, ``-3`` ... added where names would repeat.

    Raises:
        ConfigError: no checkpoint given, or a suffix no backend reads.
        CheckpointError: a checkpoint cannot be loaded.
    """
    if not checkpoints:
        raise ConfigError("serve needs at least one checkpoint")
    registry = ModelRegistry()
    for path in checkpoints:
        if path.suffix.lower() not in BACKENDS:
            raise ConfigError(
                f"{path}: no backend reads {path.suffix or 'suffix-less'} files; "
                f"known suffixes: {', '.join(BACKENDS)}"
            )
        registry.add(load_model(unique_name(model_name(path), registry.names()), path))
    return registry


def model_name(path: Path) -> str:
    """The name a checkpoint's model is served under: its stem, or its folder's name for
    ``model.pt`` / ``last.pt`` of a run folder."""
    if path.stem in RUN_CHECKPOINT_STEMS and path.parent.name:
        return path.parent.name
    return path.stem


def unique_name(name: str, taken: list[str]) -> str:
    """``name``, or ``name-2``, ``name-3`` ... whichever is not in ``taken``."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}-{number}"
    return candidate
