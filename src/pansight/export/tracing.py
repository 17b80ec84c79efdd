"""The exporter's common steps: tracing a module into an ONNX graph and writing a file
atomically."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from pansight.errors import CheckpointError
from pansight.export.simplify import drop_redundant_relus

OPSET = 17
INPUT_NAME = "images"


def trace_module(
    module: nn.Module,
    inputs: tuple[Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None,
) -> onnx.ModelProto:
    """Trace ``module`` (a wrapper holding the model as ``module.model``) on ``inputs`` into an
    ONNX model (weights inside), the model in eval mode meanwhile; ReLUs of values already
    non-negative are removed (:func:`~pansight.export.simplify.drop_redundant_relus`)."""
    buffer = io.BytesIO()
    was_training = module.model.training
    module.model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message=".*feature will be removed")
            torch.onnx.export(
                module,
                inputs,
                buffer,
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
            )
    finally:
        module.model.train(was_training)
    graph = onnx.load_model_from_string(buffer.getvalue())
    drop_redundant_relus(graph)
    return graph


def write_atomically(graph: onnx.ModelProto, path: Path) -> Path:
    """Write ``graph`` to ``path`` through a temporary file, so ``path`` is never torn.

    Raises:
        CheckpointError: naming ``path``, if it cannot be written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(graph.SerializeToString())
        os.replace(handle.name, path)
    except OSError as error:
        Path(handle.name).unlink(missing_ok=True)
        raise CheckpointError(f"{path}: cannot write the ONNX file: {error}") from None
    return path
