"""Import torchvision weights into an :class:`~pansight.models.fcn.model.FCN`.

:func:`import_torchvision_fcn` copies an ``fcn_resnet50`` / ``fcn_resnet101`` state dict into an
FCN with ``head="dilated"`` of the same depth, or a ResNet classifier's into the body of any FCN
(the heads keep their weights). Weights with no counterpart are dropped.

See docs/weights.md for the keys of each kind and what is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from pansight.errors import CheckpointError
from pansight.models.fcn.model import FCN

FCN_PREFIXES = {
    "backbone.": "body.",
    "classifier.": "head.classify.",
    "aux_classifier.": "aux_head.classify.",
}
"""torchvision FCN key prefix -> pansight key prefix."""

CLASS_SCORE_KEYS = ("head.classify.4.", "aux_head.classify.4.")
"""The last 1x1 convolutions, whose shape depends on the class count."""


def torchvision_key_to_pansight(key: str) -> str | None:
    """Our name of a torchvision FCN or ResNet parameter ``key`` (``None`` for a ResNet ``fc``)."""
    for prefix, ours in FCN_PREFIXES.items():
        if key.startswith(prefix):
            return ours + key.removeprefix(prefix)
    if key.startswith("fc."):
        return None
    return "body." + key


def import_torchvision_fcn(model: FCN, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Copy a torchvision FCN or ResNet state dict into ``model``.

    Returns:
        The class-score keys skipped because the class count differs (the model keeps its own
        weights there), or ``[]``.

    Raises:
        CheckpointError: naming the key, if a key has no place in ``model`` or another shape,
            or if ``model`` has weights the state dict lacks (an FCN file into a model with an
            auxiliary head the file does not have, a file of another depth or head).
    """
    own = model.state_dict()
    imported: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key, value in state_dict.items():
        ours = torchvision_key_to_pansight(key)
        if ours is None or (ours.startswith("aux_head.") and model.aux_head is None):
            continue
        if ours not in own:
            raise CheckpointError(
                f"torchvision key {key!r} has no place in this FCN ({model.config.backbone}, "
                f"head={model.config.head!r}); fcn_resnet files need head=dilated of the same depth"
            )
        if value.shape != own[ours].shape:
            if ours.startswith(CLASS_SCORE_KEYS):
                skipped.append(key)
                continue
            raise CheckpointError(
                f"torchvision key {key!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(own[ours].shape)}"
            )
        imported[ours] = value
    is_fcn_file = "backbone.conv1.weight" in state_dict
    _check_complete(own, imported, skipped, is_fcn_file)
    model.load_state_dict(imported, strict=False)
    return skipped


def _check_complete(
    own: Mapping[str, Tensor],
    imported: Mapping[str, Tensor],
    skipped: list[str],
    is_fcn_file: bool,
) -> None:
    """CheckpointError naming the first model weight the state dict should give and does not.

    An FCN file must give every weight but the skipped class scores; a ResNet file the body's.
    """
    left_alone = {torchvision_key_to_pansight(key) for key in skipped}
    required = [key for key in own if is_fcn_file or key.startswith("body.")]
    missing = [key for key in required if key not in imported and key not in left_alone]
    if not missing:
        return
    hint = "; set model.aux_head=false" if missing[0].startswith("aux_head.") else ""
    raise CheckpointError(
        f"the torchvision state dict has no weight for {missing[0]!r} "
        f"({len(missing)} missing){hint}"
    )
