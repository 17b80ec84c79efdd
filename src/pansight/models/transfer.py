"""Start a model from another model's weights: every tensor whose name and shape fit.

Fine-tuning and warm starts load a checkpoint of a *different* model or class list: a Faster
R-CNN's body, FPN, RPN and box head into a Mask R-CNN (whose mask head starts afresh), a Mask
R-CNN into the ``rcnn`` part of a Panoptic FPN, any ResNet body into an FCN or a YOLACT, a
model of other classes into one whose class-dependent layers then start afresh. Names are
matched after aligning one leading module name (``rcnn.body.conv1.weight`` in a Panoptic FPN is
``body.conv1.weight`` in a Mask R-CNN): of the possible alignments, the one that fits the most
tensors wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from pansight.errors import CheckpointError


@dataclass(frozen=True)
class WeightTransfer:
    """What :func:`transfer_weights` did.

    Attributes:
        loaded: the model's state-dict keys filled from the checkpoint.
        fresh: the model's keys left as built (absent from the checkpoint or shaped otherwise).
        prefixes: ``(model prefix, checkpoint prefix)`` of the alignment used (``""``: none).
    """

    loaded: tuple[str, ...]
    fresh: tuple[str, ...]
    prefixes: tuple[str, str]

    def summary(self) -> str:
        """One line: how many tensors came over and which top-level modules start afresh."""
        loaded, fresh = self._modules(self.loaded), self._modules(self.fresh)
        fresh_modules, partly = sorted(fresh - loaded), sorted(fresh & loaded)
        text = f"{len(self.loaded)} of {len(self.loaded) + len(self.fresh)} tensors loaded"
        if fresh_modules:
            text += f"; starting afresh: {', '.join(fresh_modules)}"
        if partly:
            text += f"; partly loaded: {', '.join(partly)}"
        return text

    def _modules(self, keys: tuple[str, ...]) -> set[str]:
        """The modules ``keys`` belong to, named below the model's aligned prefix."""
        prefix = self.prefixes[0]
        return {_module(key.removeprefix(prefix)) for key in keys}


def transfer_weights(model: nn.Module, state_dict: Mapping[str, Tensor]) -> WeightTransfer:
    """Copy into ``model`` every tensor of ``state_dict`` whose (aligned) name and shape fit.

    Raises:
        CheckpointError: no tensor fits (the caller names the file).
    """
    own = model.state_dict()
    best: tuple[str, str] = ("", "")
    best_pairs: dict[str, str] = {}
    for prefixes in _alignments(own, state_dict):
        pairs = _fitting_pairs(own, state_dict, *prefixes)
        if len(pairs) > len(best_pairs):
            best, best_pairs = prefixes, pairs
    if not best_pairs:
        raise CheckpointError("no weight of the checkpoint fits the model (names or shapes differ)")
    fitting = {key: state_dict[source] for key, source in best_pairs.items()}
    model.load_state_dict(fitting, strict=False)
    fresh = tuple(key for key in own if key not in best_pairs)
    return WeightTransfer(tuple(best_pairs), fresh, best)


def _alignments(own: Mapping[str, Tensor], other: Mapping[str, Tensor]) -> list[tuple[str, str]]:
    """``(model prefix, checkpoint prefix)`` pairs worth trying: none, or one leading module
    name dropped on either side."""
    own_heads = {_module(key) + "." for key in own}
    other_heads = {_module(key) + "." for key in other}
    return [("", "")] + [(head, "") for head in own_heads] + [("", head) for head in other_heads]


def _fitting_pairs(
    own: Mapping[str, Tensor], other: Mapping[str, Tensor], own_prefix: str, other_prefix: str
) -> dict[str, str]:
    """Model key -> checkpoint key, for the keys that fit under this alignment."""
    pairs = {}
    for key, value in own.items():
        if not key.startswith(own_prefix):
            continue
        source = other_prefix + key[len(own_prefix) :]
        if source in other and other[source].shape == value.shape:
            pairs[key] = source
    return pairs


def _module(key: str) -> str:
    return key.partition(".")[0]
