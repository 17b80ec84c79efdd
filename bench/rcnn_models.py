"""The Mask R-CNNs of ``bench/rcnn_inference.py``: torchvision's ``maskrcnn_resnet50_fpn`` with
random weights, and pansight's ``mask_rcnn_r50_fpn`` holding the same weights, as built and
optimized for inference."""

from __future__ import annotations

from collections.abc import Callable

import torch
from random_weights import randomize_batch_norms
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn

from pansight.models.fuse import optimize_for_inference
from pansight.models.rcnn.model import MaskRCNN, RCNNConfig
from pansight.models.rcnn.torchvision_import import import_torchvision_rcnn

NUM_CLASSES = 90
"""COCO's 90 category slots (torchvision's ``num_classes=91`` counts the background)."""
MODELS = ("ours", "ours optimized", "torchvision")
"""``ours``: pansight's model; ``ours optimized``: its
:func:`~pansight.models.fuse.optimize_for_inference` copy (batch norms folded, channels-last);
``torchvision``: torchvision's model."""


def torchvision_model(score_thresh: float = 0.05, detections: int = 100) -> nn.Module:
    """torchvision's Mask R-CNN keeping up to ``detections`` detections per image that score
    above ``score_thresh`` (torchvision's defaults); weights are loaded separately."""
    return maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES + 1,
        box_score_thresh=score_thresh,
        box_detections_per_img=detections,
    ).eval()


def our_model(
    state_dict: dict[str, torch.Tensor], score_thresh: float, detections: int
) -> MaskRCNN:
    """pansight's Mask R-CNN with torchvision's settings, the same thresholds as
    :func:`torchvision_model` and torchvision's ``state_dict``."""
    config = RCNNConfig(
        backbone="resnet50", score_thresh=score_thresh, detections_per_img=detections
    )
    model = MaskRCNN(config, [f"class{i}" for i in range(NUM_CLASSES)]).eval()
    import_torchvision_rcnn(model, state_dict)
    return model


def build_models(
    state_dict: dict[str, torch.Tensor],
    which: tuple[str, ...],
    score_thresh: float,
    detections: int,
) -> dict[str, nn.Module]:
    """The models named in ``which`` (of :data:`MODELS`), all holding ``state_dict``."""
    models: dict[str, nn.Module] = {}
    if "ours" in which or "ours optimized" in which:
        ours = our_model(state_dict, score_thresh, detections)
        if "ours optimized" in which:
            models["ours optimized"] = optimize_for_inference(ours)
        if "ours" in which:
            models["ours"] = ours
    if "torchvision" in which:
        models["torchvision"] = torchvision_model(score_thresh, detections)
        models["torchvision"].load_state_dict(state_dict)
    return models


@torch.no_grad()
def randomize(model: nn.Module, images: list[torch.Tensor], seed: int) -> None:
    """Random weights for torchvision's ``model`` that keep activations bounded and spread the
    scores: batch norms as :func:`randomize_batch_norms` on ``images``, then the RPN objectness
    and the box classifier drawn at random."""

    def backbone_forward() -> None:
        model.backbone(model.transform(images)[0].tensors)

    randomize_batch_norms(model, model.backbone, backbone_forward, seed)
    model.rpn.head.cls_logits.weight.normal_(0, 0.1)
    model.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.05)
    model.roi_heads.box_predictor.cls_score.bias.normal_(0, 1)


def random_state_dict(images: list[torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The weights of :func:`torchvision_model` randomized on ``images`` (``(3, H, W)`` each;
    :func:`randomize`)."""
    model = torchvision_model()
    randomize(model, images, seed)
    return model.state_dict()


def call(name: str, model: nn.Module, images: list[torch.Tensor]) -> Callable[[], list]:
    """The inference call of model ``name`` on ``images``: ``model(images)`` under
    ``torch.inference_mode`` for torchvision's, ``model.predict(images)`` for ours."""
    if name == "torchvision":

        def torchvision_call() -> list[dict]:
            with torch.inference_mode():
                return model(images)

        return torchvision_call
    return lambda: model.predict(images)
