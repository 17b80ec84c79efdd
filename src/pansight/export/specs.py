"""Which models export and quantize: the export specs the model families declare
(:class:`~pansight.models.registry.ExportSpec`), looked up by model class."""

from __future__ import annotations

from pansight.errors import ConfigError
from pansight.models.registry import ExportSpec, Int8Spec, export_spec_of
from pansight.models.zoo import MODELS


def export_spec(model_cls: type, model_name: str) -> ExportSpec:
    """The export spec of ``model_cls``.

    Raises:
        ConfigError: naming ``model_name``, if its class does not export yet.
    """
    spec = export_spec_of(model_cls)
    if spec is None:
        raise ConfigError(
            f"ONNX export of {model_name} ({model_cls.__name__}) is not supported yet; "
            f"exportable models: {', '.join(exportable_models())}"
        )
    return spec


def exportable_models() -> list[str]:
    """The zoo names whose models export to ONNX."""
    return [name for name, entry in MODELS.items() if export_spec_of(entry.builder) is not None]


def int8_spec(model_cls: type) -> Int8Spec | None:
    """How the graphs of ``model_cls`` quantize (``None``: they do not)."""
    spec = export_spec_of(model_cls)
    return spec.int8 if spec is not None else None


def quantizable_models() -> list[str]:
    """The zoo names whose exports quantize to int8."""
    return [name for name, entry in MODELS.items() if int8_spec(entry.builder) is not None]
