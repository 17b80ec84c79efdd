"""Import torchvision's ``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn`` state dicts."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from pansight.errors import CheckpointError
from pansight.models.rcnn import MaskRCNN

KEY_RULES = (
    (r"^backbone\.body\.", "body."),
    (r"^backbone\.fpn\.", "fpn."),
    (r"^rpn\.head\.conv\.0\.0\.", "rpn_head.conv."),
    (r"^rpn\.head\.", "rpn_head."),
    (r"^roi_heads\.box_head\.", "box_head."),
    (r"^roi_heads\.box_predictor\.", "box_predictor."),
    (r"^roi_heads\.mask_head\.(\d+)\.0\.", r"mask_head.convs.\1."),
    (r"^roi_heads\.mask_predictor\.", "mask_predictor."),
)
"""torchvision key pattern -> pansight key (first matching rule wins)."""


def torchvision_key_to_pansight(key: str) -> str | None:
    """Our name of torchvision parameter ``key``, or ``None`` if no rule maps it."""
    for pattern, replacement in KEY_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def import_torchvision_rcnn(model: MaskRCNN, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision Faster/Mask R-CNN ResNet-FPN state dict into ``model``.

    Batch-norm ``num_batches_tracked`` counters, absent from torchvision's frozen batch norm,
    are set to zero.

    Raises:
        CheckpointError: naming the first key torchvision's dict has that ``model`` lacks (or
            the reverse), or whose shape differs.
    """
    own = model.state_dict()
    mapped: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        ours = torchvision_key_to_pansight(key)
        if ours is None or ours not in own:
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
