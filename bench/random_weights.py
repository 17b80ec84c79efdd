"""Random weights that keep a network's activations bounded and its outputs varied, so that an
untrained model does the work of a trained one: batch-norm statistics measured on the bench
images, batch-norm scales and shifts drawn at random, and head layers scaled to a fixed spread
of their outputs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from torch import Tensor, nn

from pansight.models.base import PansightModel
from pansight.structures import ImageBatch

YOLACT_HEADS = {
    "head.conf_layer": (1.0, 1.0),
    "head.bbox_layer": (1.0, 0.0),
    "head.mask_layer": (1.0, 0.0),
}
"""YOLACT's (and YolactEdge's) head layers -> ``(std of the output without the bias, std of the
random bias)``: class logits, box deltas, mask coefficients."""
MASK_RCNN_HEADS = {
    "box_predictor.cls_score": (1.0, 1.0),
    "box_predictor.bbox_pred": (1.0, 0.0),
    "rpn_head.cls_logits": (1.0, 0.0),
}
"""pansight's Mask R-CNN head layers -> spreads, as :data:`YOLACT_HEADS`: class logits, box
deltas, RPN objectness."""


@torch.no_grad()
def randomize_batch_norms(
    model: nn.Module, measured: nn.Module, forward: Callable[[], object], seed: int
) -> None:
    """Seed torch with ``seed``; set every batch norm of ``model`` to the plain batch statistics
    of ``forward()`` (run with ``measured``, the part that holds the norms, in training mode),
    then draw their scales from ``U(0.5, 1.5)`` and their shifts from ``N(0, 0.2)``."""
    torch.manual_seed(seed)
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    measured.train()
    forward()
    measured.eval()
    for norm in norms:
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.2)


@torch.no_grad()
def randomize_zoo_model(
    model: PansightModel,
    images: list[Tensor],
    seed: int,
    head_spreads: dict[str, tuple[float, float]],
) -> None:
    """Random weights for a zoo model (YOLACT, YolactEdge, Mask R-CNN): batch norms as
    :func:`randomize_batch_norms` on ``images`` (``(3, H, W)`` each), then the layers of
    ``head_spreads`` (:data:`YOLACT_HEADS`, :data:`MASK_RCNN_HEADS`) scaled to their output
    spread on ``images``, with random biases."""
    batch, _ = model.preprocess(images)
    randomize_batch_norms(
        model, model.body, lambda: model.body(model.normalize(batch.tensor)), seed
    )
    outputs = layer_outputs(model, batch, list(head_spreads))
    for layer_name, (output_std, bias_std) in head_spreads.items():
        layer = model.get_submodule(layer_name)
        layer.weight.mul_(output_std / (outputs[layer_name] - layer.bias).std())
        layer.bias.normal_(0, bias_std)


def layer_outputs(model: nn.Module, batch: ImageBatch, names: list[str]) -> dict[str, Tensor]:
    """Every output of the layers ``names`` in one forward pass over ``batch``, each layer's
    outputs moved to channels-last and flattened to ``(N, channels)``."""
    outputs: dict[str, list[Tensor]] = defaultdict(list)

    def recorder(name: str) -> Callable:
        def record(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            channels = output.movedim(1, -1) if output.dim() == 4 else output
            outputs[name].append(channels.reshape(-1, output.shape[1]))

        return record

    hooks = [model.get_submodule(name).register_forward_hook(recorder(name)) for name in names]
    try:
        model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.cat(values) for name, values in outputs.items()}
