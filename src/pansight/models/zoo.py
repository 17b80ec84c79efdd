"""Every model pansight can build, by name, and rebuilding models from checkpoints.

:data:`MODELS` is the one table the command line lists and builds from. An entry's default
config is ``config_cls(**defaults)``; ``key=value`` overrides apply on top of it.

Besides pansight checkpoints, :func:`load` reads torchvision Faster/Mask R-CNN state dicts
(:func:`import_torchvision`).
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pansight.config import TASKS, apply_overrides, from_dict
from pansight.errors import CheckpointError, ConfigError
from pansight.models.base import PansightModel
from pansight.models.classifier import Classifier, ClassifierConfig, import_torchvision_resnet
from pansight.models.fcn import FCN, FCNConfig
from pansight.models.fcn_import import import_torchvision_fcn
from pansight.models.localizer import Localizer, LocalizerConfig
from pansight.models.panoptic_fpn import PanopticFPN, PanopticFPNConfig
from pansight.models.rcnn import FasterRCNN, MaskRCNN, RCNNConfig
from pansight.models.rcnn_import import (
    BODY_KEY,
    CLASS_LOGITS_KEY,
    coco_class_names,
    import_torchvision_rcnn,
    is_torchvision_rcnn,
    torchvision_rcnn_layout,
)
from pansight.models.yolact import Yolact, YolactConfig
from pansight.models.yolact_edge import YolactEdge, YolactEdgeConfig


@dataclass(frozen=True)
class ModelEntry:
    """One buildable model.

    Attributes:
        task: the task the model solves (``classify``, ``localize``, ...).
        config_cls: the model's frozen config dataclass.
        builder: ``builder(config, class_names) -> model``; does no I/O.
        description: one line for ``pansight models``.
        defaults: config fields that differ from ``config_cls``'s own defaults.
        import_weights: ``import_weights(model, state_dict) -> skipped keys``: how a
            ``torchvision_weights`` file named in the config goes into the model.
    """

    task: str
    config_cls: type
    builder: Callable[[Any, list[str]], PansightModel]
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    import_weights: Callable[[Any, Mapping[str, Tensor]], list[str]] = import_torchvision_resnet

    def default_config(self) -> Any:
        return self.config_cls(**self.defaults)


SMALL_RCNN: dict[str, Any] = {
    "min_size": 128,
    "max_size": 256,
    "fpn_channels": 128,
    "anchor_sizes": (8, 16, 32, 64, 128),
    "rpn_pre_nms_top_n_train": 600,
    "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 100,
    "box_batch_size_per_image": 128,
    "representation_size": 256,
    "mask_head_channels": 64,
}
"""R-CNN settings for the ResNet-18 variants: images of about 128 px (the synthetic world)."""

SMALL_YOLACT: dict[str, Any] = {
    "input_size": 160,
    "fpn_channels": 128,
    "proto_channels": 128,
    "anchor_scales": (20, 40, 80, 160, 320),
    "square_anchors": False,
}
"""YOLACT settings for the ResNet-18 variant: the synthetic world's things (20-60 px) at a
160-pixel input, anchors of the ratios they name (not the original's square ones)."""

RCNN_V2: dict[str, Any] = {
    "fpn_norm": True,
    "rpn_conv_depth": 2,
    "box_head": "conv_fc",
    "head_norm": True,
}
"""The layout of torchvision's v2 R-CNNs: batch-normed FPN and heads, two-conv RPN head."""

MODELS: dict[str, ModelEntry] = {
    "classifier_r18": ModelEntry(
        "classify", ClassifierConfig, Classifier, "ResNet-18 classifier", {"backbone": "resnet18"}
    ),
    "classifier_r34": ModelEntry(
        "classify", ClassifierConfig, Classifier, "ResNet-34 classifier", {"backbone": "resnet34"}
    ),
    "classifier_r50": ModelEntry(
        "classify", ClassifierConfig, Classifier, "ResNet-50 classifier", {"backbone": "resnet50"}
    ),
    "classifier_r101": ModelEntry(
        "classify",
        ClassifierConfig,
        Classifier,
        "ResNet-101 classifier",
        {"backbone": "resnet101"},
    ),
    "localizer_r18": ModelEntry(
        "localize",
        LocalizerConfig,
        Localizer,
        "ResNet-18 classifier + grid box head on c4",
        {"backbone": "resnet18"},
    ),
    "localizer_r34": ModelEntry(
        "localize",
        LocalizerConfig,
        Localizer,
        "ResNet-34 classifier + grid box head on c4",
        {"backbone": "resnet34"},
    ),
    "localizer_r50": ModelEntry(
        "localize",
        LocalizerConfig,
        Localizer,
        "ResNet-50 classifier + grid box head on c4",
        {"backbone": "resnet50"},
    ),
    "faster_rcnn_r18_fpn": ModelEntry(
        "detect",
        RCNNConfig,
        FasterRCNN,
        "Faster R-CNN, ResNet-18 FPN, sized for small images (CPU training)",
        {"backbone": "resnet18", "with_masks": False, **SMALL_RCNN},
    ),
    "faster_rcnn_r50_fpn": ModelEntry(
        "detect",
        RCNNConfig,
        FasterRCNN,
        "Faster R-CNN, ResNet-50 FPN (torchvision layout)",
        {"backbone": "resnet50", "with_masks": False},
    ),
    "mask_rcnn_r18_fpn": ModelEntry(
        "instance",
        RCNNConfig,
        MaskRCNN,
        "Mask R-CNN, ResNet-18 FPN, sized for small images (CPU training)",
        {"backbone": "resnet18", **SMALL_RCNN},
    ),
    "mask_rcnn_r50_fpn": ModelEntry(
        "instance",
        RCNNConfig,
        MaskRCNN,
        "Mask R-CNN, ResNet-50 FPN (torchvision layout)",
        {"backbone": "resnet50"},
    ),
    "faster_rcnn_r50_fpn_v2": ModelEntry(
        "detect",
        RCNNConfig,
        FasterRCNN,
        "Faster R-CNN v2, ResNet-50 FPN, batch-normed heads (torchvision layout)",
        {"backbone": "resnet50", "with_masks": False, **RCNN_V2},
    ),
    "mask_rcnn_r50_fpn_v2": ModelEntry(
        "instance",
        RCNNConfig,
        MaskRCNN,
        "Mask R-CNN v2, ResNet-50 FPN, batch-normed heads (torchvision layout)",
        {"backbone": "resnet50", **RCNN_V2},
    ),
    "panoptic_fpn_r18": ModelEntry(
        "panoptic",
        PanopticFPNConfig,
        PanopticFPN,
        "Panoptic FPN (Mask R-CNN + semantic FPN branch), ResNet-18, sized for small images",
        {"backbone": "resnet18", **SMALL_RCNN},
    ),
    "panoptic_fpn_r50": ModelEntry(
        "panoptic",
        PanopticFPNConfig,
        PanopticFPN,
        "Panoptic FPN (Mask R-CNN + semantic FPN branch), ResNet-50 FPN",
        {"backbone": "resnet50"},
    ),
    "fcn32s_r18": ModelEntry(
        "semantic",
        FCNConfig,
        FCN,
        "FCN-32s, ResNet-18: class scores on c5 upsampled x32",
        {"backbone": "resnet18", "head": "32s"},
        import_torchvision_fcn,
    ),
    "fcn16s_r18": ModelEntry(
        "semantic",
        FCNConfig,
        FCN,
        "FCN-16s, ResNet-18: c5 and c4 scores fused, upsampled x16",
        {"backbone": "resnet18", "head": "16s"},
        import_torchvision_fcn,
    ),
    "fcn8s_r18": ModelEntry(
        "semantic",
        FCNConfig,
        FCN,
        "FCN-8s, ResNet-18: c5, c4 and c3 scores fused, upsampled x8",
        {"backbone": "resnet18", "head": "8s"},
        import_torchvision_fcn,
    ),
    "fcn_resnet50": ModelEntry(
        "semantic",
        FCNConfig,
        FCN,
        "FCN, dilated ResNet-50 with auxiliary head (torchvision fcn_resnet50 layout)",
        {"backbone": "resnet50", "head": "dilated", "aux_head": True, "input_size": 520},
        import_torchvision_fcn,
    ),
    "fcn_resnet101": ModelEntry(
        "semantic",
        FCNConfig,
        FCN,
        "FCN, dilated ResNet-101 with auxiliary head (torchvision fcn_resnet101 layout)",
        {"backbone": "resnet101", "head": "dilated", "aux_head": True, "input_size": 520},
        import_torchvision_fcn,
    ),
    "yolact_r18": ModelEntry(
        "instance",
        YolactConfig,
        Yolact,
        "YOLACT, ResNet-18 FPN, 160-pixel input, sized for small images (CPU training)",
        {"backbone": "resnet18", **SMALL_YOLACT},
    ),
    "yolact_r50": ModelEntry(
        "instance",
        YolactConfig,
        Yolact,
        "YOLACT, ResNet-50 FPN, 550-pixel input (original yolact_resnet50 layout)",
        {"backbone": "resnet50"},
    ),
    "yolact_r101": ModelEntry(
        "instance",
        YolactConfig,
        Yolact,
        "YOLACT, ResNet-101 FPN, 550-pixel input (original yolact_base layout)",
        {"backbone": "resnet101"},
    ),
    "yolact_edge_r18": ModelEntry(
        "instance",
        YolactEdgeConfig,
        YolactEdge,
        "YolactEdge (YOLACT + flow-warped non-keyframes), ResNet-18, sized like yolact_r18",
        {"backbone": "resnet18", **SMALL_YOLACT, "flow_channels": 32},
    ),
    "yolact_edge_r50": ModelEntry(
        "instance",
        YolactEdgeConfig,
        YolactEdge,
        "YolactEdge, ResNet-50 FPN, 550-pixel input (original yolact_edge_vid_resnet50 layout)",
        {"backbone": "resnet50"},
    ),
    "yolact_edge_r101": ModelEntry(
        "instance",
        YolactEdgeConfig,
        YolactEdge,
        "YolactEdge, ResNet-101 FPN, 550-pixel input (original yolact_edge_vid layout)",
        {"backbone": "resnet101"},
    ),
}

TORCHVISION_RCNN_MODELS: dict[tuple[bool, bool], str] = {
    (False, False): "faster_rcnn_r50_fpn",
    (True, False): "mask_rcnn_r50_fpn",
    (False, True): "faster_rcnn_r50_fpn_v2",
    (True, True): "mask_rcnn_r50_fpn_v2",
}
"""The model each torchvision R-CNN layout imports into, keyed by ``(with_masks, v2)``."""


def models_for_task(task: str) -> list[str]:
    """Names of the models in :data:`MODELS` that solve ``task``."""
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is unknown; choose one of {', '.join(TASKS)}")
    return [name for name, entry in MODELS.items() if entry.task == task]


def build_model(
    name: str,
    class_names: list[str],
    overrides: dict[str, Any] | None = None,
    task: str | None = None,
) -> PansightModel:
    """Build model ``name`` for ``class_names`` with ``key=value`` config ``overrides``.

    If the config names ``torchvision_weights``, the entry's ``import_weights`` imports them
    (ResNet weights by default; a head of another class count is skipped with a warning).

    Args:
        task: when given, ``name`` must be a model for this task.

    Raises:
        ConfigError: for an unknown name (listing the valid ones) or a bad override.
        CheckpointError: if ``torchvision_weights`` cannot be read or does not fit.
    """
    entry = _entry(name, task)
    config = apply_overrides(entry.default_config(), overrides or {})
    model = entry.builder(config, class_names)
    weights_path = getattr(config, "torchvision_weights", "")
    if weights_path:
        skipped = entry.import_weights(model, _read_state_dict(weights_path))
        if skipped:
            warnings.warn(
                f"{weights_path}: {', '.join(skipped)} not imported (the class count differs); "
                "the class head starts from random weights",
                stacklevel=2,
            )
    return model


def model_from_checkpoint(payload: dict[str, Any]) -> PansightModel:
    """Rebuild the model a checkpoint payload describes and load its weights strictly.

    Uses ``model_name``, ``model_config``, ``class_names`` and ``state_dict`` of the payload;
    ``torchvision_weights`` named in the config is not read again (the state dict holds them).

    Raises:
        CheckpointError: for a missing field, an unknown model name, a config that does not fit
            the model, or state-dict keys/shapes that differ from the model's.
    """
    for key in ("model_name", "model_config", "class_names", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"checkpoint has no {key!r}; is it a pansight checkpoint?")
    name = payload["model_name"]
    if name not in MODELS:
        raise CheckpointError(
            f"checkpoint model {name!r} is unknown; this pansight knows {', '.join(MODELS)}"
        )
    entry = MODELS[name]
    if payload.get("task", entry.task) != entry.task:
        raise CheckpointError(
            f"checkpoint task {payload['task']!r} does not match model {name!r} ({entry.task})"
        )
    try:
        config = from_dict(entry.config_cls, payload["model_config"])
    except ConfigError as error:
        raise CheckpointError(f"checkpoint model_config does not fit {name}: {error}") from None
    model = entry.builder(config, list(payload["class_names"]))
    load_state_dict_strictly(model, payload["state_dict"])
    return model


def load(path: str | Path) -> PansightModel:
    """The model saved at ``path``, in eval mode: a pansight checkpoint, or a torchvision
    Faster/Mask R-CNN state dict (imported by :func:`import_torchvision` with its defaults)."""
    from pansight.engine.checkpoint import load_checkpoint

    torchvision_weights = torchvision_rcnn_weights(path)
    if torchvision_weights is not None:
        try:
            return import_torchvision(torchvision_weights)
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from None
    model = model_from_checkpoint(load_checkpoint(path))
    return model.eval()


def import_torchvision(
    weights: str | Path | Mapping[str, Tensor],
    name: str | None = None,
    class_names: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> PansightModel:
    """A pansight R-CNN holding a torchvision Faster/Mask R-CNN's weights, in eval mode.

    Labels keep torchvision's logit layout: pansight label ``k`` is torchvision label
    ``k + 1`` (0 is torchvision's background).

    Args:
        weights: the state dict, or the file holding it (``torch.save(model.state_dict())``,
            or a weights file torchvision downloads).
        name: the zoo model to build; by default the one of the layout the keys show (v1 or
            v2, with or without masks, see :data:`TORCHVISION_RCNN_MODELS`).
        class_names: one name per object class; by default COCO's 90 names for a 91-logit
            model (see :func:`~pansight.models.rcnn_import.coco_class_names`), else
            ``class_1 .. class_K``.
        overrides: config ``key=value`` overrides (``score_thresh``, ``min_size``, ...).

    Raises:
        CheckpointError: the file cannot be read, is not a torchvision R-CNN state dict, or a
            weight has no place in the model or another shape (naming the key).
        ConfigError: ``name`` is not an R-CNN, or an override is bad.
    """
    state_dict = _read_state_dict(str(weights)) if isinstance(weights, str | Path) else weights
    if not is_torchvision_rcnn(state_dict):
        source = f"{weights}: not" if isinstance(weights, str | Path) else "not"
        raise CheckpointError(
            f"{source} a torchvision Faster/Mask R-CNN state dict "
            f"(no {BODY_KEY!r} or {CLASS_LOGITS_KEY!r})"
        )
    with_masks, v2, num_classes = torchvision_rcnn_layout(state_dict)
    name = name or TORCHVISION_RCNN_MODELS[(with_masks, v2)]
    if _entry(name, None).config_cls is not RCNNConfig:
        raise ConfigError(
            f"model {name!r} is not an R-CNN; torchvision R-CNN weights fit "
            f"{', '.join(TORCHVISION_RCNN_MODELS.values())}"
        )
    if class_names is None:
        coco = coco_class_names()
        names = [f"class_{label}" for label in range(1, num_classes + 1)]
        class_names = coco if num_classes == len(coco) else names
    model = build_model(name, class_names, overrides)
    import_torchvision_rcnn(model, state_dict)
    return model.eval()


def torchvision_rcnn_weights(path: str | Path) -> dict[str, Tensor] | None:
    """The state dict in the file at ``path`` if it is a torchvision Faster/Mask R-CNN's, else
    ``None`` (a pansight checkpoint, or a file the checkpoint reader reports as unreadable).

    Zip-format files are memory-mapped, so looking into a large checkpoint reads little.
    """
    try:
        contents = torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except Exception:  # not readable as torch weights: load_checkpoint names the problem
        return None
    if isinstance(contents, dict) and is_torchvision_rcnn(contents):
        return contents
    return None


def load_state_dict_strictly(model: PansightModel, state_dict: Mapping[str, Tensor]) -> None:
    """Load ``state_dict`` into ``model``; CheckpointError naming the first key that differs."""
    own = model.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(
            f"checkpoint weights do not fit the model: {first} "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys)"
        )
    for key, value in state_dict.items():
        if value.shape != own[key].shape:
            raise CheckpointError(
                f"checkpoint weight {key!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(own[key].shape)}"
            )
    model.load_state_dict(state_dict, strict=True)


def _entry(name: str, task: str | None) -> ModelEntry:
    """The entry called ``name``; ConfigError listing the valid names (for ``task``) otherwise."""
    if task is not None:
        names = models_for_task(task)
        if name not in names:
            choices = ", ".join(names) or "(none yet)"
            raise ConfigError(f"model {name!r} is not a {task} model; choose one of {choices}")
    elif name not in MODELS:
        listing = "; ".join(f"{t}: {', '.join(models_for_task(t))}" for t in _tasks_with_models())
        raise ConfigError(f"model {name!r} is unknown; choose one of {listing}")
    return MODELS[name]


def _tasks_with_models() -> list[str]:
    return [task for task in TASKS if models_for_task(task)]


def _read_state_dict(path: str) -> dict[str, Tensor]:
    """The torchvision state dict saved at ``path``; CheckpointError naming the file otherwise."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: torchvision weights file not found") from None
    except Exception as error:  # torch.load raises many types for corrupt or foreign files
        raise CheckpointError(f"{path}: cannot read torchvision weights: {error}") from None
    if not isinstance(state_dict, dict) or not all(
        isinstance(value, Tensor) for value in state_dict.values()
    ):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state_dict
