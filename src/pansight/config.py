"""Frozen-dataclass configs: ``key=value`` overrides, dict and YAML round trips.

Every config in pansight is a frozen dataclass with defaults that work. The command line
overrides fields as ``key=value`` (``data.num_train=500``; ``data=digits`` sets ``data.name``);
values are parsed by the field's annotated type. Unknown keys raise :class:`ConfigError`
listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pansight.errors import ConfigError

C = TypeVar("C")

TASKS = ("classify", "localize", "detect", "semantic", "instance", "panoptic")


@dataclass(frozen=True)
class DataConfig:
    """Which data set to train and evaluate on.

    Attributes:
        name: ``shapes`` (the embedded synthetic world), ``digits`` (scikit-learn's handwritten
            digits), ``folder`` (one sub-folder of images per class) or ``coco`` (COCO JSON).
        root: for ``folder``: the folder; for ``coco``: a folder laid out as
            ``pansight data write`` writes it: ``images/<split>/``,
            ``annotations/instances_<split>.json``, ``annotations/panoptic_<split>.json`` and
            ``annotations/panoptic_<split>/``.
        mode: for ``shapes``: ``single`` (one object per image) or ``multi``.
        image_size: for ``shapes``: the side of generated images, in pixels (models resize
            their input themselves).
        num_train: for ``shapes``: number of training images.
        num_val: for ``shapes``: number of validation images.
        val_fraction: for ``digits``/``folder``: the held-out share.
        augment: apply training augmentations (flips, color jitter).
        seed: seed of the data (generation and splits).
    """

    name: str = "shapes"
    root: str = ""
    mode: str = "single"
    image_size: int = 64
    num_train: int = 2000
    num_val: int = 300
    val_fraction: float = 0.2
    augment: bool = True
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The model's own config travels beside it (see ``pansight.models.zoo``).

    Attributes:
        task: one of ``classify``, ``localize``, ``detect``, ``semantic``, ``instance``,
            ``panoptic``.
        model: a name from ``pansight models``.
        data: the data set.
        epochs: passes over the training set.
        max_iters: stop after this many iterations (0: ``epochs`` decides).
        batch_size: images per iteration (per process under ``torchrun``).
        optimizer: ``sgd`` or ``adamw``.
        lr: peak learning rate.
        momentum: SGD momentum.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        schedule: ``cosine``, ``step`` or ``constant`` after warm-up.
        warmup_iters: linear warm-up length.
        step_milestones: for ``step``: fractions of the run where the rate drops.
        step_gamma: for ``step``: the factor at each milestone.
        amp: mixed precision: ``auto`` (float16 with loss scaling on CUDA; bfloat16 on a CPU
            that runs it natively, AVX512-BF16 or AMX, else float32), ``true`` (float16 on
            CUDA, bfloat16 on any CPU: emulated, and many times slower, where not native) or
            ``false`` (float32). ``config.yaml`` notes what ``auto`` chose.
        clip_grad: clip the gradient norm to this (0: off).
        seed: seed of the run (weights, order, augmentations).
        out: run folder: checkpoints, config, logs, pictures.
        checkpoint_every: write ``last.pt`` every this many iterations (and at the end).
        log_every: log losses every this many iterations.
        workers: data-loader worker processes.
        device: ``auto``, ``cpu`` or ``cuda``.
        resume: a checkpoint to continue from exactly, or ``""``.
        init: a pansight checkpoint whose weights the run starts from (a new run: schedule and
            optimizer start afresh), or ``""``. The same model and classes load whole (staged
            training, e.g. YolactEdge's flow stage after its image stage); another model or
            class list gives every tensor whose name and shape fit, the rest start afresh
            (warm starts and fine-tuning: a Faster R-CNN into a Mask R-CNN, a Mask R-CNN into
            a Panoptic FPN, any model's ResNet body into another's).
        freeze: modules (by state-dict name prefix, e.g. ``body`` or ``body.layer1``) whose
            weights stay as they start: no gradients, no optimizer state, and their batch
            norms keep their running statistics. With ``init``, a warm-started body can stay
            fixed while new heads learn on its features, at a third of the body's cost.
        overwrite: start afresh in an ``out`` folder that already holds a run (its checkpoints
            and logs are replaced); without it such a run is refused so nothing is lost.
    """

    task: str = "classify"
    model: str = "classifier_r18"
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 10
    max_iters: int = 0
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_iters: int = 50
    step_milestones: tuple[float, ...] = (0.7, 0.9)
    step_gamma: float = 0.1
    amp: str = "auto"
    clip_grad: float = 0.0
    seed: int = 0
    out: str = "runs/train"
    checkpoint_every: int = 200
    log_every: int = 10
    workers: int = 0
    device: str = "auto"
    resume: str = ""
    init: str = ""
    freeze: tuple[str, ...] = ()
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "amp", _amp_setting(self.amp))
        if isinstance(self.freeze, str):
            object.__setattr__(self, "freeze", tuple(filter(None, self.freeze.split(","))))
        if self.task not in TASKS:
            raise ConfigError(f"task={self.task!r} is unknown; choose one of {', '.join(TASKS)}")
        choices = {
            "optimizer": ("sgd", "adamw"),
            "schedule": ("cosine", "step", "constant"),
            "device": ("auto", "cpu", "cuda"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(
                    f"{key}={getattr(self, key)!r} is unknown; choose one of {', '.join(allowed)}"
                )
        if self.batch_size < 1 or self.epochs < 0 or self.max_iters < 0 or self.lr <= 0:
            raise ConfigError("batch_size must be >= 1, epochs and max_iters >= 0, lr > 0")


AMP_SETTINGS = ("auto", "true", "false")


def _amp_setting(value: object) -> str:
    """``amp`` as one of :data:`AMP_SETTINGS`; booleans (configs written before ``auto``
    existed) and their usual spellings are accepted."""
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return "true"
    if text in ("0", "false", "no", "off"):
        return "false"
    if text != "auto":
        raise ConfigError(f"amp={value!r} is unknown; choose one of {', '.join(AMP_SETTINGS)}")
    return text


def parse_key_values(items: list[str]) -> dict[str, str]:
    """``["a=1", "data.name=x"]`` -> ``{"a": "1", "data.name": "x"}``."""
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item!r} is not key=value")
        pairs[key.strip()] = value.strip()
    return pairs


def apply_overrides(config: C, overrides: dict[str, Any], where: str = "") -> C:
    """A copy of ``config`` with ``overrides`` (dotted keys, string or typed values) applied.

    A value given for a nested dataclass field that is not a dict sets that dataclass's
    ``name`` field (``data=digits`` means ``data.name=digits``).
    """
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    nested: dict[str, dict[str, Any]] = {}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in names:
            raise ConfigError(
                f"unknown key {where + head!r}; valid keys: {', '.join(where + n for n in names)}"
            )
        if not dataclasses.is_dataclass(hints[head]):
            if rest:
                raise ConfigError(f"key {where + key!r}: {where + head!r} has no sub-keys")
            changes[head] = _coerce(value, hints[head], where + head)
        elif rest:
            nested.setdefault(head, {})[rest] = value
        elif isinstance(value, dict):
            nested.setdefault(head, {}).update(value)
        elif dataclasses.is_dataclass(value):
            changes[head] = value
        else:
            nested.setdefault(head, {})["name"] = value
    for head, sub in nested.items():
        changes[head] = apply_overrides(getattr(config, head), sub, where + head + ".")
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"invalid value in {where or 'config'}: {error}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A plain dict (tuples become lists) fit for YAML and checkpoints."""
    return _plain(dataclasses.asdict(config))


def from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Build ``cls`` from a dict written by :func:`to_dict`; unknown keys raise ConfigError."""
    return apply_overrides(cls(), values)


def save_yaml(config: Any, path: str | Path, notes: tuple[str, ...] = ()) -> None:
    """Write ``config`` as YAML; ``notes`` become comment lines at the end (read back as
    nothing)."""
    comments = "".join(f"# {note}\n" for note in notes)
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False) + comments)


def load_yaml(cls: type[C], path: str | Path) -> C:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read config: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of keys to values")
    return from_dict(cls, values)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Parse ``value`` (often a string from the command line) as type ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in typing.get_args(hint):
                return None
        return _coerce(value, options[0], key)
    if origin is tuple:
        item_type = typing.get_args(hint)[0]
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        return tuple(_coerce(v, item_type, key) for v in value)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value) if not isinstance(value, str) else int(value, 0)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not a valid {hint.__name__}") from None
    return value
