"""Import torchvision's Faster/Mask R-CNN ResNet-FPN state dicts into :class:`MaskRCNN`.

:func:`import_torchvision_rcnn` loads both of torchvision's layouts, v1 (``*_resnet50_fpn``,
older key spellings included) and v2 (``*_resnet50_fpn_v2``); :func:`torchvision_rcnn_layout`
says which a state dict holds. Labels keep torchvision's logit layout (logit 0 the background,
logit ``k`` pansight's label ``k - 1``); :func:`coco_class_names` gives the 90 COCO class names.

See docs/weights.md for what each layout holds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

from pansight.errors import CheckpointError
from pansight.models.rcnn.model import MaskRCNN
from pansight.models.rcnn.roi_heads import HEAD_CONVS

BODY_KEY = "backbone.body.conv1.weight"
CLASS_LOGITS_KEY = "roi_heads.box_predictor.cls_score.weight"
MASK_KEY_PREFIX = "roi_heads.mask_predictor."
V2_KEY = "backbone.fpn.inner_blocks.0.1.weight"
"""A key only the v2 layout has (the batch norm after the first FPN lateral conv)."""


def _renumbered(prefix: str) -> Callable[[re.Match[str]], str]:
    """A replacement giving ``prefix`` and the matched 1-based index as a 0-based one."""
    return lambda match: f"{prefix}{int(match[1]) - 1}."


KEY_RULES: tuple[tuple[str, str | Callable[[re.Match[str]], str]], ...] = (
    (r"^backbone\.body\.", "body."),
    (r"^backbone\.fpn\.", "fpn."),
    (r"^rpn\.head\.conv\.0\.0\.", "rpn_head.conv."),
    (r"^rpn\.head\.conv\.(\d+)\.0\.", _renumbered("rpn_head.extra_convs.")),
    (r"^rpn\.head\.", "rpn_head."),
    (r"^roi_heads\.box_head\.(\d+)\.0\.", r"box_head.convs.\1."),
    (r"^roi_heads\.box_head\.(\d+)\.1\.", r"box_head.norms.\1."),
    (rf"^roi_heads\.box_head\.{HEAD_CONVS + 1}\.", "box_head.fc."),
    (r"^roi_heads\.box_head\.", "box_head."),
    (r"^roi_heads\.box_predictor\.", "box_predictor."),
    (r"^roi_heads\.mask_head\.(\d+)\.0\.", r"mask_head.convs.\1."),
    (r"^roi_heads\.mask_head\.(\d+)\.1\.", r"mask_head.norms.\1."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d+)\.", _renumbered("mask_head.convs.")),
    (r"^roi_heads\.mask_predictor\.", "mask_predictor."),
)
"""torchvision key pattern -> pansight key (first matching rule wins).

In the v2 box head, torchvision's ``box_head.{HEAD_CONVS}`` is a flatten and
``box_head.{HEAD_CONVS + 1}`` the fully connected layer."""


def torchvision_key_to_pansight(key: str) -> str | None:
    """Our name of torchvision parameter ``key``, or ``None`` if no rule maps it."""
    for pattern, replacement in KEY_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def is_torchvision_rcnn(state_dict: Mapping[str, object]) -> bool:
    """Whether ``state_dict`` looks like a torchvision Faster/Mask R-CNN's (it has the
    backbone's first conv and the class logits under torchvision's names)."""
    return BODY_KEY in state_dict and CLASS_LOGITS_KEY in state_dict


def torchvision_rcnn_layout(state_dict: Mapping[str, Tensor]) -> tuple[bool, bool, int]:
    """What a torchvision R-CNN state dict holds: ``(with_masks, v2, num_classes)``.

    ``num_classes`` counts the object classes, without the background logit.
    """
    with_masks = any(key.startswith(MASK_KEY_PREFIX) for key in state_dict)
    return with_masks, V2_KEY in state_dict, int(state_dict[CLASS_LOGITS_KEY].shape[0]) - 1


def coco_class_names() -> list[str]:
    """The 90 names of torchvision's COCO label space (its categories without the background;
    ``N/A`` marks the ten unused category ids). Read from torchvision, nothing is downloaded."""
    return list(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:])


def import_torchvision_rcnn(model: MaskRCNN, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision Faster/Mask R-CNN ResNet-FPN state dict into ``model``.

    ``model``'s config must have the layout of the state dict (v1 or v2, with or without
    masks, the same class count). Batch-norm ``num_batches_tracked`` counters, absent from
    torchvision's frozen batch norm, are set to zero.

    Raises:
        CheckpointError: naming the first key torchvision's dict has that ``model`` lacks (or
            the reverse), or whose shape differs.
    """
    own = model.state_dict()
    mapped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        ours = torchvision_key_to_pansight(key)
        if ours is None or ours not in own or ours in mapped:
            raise CheckpointError(f"torchvision weight {key!r} has no place in {model.task} model")
        if value.shape != own[ours].shape:
            raise CheckpointError(
                f"torchvision weight {key!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(own[ours].shape)} for {ours!r}"
            )
        mapped[ours] = value
    for key, value in own.items():
        if key not in mapped:
            if not key.endswith("num_batches_tracked"):
                raise CheckpointError(f"torchvision state dict has no weight for {key!r}")
            mapped[key] = torch.zeros_like(value)
    model.load_state_dict(mapped, strict=True)
