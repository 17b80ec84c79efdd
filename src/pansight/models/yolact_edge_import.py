"""Load weights saved by the original YolactEdge implementation into :class:`YolactEdge`.

Its state dicts are YOLACT's (:mod:`pansight.models.yolact_import` maps the backbone,
protonet, head and semantic conv) with the FPN split in two phases and the video modules:

==========================================  ==========================
original                                    pansight
==========================================  ==========================
``fpn_phase_1.lat_layers.*``                ``fpn.lat_layers.*``
``fpn_phase_2.pred_layers.*``               ``fpn.pred_layers.*``
``fpn_phase_2.downsample_layers.*``         ``fpn.downsample_layers.*``
``flow_net_pre_convs.convs.0.*``            ``flow_reduce.*``
``flow_net.*``                              ``flow_net.*``
``spa.*``                                   ``spa.*``
==========================================  ==========================

Two layouts exist: ``yolact_edge_vid`` (flow module and SPA) and ``yolact_edge_youtubevis``
(neither; every frame is a keyframe). :func:`original_edge_layout` tells them apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from pansight.errors import CheckpointError
from pansight.models.yolact_edge import YolactEdge
from pansight.models.yolact_import import (
    coco_80_class_names,
    load_renamed_strictly,
    original_layout,
    original_to_pansight_key,
    pansight_to_original_key,
    read_original_checkpoint,
)

LATERAL_KEY = "fpn_phase_1.lat_layers.0.weight"
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


def load_original_yolact_edge(
    weights: str | Path | Mapping[str, Tensor],
    class_names: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> YolactEdge:
    """A :class:`YolactEdge` holding an original YolactEdge checkpoint's weights, in eval mode.

    The zoo model is ``yolact_edge_r50`` with the layout's backbone, flow module and SPA
    (:meth:`EdgeLayout.overrides`).

    Args:
        weights: the state dict or the ``.pth`` file the original saved.
        class_names: one name per object class; by default YouTube-VIS's 40 for a 41-logit
            head, COCO's 80 for an 81-logit one, else ``class_1 .. class_K``.
        overrides: further config ``key=value`` overrides (``keyframe_interval``,
            ``input_size``, ...).

    Raises:
        CheckpointError: the file cannot be read or its weights do not fit (naming the key).
    """
    from pansight.models.zoo import build_model

    state_dict = read_original_checkpoint(weights) if isinstance(weights, str | Path) else weights
    layout = original_edge_layout(state_dict)
    if class_names is None:
        class_names = _default_class_names(layout.num_classes)
    model = build_model("yolact_edge_r50", class_names, layout.overrides() | (overrides or {}))
    import_original_yolact_edge(model, state_dict)
    return model.eval()


def _default_class_names(num_classes: int) -> list[str]:
    for names in (list(YOUTUBE_VIS_CLASSES), coco_80_class_names()):
        if len(names) == num_classes:
            return names
    return [f"class_{label}" for label in range(1, num_classes + 1)]
