"""What a pansight ONNX file says about itself, in the model's ``metadata_props``.

:class:`ExportMetadata` holds the ``pansight.*`` keys: format, version, zoo model name, task,
class names, model config, training data, precision, the nodes of an int8 graph left in float and
its weights' width. Every value is a string; lists and dicts are JSON. With them a file alone
rebuilds the predictor: the zoo entry named rebuilds the model's preprocessing and
postprocessing, the graph holds the network and its weights.

See docs/export.md for the keys and their values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pansight.errors import CheckpointError

FORMAT = "pansight-onnx"
VERSION = 1
PREFIX = "pansight."
JSON_FIELDS = ("class_names", "model_config", "train_data")
PRECISIONS = ("fp32", "int8")
WEIGHT_BITS = (7, 8)
"""Widths of int8 weights: 7 bits (onnxruntime's ``reduce_range``) or the full 8."""


@dataclass(frozen=True)
class ExportMetadata:
    """The pansight description of an exported graph.

    Attributes:
        model_name: the zoo entry the model was built from.
        task: the model's task.
        class_names: one name per contiguous label.
        model_config: the model's config dataclass as a plain dict.
        train_data: the :class:`~pansight.config.DataConfig` the model was trained on, as a
            plain dict (empty when unknown); ``eval`` defaults to this data set.
        precision: ``fp32``, or ``int8`` for a graph quantized by
            :func:`~pansight.export.quantize.quantize_onnx`.
        fp32_nodes: names of the graph nodes an ``int8`` graph keeps in float.
        int8_weight_bits: an ``int8`` graph's weight width, 7 or 8 (:data:`WEIGHT_BITS`);
            ``None`` for ``fp32``.
    """

    model_name: str
    task: str
    class_names: list[str]
    model_config: dict[str, Any]
    train_data: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    fp32_nodes: list[str] = field(default_factory=list)
    int8_weight_bits: int | None = None

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries (key -> string value) describing this export."""
        props = {f"{PREFIX}format": FORMAT, f"{PREFIX}version": str(VERSION)}
        props[f"{PREFIX}model_name"] = self.model_name
        props[f"{PREFIX}task"] = self.task
        for name in JSON_FIELDS:
            props[f"{PREFIX}{name}"] = json.dumps(getattr(self, name))
        props[f"{PREFIX}precision"] = self.precision
        props[f"{PREFIX}fp32_nodes"] = json.dumps(self.fp32_nodes)
        if self.int8_weight_bits is not None:
            props[f"{PREFIX}int8_weight_bits"] = str(self.int8_weight_bits)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], path: str | Path) -> ExportMetadata:
        """Read the entries :meth:`to_props` wrote.

        Raises:
            CheckpointError: naming ``path``, if the file has no pansight metadata (not ours),
                a newer version, an entry that is missing or not valid JSON, an unknown
                precision or weight width. ``precision``, ``fp32_nodes`` and
                ``int8_weight_bits`` are optional (older files lack them; their int8 weights
                have 8 bits).
        """
        if props.get(f"{PREFIX}format") != FORMAT:
            raise CheckpointError(
                f"{path}: not a pansight ONNX file (no {PREFIX}format={FORMAT!r} metadata); "
                "export one with `pansight export CHECKPOINT --format onnx`"
            )
        version_text = props.get(f"{PREFIX}version", "")
        if not version_text.isdigit():
            raise CheckpointError(f"{path}: pansight ONNX version {version_text!r} is not a number")
        version = int(version_text)
        if version > VERSION:
            raise CheckpointError(
                f"{path}: pansight ONNX version {version} is newer than this pansight reads "
                f"({VERSION}); upgrade pansight"
            )
        values: dict[str, Any] = {}
        for name in ("model_name", "task", *JSON_FIELDS):
            key = f"{PREFIX}{name}"
            if key not in props:
                raise CheckpointError(f"{path}: pansight ONNX metadata lacks {key!r}")
            try:
                values[name] = json.loads(props[key]) if name in JSON_FIELDS else props[key]
            except json.JSONDecodeError as error:
                raise CheckpointError(f"{path}: metadata {key!r} is not JSON: {error}") from None
        return cls(**values, **precision_fields(props, path))


def precision_fields(props: dict[str, str], path: str | Path) -> dict[str, Any]:
    """``precision``, ``fp32_nodes`` and ``int8_weight_bits`` from ``props`` (``fp32``, ``[]``
    and, for int8, 8 when absent; ``None`` for fp32).

    Raises:
        CheckpointError: naming ``path``, for an unknown precision or weight width, or a node
            list that is not a JSON list.
    """
    precision = props.get(f"{PREFIX}precision", "fp32")
    if precision not in PRECISIONS:
        raise CheckpointError(
            f"{path}: pansight ONNX precision {precision!r} is unknown; "
            f"this pansight reads {', '.join(PRECISIONS)}"
        )
    key = f"{PREFIX}fp32_nodes"
    try:
        fp32_nodes = json.loads(props.get(key, "[]"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: metadata {key!r} is not JSON: {error}") from None
    if not isinstance(fp32_nodes, list):
        raise CheckpointError(f"{path}: metadata {key!r} is not a JSON list")
    return {
        "precision": precision,
        "fp32_nodes": fp32_nodes,
        "int8_weight_bits": weight_bits(props, path) if precision == "int8" else None,
    }


def weight_bits(props: dict[str, str], path: str | Path) -> int:
    """The int8 weight width ``props`` give (8 when absent: files written before the choice).

    Raises:
        CheckpointError: naming ``path``, for a width outside :data:`WEIGHT_BITS`.
    """
    text = props.get(f"{PREFIX}int8_weight_bits", "8")
    if text not in {str(bits) for bits in WEIGHT_BITS}:
        raise CheckpointError(
            f"{path}: int8 weight width {text!r} is unknown; this pansight reads "
            f"{', '.join(map(str, WEIGHT_BITS))} bits"
        )
    return int(text)
