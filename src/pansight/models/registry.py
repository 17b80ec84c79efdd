"""The model families: what pansight knows about each, declared once in the family's folder.

A family (``pansight/models/<family>/__init__.py``) calls :func:`register` with a
:class:`Family`: its zoo entries, its training recipe per task, how each of its model classes
exports to ONNX (and to int8), and the foreign weight layouts it imports. The zoo, the training
API and the exporter read these declarations (:func:`families`), so adding a family means
adding a folder. See docs/architecture.md.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from pansight.errors import ConfigError

SCENES: dict[str, Any] = {"data.mode": "multi", "data.image_size": 128}
"""The data the multi-object recipes train on by default: the synthetic world's 128 px scenes."""


@dataclass(frozen=True)
class ModelEntry:
    """One buildable model of the zoo.

    Attributes:
        task: the task the model solves (``classify``, ``localize``, ...).
        config_cls: the model's frozen config dataclass.
        builder: ``builder(config, class_names) -> model`` (the model class); does no I/O.
        description: one line for ``pansight models``.
        defaults: config fields that differ from ``config_cls``'s own defaults.
        import_weights: ``import_weights(model, state_dict) -> skipped keys``: how a
            ``torchvision_weights`` file named in the config goes into the model (``None``:
            the model's config names no such file).
    """

    task: str
    config_cls: type
    builder: Callable[[Any, list[str]], Any]
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    import_weights: Callable[[Any, Mapping[str, Tensor]], list[str]] | None = None

    def default_config(self) -> Any:
        return self.config_cls(**self.defaults)


@dataclass(frozen=True)
class Int8Spec:
    """How a model class's graph quantizes.

    Attributes:
        operators: the ONNX operator types quantized (``None``: every type onnxruntime
            quantizes).
        fp32_outputs: graph outputs whose final convolutions stay in float by default.
    """

    operators: tuple[str, ...] | None = None
    fp32_outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportSpec:
    """How one model class maps onto an ONNX graph.

    Attributes:
        outputs_cls: the model's ``Outputs`` dataclass.
        output_names: its fields that become graph outputs (the others are ``None`` when the
            predictor rebuilds the outputs).
        batch_free: those of ``output_names`` without a batch axis (the same for every image of
            the fixed input size): never given a dynamic axis, and read from one run only.
        per_image: those of ``output_names`` the outputs hold as a list of per-image tensors
            (R-CNN detections). A spec with any is an R-CNN graph
            (:mod:`pansight.export.rcnn`): one image and its size per run, any ``H`` and ``W``.
        int8: how the graph quantizes; ``None``: it does not.
        predictor: ``"module:Class"`` of the :class:`~pansight.export.OnnxPredictor` subclass
            that runs the graph when it needs more than ``predict`` (a streaming video
            model); ``""``: the plain predictor.
    """

    outputs_cls: type
    output_names: tuple[str, ...]
    batch_free: tuple[str, ...] = ()
    per_image: tuple[str, ...] = ()
    int8: Int8Spec | None = Int8Spec()
    predictor: str = ""


@dataclass(frozen=True)
class WeightFormat:
    """A state-dict layout from outside pansight that a family imports (torchvision's
    R-CNNs, the original YOLACT code's checkpoints).

    Attributes:
        description: how errors and listings name the layout.
        recognizes: whether a state dict has this layout (cheap: key names only).
        model_for: ``model_for(state_dict) -> (zoo name, default class names, config
            overrides)``: the model the weights fit.
        import_weights: ``import_weights(model, state_dict)`` loads it into the built model,
            every weight accounted for (CheckpointError naming the key otherwise).
    """

    description: str
    recognizes: Callable[[Mapping[str, Any]], bool]
    model_for: Callable[[Mapping[str, Tensor]], tuple[str, list[str], dict[str, Any]]]
    import_weights: Callable[[Any, Mapping[str, Tensor]], Any]


@dataclass(frozen=True)
class Family:
    """Everything pansight knows about one family of models.

    Attributes:
        name: the family's name (its folder's).
        models: its zoo entries by name.
        recipes: training settings (``TrainConfig`` keys, dotted) per task, for its models.
        export: how each of its model classes exports; a class absent does not export.
        weight_formats: foreign state-dict layouts it imports.
        training_views: per model class, ``view(model)``: what the trainer runs per step
            (``preprocess``, ``forward``, ``loss``) when it is not the model itself, e.g. a
            training stage on frame pairs; the model's weights are what it trains and saves.
    """

    name: str
    models: Mapping[str, ModelEntry]
    recipes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    export: Mapping[type, ExportSpec] = field(default_factory=dict)
    weight_formats: tuple[WeightFormat, ...] = ()
    training_views: Mapping[type, Callable[[Any], Any]] = field(default_factory=dict)


_FAMILIES: dict[str, Family] = {}
_discovered = False


def register(family: Family) -> Family:
    """Add ``family`` to the registry; returns it.

    Raises:
        ConfigError: another family already registered the name or one of its models.
    """
    known = {name: other.name for other in _FAMILIES.values() for name in other.models}
    clashes = [name for name in family.models if name in known]
    if family.name in _FAMILIES or clashes:
        what = f"model {clashes[0]!r}" if clashes else "the name"
        raise ConfigError(f"family {family.name!r}: {what} is already registered")
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove the family ``name`` (for families registered at run time, e.g. by tests)."""
    _FAMILIES.pop(name, None)


def families() -> list[Family]:
    """Every registered family; the first call imports the families shipped in
    ``pansight.models`` (each subpackage registers itself when imported)."""
    global _discovered
    if not _discovered:
        _discovered = True
        package = importlib.import_module("pansight.models")
        for module in pkgutil.iter_modules(package.__path__):
            if module.ispkg:
                importlib.import_module(f"pansight.models.{module.name}")
    return list(_FAMILIES.values())


def family_of_model(name: str) -> Family | None:
    """The family whose zoo holds model ``name``."""
    return next((family for family in families() if name in family.models), None)


def export_spec_of(model_cls: type) -> ExportSpec | None:
    """The export spec of ``model_cls`` (``None``: it does not export)."""
    return next((f.export[model_cls] for f in families() if model_cls in f.export), None)


def training_view(model: Any) -> Any:
    """What the trainer runs per step for ``model`` (see :attr:`Family.training_views`)."""
    for family in families():
        view = family.training_views.get(type(model))
        if view is not None:
            return view(model)
    return model


class ModelTable(Mapping[str, ModelEntry]):
    """Every family's zoo entries as one read-only mapping, always current."""

    def __getitem__(self, name: str) -> ModelEntry:
        family = family_of_model(name)
        if family is None:
            raise KeyError(name)
        return family.models[name]

    def __iter__(self) -> Iterator[str]:
        return iter([name for family in families() for name in family.models])

    def __len__(self) -> int:
        return sum(len(family.models) for family in families())


def by_depth(
    task: str,
    config_cls: type,
    builder: Callable[[Any, list[str]], Any],
    prefix: str,
    depths: tuple[int, ...],
    description: str,
    defaults: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict[str, ModelEntry]:
    """Zoo entries ``<prefix><depth>`` for ResNet ``depths``, alike but for the body:
    ``description`` is formatted with ``{depth}``; ``fields`` go to every entry."""
    return {
        f"{prefix}{depth}": ModelEntry(
            task,
            config_cls,
            builder,
            description.format(depth=depth),
            {"backbone": f"resnet{depth}", **(defaults or {})},
            **fields,
        )
        for depth in depths
    }
