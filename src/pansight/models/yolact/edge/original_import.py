"""Load weights saved by the original YolactEdge implementation into :class:`YolactEdge`.

Its state dicts are YOLACT's (:mod:`pansight.models.yolact.original_import`) with the FPN split
in two phases and the video modules; :func:`import_original_yolact_edge` maps them by prefix.
Two layouts exist, ``yolact_edge_vid`` (flow module and SPA) and ``yolact_edge_youtubevis``
(neither; every frame is a keyframe): :func:`original_edge_layout` tells them apart.

See docs/weights.md for the key mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from pansight.errors import CheckpointError
from pansight.models.yolact.edge.model import YolactEdge
from pansight.models.yolact.original_import import (
    LATERAL_KEY,
    coco_80_class_names,
    load_renamed_strictly,
    original_layout,
    original_to_pansight_key,
    pansight_to_original_key,
)

FLOW_ENCODER_KEY = "flow_net.conv1.0.0.weight"

YOUTUBE_VIS_CLASSES = (
    "person", "giant_panda", "lizard", "parrot", "skateboard", "sedan", "ape", "dog", "snake",
    "monkey", "hand", "rabbit", "duck", "cat", "cow", "fish", "train", "horse", "turtle", "bear",
    "motorbike", "giraffe", "leopard", "fox", "deer", "owl", "surfboard", "airplane", "truck",
    "zebra", "tiger", "elephant", "snowboard", "boat", "shark", "mouse", "frog", "eagle",
    "earless_seal", "tennis_racket",
)  # fmt: skip
"""YouTube-VIS 2019's 40 categories in id order, the classes of the released video models."""

_EDGE_PREFIXES = (
    ("fpn_phase_1.lat_layers.", "fpn.lat_layers."),
    ("fpn_phase_2.pred_layers.", "fpn.pred_layers."),
    ("fpn_phase_2.downsample_layers.", "fpn.downsample_layers."),
    ("flow_net_pre_convs.convs.0.", "flow_reduce."),
    ("flow_net.", "flow_net."),
    ("spa.", "spa."),
)


@dataclass(frozen=True)
class EdgeLayout:
    """What an original YolactEdge state dict holds.

    Attributes:
        backbone: ``resnet50`` or ``resnet101``.
        num_classes: object classes (without the background logit).
        with_flow: it has the flow module (``flow_net*`` weights).
        with_spa: it has SPA (``spa.*`` weights).
        flow_channels: width of the flow encoder's first level (64 in the released files).
    """

    backbone: str
    num_classes: int
    with_flow: bool
    with_spa: bool
    flow_channels: int

    def overrides(self) -> dict[str, Any]:
        """The config fields this layout fixes."""
        fields = {"backbone": self.backbone, "with_flow": self.with_flow, "with_spa": self.with_spa}
        return fields | ({"flow_channels": self.flow_channels} if self.with_flow else {})


def original_edge_to_pansight_key(key: str) -> str | None:
    """Our name of the original YolactEdge parameter ``key``, or ``None`` if it has no place."""
    for original, ours in _EDGE_PREFIXES:
        if key.startswith(original):
            return ours + key[len(original) :]
    if key.startswith("fpn."):
        return None
    return original_to_pansight_key(key)


def pansight_to_original_edge_key(key: str) -> str:
    """The original YolactEdge name of our parameter ``key`` (inverse of
    :func:`original_edge_to_pansight_key`)."""
    for original, ours in _EDGE_PREFIXES:
        if key.startswith(ours):
            return original + key[len(ours) :]
    return pansight_to_original_key(key)


def original_edge_layout(state_dict: Mapping[str, Tensor]) -> EdgeLayout:
    """The :class:`EdgeLayout` of an original YolactEdge state dict.

    Raises:
        CheckpointError: if it is not one (no two-phase FPN or no head), or its ResNet depth
            is not 50 or 101.
    """
    if LATERAL_KEY not in state_dict:
        raise CheckpointError(f"not an original YolactEdge state dict: no {LATERAL_KEY!r}")
    backbone, num_classes = original_layout(state_dict)
    with_flow = any(key.startswith(("flow_net.", "flow_net_pre_convs.")) for key in state_dict)
    with_spa = any(key.startswith("spa.") for key in state_dict)
    flow_channels = 64
    if FLOW_ENCODER_KEY in state_dict:
        flow_channels = int(state_dict[FLOW_ENCODER_KEY].shape[0])
    return EdgeLayout(backbone, num_classes, with_flow, with_spa, flow_channels)


def import_original_yolact_edge(model: YolactEdge, state_dict: Mapping[str, Tensor]) -> None:
    """Load an original YolactEdge state dict into ``model`` strictly.

    Keys ``backbone.layerN.*`` (without the ``s``), which old files carry and the original's
    loader drops, are ignored.

    Raises:
        CheckpointError: naming (by its original name) the first weight that is missing, has
            no place in the model, or has another shape than the model's.
    """
    load_renamed_strictly(
        model,
        state_dict,
        original_edge_to_pansight_key,
        pansight_to_original_edge_key,
        "YolactEdge",
    )


def is_original_yolact_edge(state_dict: Mapping[str, Any]) -> bool:
    """Whether ``state_dict`` has the original YolactEdge's layout (its two-phase FPN)."""
    return LATERAL_KEY in state_dict


def original_yolact_edge_model(
    state_dict: Mapping[str, Tensor],
) -> tuple[str, list[str], dict[str, Any]]:
    """The zoo model an original YolactEdge state dict fits (``yolact_edge_r50`` with the
    layout's backbone, flow module and SPA: :meth:`EdgeLayout.overrides`) and its default class
    names (YouTube-VIS's 40 for a 41-logit head, COCO's 80 for an 81-logit one, else
    ``class_1 .. class_K``)."""
    layout = original_edge_layout(state_dict)
    return "yolact_edge_r50", _default_class_names(layout.num_classes), layout.overrides()


def _default_class_names(num_classes: int) -> list[str]:
    for names in (list(YOUTUBE_VIS_CLASSES), coco_80_class_names()):
        if len(names) == num_classes:
            return names
    return [f"class_{label}" for label in range(1, num_classes + 1)]
