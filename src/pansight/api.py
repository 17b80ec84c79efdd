"""The Python API: train, load, evaluate and predict in a few lines.

>>> import pansight
>>> run = pansight.train("classify", data="digits", epochs=5, out="runs/digits")
>>> model = pansight.load("runs/digits/model.pt")
>>> results = model.predict([image])            # list[Classification]
>>> pansight.evaluate(model, data="digits")     # {"top1": ..., "top5": ...}
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pansight.config import TASKS, DataConfig, TrainConfig, apply_overrides
from pansight.data.factory import build_clips, build_dataset, wrap_for_training
from pansight.engine import evaluator, video_evaluator
from pansight.engine.checkpoint import load_checkpoint
from pansight.engine.trainer import Trainer, seed_everything
from pansight.errors import CheckpointError, ConfigError
from pansight.loading import open_model
from pansight.models.base import PansightModel
from pansight.models.registry import family_of_model
from pansight.models.transfer import transfer_weights
from pansight.models.zoo import MODELS, build_model, load_state_dict_strictly

if TYPE_CHECKING:
    from pansight.export import OnnxPredictor

DEFAULT_MODELS = {
    "classify": "classifier_r18",
    "localize": "localizer_r18",
    "detect": "faster_rcnn_r18_fpn",
    "instance": "mask_rcnn_r18_fpn",
    "semantic": "fcn8s_r18",
    "panoptic": "panoptic_fpn_r18",
}
"""The model each task trains when no ``model=`` is given."""


@dataclass
class TrainRun:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (in eval mode).
        metrics: validation metrics at the end of training.
        out: the run folder (``model.pt``, ``last.pt``, ``config.yaml``, logs).
    """

    model: PansightModel
    metrics: dict[str, float]
    out: Path


def make_train_config(task: str, overrides: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """Split ``overrides`` into a TrainConfig for ``task`` and the model's own overrides.

    Keys starting with ``model.`` go to the model's config; everything else to TrainConfig.
    TrainConfig's fields start from the recipe the chosen model's family declares for
    ``task`` (:class:`~pansight.models.registry.Family`), then ``overrides``.
    """
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is unknown; choose one of {', '.join(TASKS)}")
    if task not in DEFAULT_MODELS:
        raise ConfigError(f"task {task!r} has no trainable model yet")
    model_overrides = {k[6:]: v for k, v in overrides.items() if k.startswith("model.")}
    train_overrides = {k: v for k, v in overrides.items() if not k.startswith("model.")}
    model = str(train_overrides.get("model", DEFAULT_MODELS[task]))
    family = family_of_model(model)
    recipe = family.recipes.get(task, {}) if family else {}
    defaults = {"task": task, "model": model, **recipe}
    config = apply_overrides(TrainConfig(task=task), defaults)
    return apply_overrides(config, train_overrides), model_overrides


def train(task: str, **overrides: Any) -> TrainRun:
    """Train a model for ``task`` with TrainConfig fields (and ``model.<field>``) as overrides.

    Dotted keys are written with ``__`` in Python: ``train("classify", data__num_train=500)``.
    """

    overrides = {key.replace("__", "."): value for key, value in overrides.items()}
    config, model_overrides = make_train_config(task, overrides)
    if config.model not in MODELS or MODELS[config.model].task != task:
        raise ConfigError(f"model={config.model!r} is not a {task} model; see `pansight models`")
    prepare_run_folder(config)
    seed_everything(config.seed)
    train_set = build_dataset(config.data, "train", task)
    val_set = build_dataset(config.data, "val", task)
    class_names, label_fields = model_label_space(train_set, task)
    model = build_model(config.model, class_names, {**model_overrides, **label_fields})
    if config.init:
        print(load_initial_weights(model, config.model, config.init), file=sys.stderr)
    trainer = Trainer(
        config,
        model,
        wrap_for_training(train_set, task, config.data, config.seed),
        model_name=config.model,
        evaluate=lambda trained: evaluator.evaluate(trained, val_set, config.batch_size),
    )
    metrics = trainer.fit()
    return TrainRun(model.eval(), metrics, Path(config.out))


def load_initial_weights(model: PansightModel, model_name: str, path: str | Path) -> str:
    """Start ``model`` (built as ``model_name``) from the weights of the pansight checkpoint
    ``path``; returns a one-line account of what was loaded.

    A checkpoint of the same model and classes loads strictly (every tensor, as for staged
    training). Any other one, e.g. a Faster R-CNN for a Mask R-CNN, a Mask R-CNN for a Panoptic
    FPN, a classifier for a localizer, or a model of other classes, gives every tensor whose
    name and shape fit (:func:`pansight.models.transfer.transfer_weights`); the rest start as
    built.

    Raises:
        CheckpointError: naming ``path``, when its weights do not fit (same model) or none fits.
    """

    payload = load_checkpoint(path)
    found = (payload.get("model_name"), payload.get("class_names"))
    try:
        if found == (model_name, model.class_names):
            load_state_dict_strictly(model, payload["state_dict"])
            return f"init: all weights from {path}"
        transfer = transfer_weights(model, payload["state_dict"])
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    return f"init: {transfer.summary()} from {path} ({found[0]})"


def model_label_space(dataset: Any, task: str) -> tuple[list[str], dict[str, Any]]:
    """The class names a ``task`` model of ``dataset`` labels with, and the model-config
    fields they fix.

    Panoptic models label segments in the data set's semantic label space (things and stuff)
    and are told which classes are things (``thing_flags``); other models use ``class_names``.
    """
    if task == "panoptic":
        flags = tuple(bool(flag) for flag in dataset.thing_flags)
        return list(dataset.semantic_class_names), {"thing_flags": flags}
    return list(dataset.class_names), {}


RUN_FILES = ("last.pt", "model.pt", "metrics.jsonl")


def prepare_run_folder(config: TrainConfig) -> None:
    """Refuse to start over a previous run in ``config.out`` unless resuming or overwriting."""
    out = Path(config.out)
    existing = [name for name in RUN_FILES if (out / name).exists()]
    if not existing or config.resume:
        return
    if not config.overwrite:
        raise ConfigError(
            f"{out} already holds a run ({', '.join(existing)}); choose another out=, "
            f"continue it with resume={out / 'last.pt'}, or replace it with overwrite=true"
        )
    (out / "metrics.jsonl").unlink(missing_ok=True)
    shutil.rmtree(out / "tb", ignore_errors=True)


def load(path: str | Path) -> PansightModel | OnnxPredictor:
    """The model in the file at ``path``, in eval mode: a pansight checkpoint (``model.pt`` or
    ``last.pt``), torchvision Faster/Mask R-CNN weights, an original YOLACT or YolactEdge
    checkpoint, or for a ``.onnx`` file that ``pansight export`` wrote, an
    :class:`~pansight.export.OnnxPredictor` with the same ``predict``, ``task`` and
    ``class_names`` (see :func:`pansight.loading.open_model`)."""
    return open_model(path).model


def evaluate(
    model: PansightModel | OnnxPredictor | str | Path,
    data: str | DataConfig | None = None,
    split: str = "val",
    batch_size: int = 32,
    progress: bool = True,
    **data_overrides: Any,
) -> dict[str, float]:
    """Metrics of a model (or checkpoint or ONNX file path) on a data set.

    ``data`` defaults to the data set the checkpoint was trained on (the synthetic world for an
    in-memory model or torchvision weights); a string sets its ``name``, ``data_overrides`` its
    other fields.
    """
    opened = open_model(model)
    model, trained_on = opened.model, opened.trained_on
    if isinstance(data, DataConfig):
        trained_on = data
    elif isinstance(data, str):
        trained_on = dataclasses.replace(trained_on, name=data)
    data_config = apply_overrides(trained_on, data_overrides)
    dataset = build_dataset(data_config, split, model.task)
    data_class_names, _ = model_label_space(dataset, model.task)
    if data_class_names != model.class_names:
        raise ConfigError(
            f"data set {data_config.name!r} has classes {data_class_names}, "
            f"the model was trained on {model.class_names}"
        )
    return evaluator.evaluate(model, dataset, batch_size, progress=progress)


def evaluate_video(
    model: PansightModel | str | Path,
    data: str | DataConfig | None = None,
    split: str = "val",
    keyframe_interval: int | None = None,
    progress: bool = True,
    **data_overrides: Any,
) -> dict[str, float]:
    """Video mask AP (``mask_AP``, ``mask_AP50``, ``mask_AP75``) of an instance model (or
    checkpoint path) on the clips of ``data`` (``shapes_video`` or ``youtube_vis``; see
    :func:`pansight.data.factory.build_clips`). A YolactEdge takes a keyframe every
    ``keyframe_interval`` frames (``None``: its own setting; ``1``: every frame).

    ``data`` defaults to the synthetic world's clips at the image size the checkpoint was
    trained on; a string sets its ``name``, ``data_overrides`` its other fields.
    """
    opened = open_model(model)
    model, trained_on = opened.model, opened.trained_on
    if model.task != "instance":
        raise ConfigError(f"video mask AP needs an instance model, not a {model.task} model")
    if isinstance(data, DataConfig):
        data_config = data
    else:
        data_config = dataclasses.replace(trained_on, name=data or "shapes_video")
    data_config = apply_overrides(data_config, data_overrides)
    clips = build_clips(data_config, split)
    if list(clips.class_names) != model.class_names:
        raise ConfigError(
            f"data set {data_config.name!r} has classes {list(clips.class_names)}, "
            f"the model was trained on {model.class_names}"
        )
    return video_evaluator.evaluate_video(model, clips, keyframe_interval, progress)
