"""Checkpoint files: atomic writes, checked reads, and the layout every pansight checkpoint has.

A checkpoint is a ``torch.save``'d dict of plain values (tensors, dicts, lists, strings,
numbers), so it loads with ``torch.load(weights_only=True)``::

    {"format": "pansight-checkpoint", "version": 1, "model_name": str, "task": str,
     "model_config": dict, "train_config": dict, "class_names": [...], "category_ids": [...],
     "semantic_class_names": [...] | None, "state_dict": {...}, "metrics": {...},
     "trainer": {...}}   # "trainer" (optimizer, schedule, iteration, RNG states) only in last.pt
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pansight.config import TrainConfig, to_dict
from pansight.errors import CheckpointError
from pansight.models.base import PansightModel

FORMAT = "pansight-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (stamped with ``format`` and ``version``) to ``path`` atomically.

    The bytes go to a temporary file in the same folder, are flushed to disk, and the file then
    replaces ``path`` in one step: a crash at any moment leaves either the old file or the new
    one, never a torn file or a stray temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException as error:
        Path(handle.name).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise CheckpointError(f"{path}: cannot write checkpoint: {error}") from error
        raise
    _sync_folder(path.parent)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, tensors mapped to ``map_location``.

    Raises:
        CheckpointError: naming ``path`` if it is missing, unreadable, or not a pansight
            checkpoint (of this or an older version).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{path}: cannot read checkpoint: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pansight checkpoint (no format={FORMAT!r} entry)")
    if payload.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload['version']} is newer than this pansight "
            f"reads ({VERSION}); upgrade pansight"
        )
    return payload


def model_payload(
    model: PansightModel,
    *,
    model_name: str,
    train_config: TrainConfig,
    data_set: object,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """Everything ``eval``/``predict`` need to rebuild ``model``, as plain values.

    ``semantic_class_names`` comes from the data set's attribute of that name (else ``None``);
    ``category_ids`` are those of the model's labels (:func:`label_category_ids`).
    """
    class_names = list(model.class_names)
    category_ids = label_category_ids(data_set, class_names)
    semantic_class_names = getattr(data_set, "semantic_class_names", None)
    if semantic_class_names is not None:
        semantic_class_names = list(semantic_class_names)
    return {
        "model_name": model_name,
        "task": model.task,
        "model_config": to_dict(model.config),
        "train_config": to_dict(train_config),
        "class_names": class_names,
        "category_ids": list(category_ids),
        "semantic_class_names": None
        if semantic_class_names is None
        else list(semantic_class_names),
        "state_dict": model.state_dict(),
        "metrics": dict(metrics),
    }


def label_category_ids(data_set: object, class_names: list[str]) -> list[int]:
    """The data set's category id of each of a model's labels ``class_names``.

    A model labeling the data set's semantic classes (things and stuff, as panoptic models do)
    takes ``semantic_category_ids``; one labeling its thing classes takes ``category_ids``;
    without ids that fit, label ``k`` is category ``k``.
    """
    for names, ids in (
        ("semantic_class_names", "semantic_category_ids"),
        ("class_names", "category_ids"),
    ):
        data_names, data_ids = getattr(data_set, names, None), getattr(data_set, ids, None)
        if data_ids and data_names is not None and list(data_names) == class_names:
            return list(data_ids)
    return list(range(len(class_names)))


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator training uses, as checkpoint-safe values.

    Covers torch's CPU generator, every CUDA device's generator (when CUDA is available),
    NumPy's global generator and Python's ``random``.
    """
    numpy_kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": numpy_kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {
            "version": python_version,
            "internal": list(python_internal),
            "gauss_next": python_gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every random generator back into the state :func:`capture_rng_state` recorded."""
    torch.set_rng_state(state["torch"].cpu())
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["internal"]), python_state["gauss_next"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([generator.cpu() for generator in state["cuda"]])


def _sync_folder(folder: Path) -> None:
    """Flush the folder entry of a just-renamed file to disk (POSIX only)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
