"""One way in for every model file: :func:`open_model` tells a pansight checkpoint, an ONNX
export, torchvision weights and the original YOLACT / YolactEdge checkpoints apart, and gives
the model with the data set it was trained on. ``pansight.load``, ``evaluate``, ``predict``,
``export`` and ``serve`` all read models through it (``export`` through its weights-only part,
:func:`pansight.engine.model_files.open_weights`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pansight.config import DataConfig
from pansight.engine.model_files import OpenedModel, open_weights
from pansight.models.base import PansightModel

if TYPE_CHECKING:
    from pansight.export import OnnxPredictor

ONNX_SUFFIX = ".onnx"


def open_model(source: PansightModel | OnnxPredictor | str | Path) -> OpenedModel:
    """The model ``source`` holds, in eval mode.

    ``source`` is a model already in memory, or a file: a pansight checkpoint (``model.pt``,
    ``last.pt``), an ONNX file ``pansight export`` wrote (by its ``.onnx`` suffix, run by an
    :class:`~pansight.export.OnnxPredictor`), or a state dict of a foreign layout a model family
    imports (torchvision's Faster/Mask R-CNN, the original YOLACT and YolactEdge checkpoints).

    Raises:
        CheckpointError: naming the file, when it is missing, unreadable, or none of these.
    """
    if isinstance(source, PansightModel):
        return OpenedModel(source.eval(), DataConfig())
    if not isinstance(source, str | Path):
        return OpenedModel(source, source.trained_on)  # an OnnxPredictor
    if Path(source).suffix.lower() == ONNX_SUFFIX and Path(source).is_file():
        # pansight.export needs the optional onnx and onnxruntime packages
        from pansight.export import load_onnx

        predictor = load_onnx(source)
        return OpenedModel(predictor, predictor.trained_on, predictor.metadata.model_name)
    return open_weights(source)
