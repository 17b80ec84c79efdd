"""Load weights saved by the original YOLACT implementation into :class:`Yolact`.

The original saves ``torch.save(model.state_dict())`` with names that differ from pansight's
only by prefix (``backbone.`` -> ``body.``, ``proto_net.`` -> ``protonet.``, ...), and
:func:`import_original_yolact` maps them. The class logits keep the original's layout: logit 0
is the background and logit ``k`` pansight's label ``k - 1`` (for COCO,
:func:`coco_80_class_names`).

See docs/weights.md for the full key mapping.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pansight.errors import CheckpointError
from pansight.models.rcnn.torchvision_import import coco_class_names
from pansight.models.yolact.model import Yolact

BACKBONE_BY_STAGE3_BLOCKS = {6: "resnet50", 23: "resnet101"}
"""The ResNet whose third stage (``backbone.layers.2``) has this many blocks."""

CONF_KEY = "prediction_layers.0.conf_layer.weight"
LATERAL_KEY = "fpn_phase_1.lat_layers.0.weight"
"""A key of YolactEdge's two-phase FPN, which plain YOLACT lacks."""
BBOX_KEY = "prediction_layers.0.bbox_layer.weight"

_PREFIXES = (
    ("backbone.conv1.", "body.conv1."),
    ("backbone.bn1.", "body.bn1."),
    ("proto_net.", "protonet."),
    ("prediction_layers.0.", "head."),
    ("fpn.", "fpn."),
    ("semantic_seg_conv.", "semantic_seg_conv."),
)


def original_to_pansight_key(key: str) -> str | None:
    """Our name of the original's parameter ``key``, or ``None`` if it has no place."""
    stage = re.match(r"^backbone\.layers\.(\d+)\.", key)
    if stage:
        return f"body.layer{int(stage[1]) + 1}.{key[stage.end() :]}"
    for original, ours in _PREFIXES:
        if key.startswith(original):
            return ours + key[len(original) :]
    return None


def pansight_to_original_key(key: str) -> str:
    """The original's name of our parameter ``key`` (inverse of
    :func:`original_to_pansight_key`)."""
    stage = re.match(r"^body\.layer(\d+)\.", key)
    if stage:
        return f"backbone.layers.{int(stage[1]) - 1}.{key[stage.end() :]}"
    for original, ours in _PREFIXES:
        if key.startswith(ours):
            return original + key[len(ours) :]
    return key


def original_layout(state_dict: Mapping[str, Tensor]) -> tuple[str, int]:
    """``(backbone, num_classes)`` of an original YOLACT state dict; ``num_classes`` counts
    the object classes (without the background logit).

    Raises:
        CheckpointError: if the head's keys are missing or the ResNet depth is not 50 or 101.
    """
    for key in (CONF_KEY, BBOX_KEY):
        if key not in state_dict:
            raise CheckpointError(f"not an original YOLACT state dict: no {key!r}")
    anchors = state_dict[BBOX_KEY].shape[0] // 4
    num_classes = state_dict[CONF_KEY].shape[0] // anchors - 1
    stage3 = {
        int(m[1]) for key in state_dict if (m := re.match(r"backbone\.layers\.2\.(\d+)\.", key))
    }
    backbone = BACKBONE_BY_STAGE3_BLOCKS.get(len(stage3))
    if backbone is None:
        raise CheckpointError(
            f"backbone.layers.2 has {len(stage3)} blocks; YOLACT checkpoints of ResNet-50 (6) "
            "and ResNet-101 (23) are supported"
        )
    return backbone, num_classes


def coco_80_class_names() -> list[str]:
    """COCO's 80 object categories in id order (the original's ``COCO_CLASSES``)."""
    return [name for name in coco_class_names() if name != "N/A"]


def import_original_yolact(model: Yolact, state_dict: Mapping[str, Tensor]) -> None:
    """Load an original YOLACT state dict into ``model`` strictly.

    Keys ``backbone.layerN.*`` (without the ``s``), which old original files carry and the
    original's own loader drops, are ignored.

    Raises:
        CheckpointError: naming (by its original name) the first weight that is missing, has
            no place in the model, or has another shape than the model's.
    """
    load_renamed_strictly(
        model, state_dict, original_to_pansight_key, pansight_to_original_key, "YOLACT"
    )


def load_renamed_strictly(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    to_ours: Callable[[str], str | None],
    to_original: Callable[[str], str],
    source: str,
) -> None:
    """Load a state dict with another naming into ``model``, every weight accounted for.

    Keys ``backbone.layerN.*`` (stale copies in old original files) are skipped. ``to_ours``
    renames an original key (``None``: no counterpart), ``to_original`` the other way, for
    error messages; ``source`` names the format in them (``YOLACT``, ``YolactEdge``).

    Raises:
        CheckpointError: naming (by its original name) the first weight that is missing, has
            no place in the model, or has another shape than the model's.
    """
    own = model.state_dict()
    mapped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if re.match(r"^backbone\.layer\d", key):
            continue
        ours = to_ours(key)
        if ours is None or ours not in own:
            raise CheckpointError(f"original {source} weight {key!r} has no place in the model")
        if tuple(value.shape) != tuple(own[ours].shape):
            raise CheckpointError(
                f"original {source} weight {key!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(own[ours].shape)}"
            )
        mapped[ours] = value
    for key in own:
        if key not in mapped:
            missing = to_original(key)
            raise CheckpointError(f"original {source} state dict has no weight {missing!r}")
    model.load_state_dict(mapped, strict=True)


def is_original_yolact(state_dict: Mapping[str, Any]) -> bool:
    """Whether ``state_dict`` has the original YOLACT's layout (its prediction head's keys,
    and not YolactEdge's two-phase FPN)."""
    return CONF_KEY in state_dict and BBOX_KEY in state_dict and LATERAL_KEY not in state_dict


def original_yolact_model(
    state_dict: Mapping[str, Tensor],
) -> tuple[str, list[str], dict[str, Any]]:
    """The zoo model an original YOLACT state dict fits (``yolact_r50`` or ``yolact_r101`` by
    its ResNet depth), its default class names (COCO's 80 for an 81-logit head, else
    ``class_1 .. class_K``) and no config overrides."""
    backbone, num_classes = original_layout(state_dict)
    coco = coco_80_class_names()
    generic = [f"class_{label}" for label in range(1, num_classes + 1)]
    name = {"resnet50": "yolact_r50", "resnet101": "yolact_r101"}[backbone]
    return name, coco if num_classes == len(coco) else generic, {}


def read_original_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict in a file saved by the original YOLACT / YolactEdge code (a plain
    ``torch.save`` of a state dict); a clear CheckpointError naming the file otherwise."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: YOLACT weights file not found") from None
    except Exception as error:  # torch.load raises many types for corrupt or foreign files
        raise CheckpointError(f"{path}: cannot read YOLACT weights: {error}") from None
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    return state_dict
