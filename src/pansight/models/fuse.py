"""Inference-only copies of models: batch norms folded into convolutions, channels-last weights.

:func:`fold_batch_norms` folds every batch norm whose convolution's output nothing else reads
into that convolution (the same outputs up to float rounding, with one pass over each feature
map less); :func:`optimize_for_inference` also puts the weights in channels-last format. Which
convolution feeds which norm is read from the code with :mod:`torch.fx`
(:func:`conv_norm_pairs`), not guessed from module names.

See docs/models.md for the folding formula and the conditions under which a pair folds.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import TypeVar

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

FOLDABLE_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)
"""Norm layers that are a fixed per-channel affine map in evaluation."""

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def optimize_for_inference(model: ModuleT) -> ModuleT:
    """An eval-mode copy of ``model`` for fast CPU inference: batch norms folded into the
    convolutions before them (:func:`fold_batch_norms`) and 4-D weights in channels-last memory
    format, the layout oneDNN's CPU convolutions run fastest in (activations follow the
    weights). The same outputs up to float rounding; ``model`` is unchanged.

    The copy is for inference only: its folded norms are ``Identity`` and its state dict lacks
    their entries, so train and save the original.
    """
    return fold_batch_norms(model).to(memory_format=torch.channels_last)


def fold_batch_norms(model: ModuleT) -> ModuleT:
    """An eval-mode deep copy of ``model`` with every batch norm that reads only a ``Conv2d``'s
    output folded into that convolution (docs/models.md); the norm becomes
    ``Identity``. ``model`` is unchanged."""
    folded = copy.deepcopy(model).eval()
    for conv_name, norm_name in conv_norm_pairs(folded):
        conv = folded.get_submodule(conv_name)
        norm = folded.get_submodule(norm_name)
        conv.weight, conv.bias = fuse_conv_bn_weights(
            conv.weight,
            conv.bias,
            norm.running_mean,
            norm.running_var,
            norm.eps,
            norm.weight,
            norm.bias,
        )
        folded.set_submodule(norm_name, nn.Identity())
    return folded


def conv_norm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Qualified names ``(conv, norm)`` of the pairs in ``model`` that can be folded: the norm
    (eval-mode statistics) reads only the ``Conv2d``'s output, which nothing else reads."""
    pairs: list[tuple[str, str]] = []
    _collect_pairs(model, "", pairs)
    return pairs


class _NormLeafTracer(fx.Tracer):
    """fx tracer that keeps every foldable norm (torchvision's frozen one too) a single call."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, FOLDABLE_NORMS) or super().is_leaf_module(module, qualified_name)


def _collect_pairs(module: nn.Module, prefix: str, pairs: list[tuple[str, str]]) -> None:
    if not any(True for _ in module.children()):
        return
    try:
        graph = _NormLeafTracer().trace(module)
    except Exception:  # any Python fx cannot run symbolically: look one level down instead
        for name, child in module.named_children():
            _collect_pairs(child, f"{prefix}{name}.", pairs)
        return
    submodules = dict(module.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or not _has_fixed_statistics(submodules[node.target]):
            continue
        source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(submodules[source.target], nn.Conv2d)
            and len(source.users) == 1
            and calls[source.target] == calls[node.target] == 1
        ):
            pairs.append((prefix + source.target, prefix + node.target))


def _has_fixed_statistics(module: nn.Module) -> bool:
    """Whether ``module`` is a norm that, in eval mode, uses stored statistics."""
    return isinstance(module, FrozenBatchNorm2d) or (
        isinstance(module, nn.BatchNorm2d) and module.running_mean is not None
    )
