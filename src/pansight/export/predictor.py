"""Run an exported pansight ONNX file with onnxruntime, behind the eager model's interface.

:class:`OnnxPredictor` has ``task``, ``class_names``, ``predict(images) -> list[Result]`` and the
three steps ``preprocess``, ``__call__`` (the graph) and ``postprocess``; pre- and
postprocessing are the eager model's own methods, run on a weightless copy of the model.
:func:`load_onnx` opens a file. An int8 file with 8-bit weights opened on a processor without
VNNI warns once.

See docs/export.md for the weightless model and the VNNI warning.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from torch import Tensor

from pansight import hardware
from pansight.config import DataConfig, from_dict
from pansight.errors import CheckpointError, ConfigError
from pansight.export.metadata import PREFIX, ExportMetadata
from pansight.export.rcnn import IMAGE_SIZES_NAME
from pansight.export.specs import export_spec
from pansight.export.tracing import INPUT_NAME
from pansight.models.base import PansightModel
from pansight.models.registry import ExportSpec, export_spec_of
from pansight.models.zoo import MODELS
from pansight.structures import ImageBatch, Result, Target


class OnnxPredictor:
    """An exported model run by onnxruntime on the CPU.

    Attributes:
        path: the ONNX file.
        metadata: its pansight metadata.
        model: the eager model's structure without weights (on the ``meta`` device); only its
            ``preprocess`` and ``postprocess`` are used.
        session: the onnxruntime inference session.
    """

    device = torch.device("cpu")

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        session: onnxruntime.InferenceSession | None = None,
    ) -> None:
        """Open ``path``; ``threads`` sets onnxruntime's intra-op threads (default: its own
        choice, one per physical core); ``session``: one already open on ``path``.

        Raises:
            CheckpointError: naming ``path``, if it is missing, not ONNX, not a pansight export,
                or describes a model this pansight cannot rebuild.
        """
        self.path = Path(path)
        self.session = session or open_session(self.path, threads)
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ExportMetadata.from_props(props, self.path)
        warn_if_int8_may_saturate(self.metadata, self.path)
        self.model = weightless_model(self.metadata, self.path)
        try:
            self.spec: ExportSpec = export_spec(type(self.model), self.metadata.model_name)
        except ConfigError as error:
            raise CheckpointError(f"{self.path}: {error}") from None
        self._input_shape = self.session.get_inputs()[0].shape

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def trained_on(self) -> DataConfig:
        """The data set the model was trained on (the synthetic world when unknown)."""
        return from_dict(DataConfig, self.metadata.train_data)

    @property
    def batch_size(self) -> int | None:
        """The batch size the graph takes, or ``None`` when its batch axis is dynamic."""
        size = self._input_shape[0]
        return size if isinstance(size, int) else None

    def preprocess(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> tuple[ImageBatch, list[Target] | None]:
        """The eager model's ``preprocess`` (resize and pad as its config says)."""
        return self.model.preprocess(images, targets)

    def __call__(self, batch: ImageBatch) -> Any:
        """The model's ``Outputs`` for ``batch`` (``(B, 3, H, W)`` preprocessed images); the
        fields the graph does not output (those ``postprocess`` does not read) are ``None``.

        A graph exported with a fixed batch runs its images in chunks of that size; an R-CNN
        graph (``spec.per_image``) runs them one by one, each with its size inside the padding
        followed by those of the batch.

        Raises:
            ConfigError: the images' size differs from the one the graph was exported for.
        """
        images = batch.tensor.detach().float().cpu()
        self._check_spatial_size(images)
        chunk = self.batch_size or len(images)
        if self.spec.per_image:
            runs = [
                self._run_one(images[i : i + 1], [size, *batch.image_sizes])
                for i, size in enumerate(batch.image_sizes)
            ]
        else:
            runs = [
                self._run(images[start : start + chunk]) for start in range(0, len(images), chunk)
            ]
        fields = dict.fromkeys(field.name for field in dataclasses.fields(self.spec.outputs_cls))
        for index, name in enumerate(self.spec.output_names):
            parts = [torch.from_numpy(run[index]) for run in runs]
            if name in self.spec.per_image:
                fields[name] = parts
            else:
                fields[name] = parts[0] if name in self.spec.batch_free else torch.cat(parts)
        return self.spec.outputs_cls(**fields)

    def postprocess(self, outputs: Any, batch: ImageBatch, **options: Any) -> list[Result]:
        """The eager model's ``postprocess`` (``options`` such as ``with_scores`` pass on)."""
        return self.model.postprocess(outputs, batch, **options)

    def predict(self, images: list[Tensor] | Tensor) -> list[Result]:
        """Results for ``(3, h, w)`` images in ``[0, 1]`` (a list, or a ``(B, 3, H, W)`` tensor)."""
        with torch.no_grad():
            batch, _ = self.preprocess([image.cpu() for image in images])
            return self.postprocess(self(batch), batch)

    def _run(self, images: Tensor) -> list[np.ndarray]:
        return self.session.run(list(self.spec.output_names), {INPUT_NAME: images.numpy()})

    def _run_one(self, image: Tensor, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        feeds = {INPUT_NAME: image.numpy(), IMAGE_SIZES_NAME: np.array(sizes, dtype=np.int64)}
        return self.session.run(list(self.spec.output_names), feeds)

    def _check_spatial_size(self, images: Tensor) -> None:
        expected = tuple(self._input_shape[1:])
        found = tuple(images.shape[1:])
        if any(isinstance(e, int) and e != f for e, f in zip(expected, found)):
            raise ConfigError(
                f"{self.path}: the graph takes images of shape {expected}, preprocessing gave "
                f"{found}; export the model again for this size"
            )


KEEP_FLOAT_WEIGHTS = ("WeightBiasQuantization",)
"""onnxruntime passes a session disables: ``WeightBiasQuantization`` quantizes the weights of
float convolutions among quantized nodes itself (8 bits, one scale per tensor), which would undo
an int8 graph's ``exclude_nodes`` and run them as integer kernels."""


def open_session(path: Path, threads: int | None) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session on ``path`` with ``threads`` intra-op threads (``None``: the
    runtime's default); the float weights of an int8 graph stay float (:data:`KEEP_FLOAT_WEIGHTS`).

    Raises:
        CheckpointError: naming ``path``, if it is missing or not an ONNX model.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    options = onnxruntime.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads={threads} must be at least 1")
        options.intra_op_num_threads = threads
    try:
        return onnxruntime.InferenceSession(
            str(path),
            options,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(KEEP_FLOAT_WEIGHTS),
        )
    except Exception as error:  # onnxruntime raises its own types for unreadable models
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{path}: cannot read the ONNX file: {reason}") from None


def warn_if_int8_may_saturate(metadata: ExportMetadata, path: Path) -> None:
    """Warn (``RuntimeWarning``; Python's default filters show it once per file) when
    ``metadata`` describes 8-bit int8 weights and this processor lacks VNNI, so onnxruntime's
    uint8 x int8 kernels may saturate their 16-bit pair sums."""
    if metadata.int8_weight_bits == 8 and hardware.int8_needs_reduced_range():
        warnings.warn(
            f"{path}: int8 weights have 8 bits, and this processor has no VNNI: onnxruntime's "
            "integer kernels may saturate and give outputs far from the quantized model's; "
            "export it again with 7-bit weights (`pansight export --int8 --weight-bits 7`, "
            "or Int8Options(reduce_range=True))",
            RuntimeWarning,
            stacklevel=3,
        )


def weightless_model(metadata: ExportMetadata, path: Path) -> PansightModel:
    """The model ``metadata`` describes, built on the ``meta`` device (no weights in memory).

    Raises:
        CheckpointError: naming ``path``, for an unknown model name or a config that does not
            fit it.
    """
    entry = MODELS.get(metadata.model_name)
    if entry is None:
        raise CheckpointError(
            f"{path}: exported model {metadata.model_name!r} is unknown to this pansight"
        )
    try:
        config = from_dict(entry.config_cls, metadata.model_config)
    except ConfigError as error:
        raise CheckpointError(
            f"{path}: model_config does not fit {metadata.model_name}: {error}"
        ) from None
    with torch.device("meta"):
        return entry.builder(config, list(metadata.class_names)).eval()


def predictor_type(model_cls: type | None) -> type[OnnxPredictor]:
    """The class that runs the exports of ``model_cls``: the one its export spec names
    (``"module:Class"``, a subclass for a model with more than ``predict``, e.g. a streaming
    video model), else :class:`OnnxPredictor`."""
    spec = export_spec_of(model_cls) if model_cls is not None else None
    if spec is None or not spec.predictor:
        return OnnxPredictor
    module, _, name = spec.predictor.partition(":")
    # named by the model family as a string: the predictor lives in a layer above the family
    return getattr(importlib.import_module(module), name)


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxPredictor:
    """The predictor of a pansight ONNX file: an :class:`OnnxPredictor`, or the subclass the
    model's export spec names (:func:`predictor_type`)."""
    session = open_session(Path(path), threads)
    model_name = session.get_modelmeta().custom_metadata_map.get(f"{PREFIX}model_name")
    entry = MODELS.get(model_name or "")
    return predictor_type(entry.builder if entry else None)(path, threads, session)
