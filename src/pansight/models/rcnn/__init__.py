"""Faster R-CNN and Mask R-CNN: the model, its config, the RPN, the RoI heads, the training
targets and losses, and the import of torchvision's R-CNN weights."""

from typing import Any

from pansight.models.rcnn.config import RCNNConfig
from pansight.models.rcnn.model import FasterRCNN, MaskRCNN, RCNNOutputs
from pansight.models.rcnn.torchvision_import import (
    coco_class_names,
    import_torchvision_rcnn,
    is_torchvision_rcnn,
    torchvision_rcnn_layout,
)
from pansight.models.registry import (
    SCENES,
    ExportSpec,
    Family,
    Int8Spec,
    ModelEntry,
    WeightFormat,
    register,
)

SMALL_RCNN: dict[str, Any] = {
    "min_size": 128,
    "max_size": 256,
    "fpn_channels": 128,
    "anchor_sizes": (8, 16, 32, 64, 128),
    "rpn_pre_nms_top_n_train": 600,
    "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 100,
    "box_batch_size_per_image": 128,
    "representation_size": 256,
    "mask_head_channels": 64,
}
"""R-CNN settings for the ResNet-18 variants: images of about 128 px (the synthetic world)."""

RCNN_V2: dict[str, Any] = {
    "fpn_norm": True,
    "rpn_conv_depth": 2,
    "box_head": "conv_fc",
    "head_norm": True,
}
"""The layout of torchvision's v2 R-CNNs: batch-normed FPN and heads, two-conv RPN head."""

RCNN_RECIPE: dict[str, Any] = {
    "optimizer": "adamw",
    "lr": 1e-3,
    "weight_decay": 0.05,
    "batch_size": 4,
    "warmup_iters": 100,
    "clip_grad": 10.0,
    **SCENES,
}
"""Faster/Mask R-CNN from scratch on the synthetic world's 128 px scenes. AdamW with bfloat16
autocast reaches in 1,800 iterations (mask AP 0.705, box AP 0.80, 14.4 CPU-minutes) what SGD
0.02 in float32 reached in 3,000 (mask AP 0.685, about an hour)."""

RCNN_OUTPUTS = ("detection_boxes", "detection_scores", "detection_labels")
"""Outputs of every R-CNN graph; :class:`RCNNOutputs` holds them as per-image lists."""

RCNN_INT8 = Int8Spec(operators=("Conv",))
"""R-CNN graphs quantize their convolutions only (RoIAlign, NMS and the box MLP stay float)."""

TORCHVISION_RCNN_MODELS: dict[tuple[bool, bool], str] = {
    (False, False): "faster_rcnn_r50_fpn",
    (True, False): "mask_rcnn_r50_fpn",
    (False, True): "faster_rcnn_r50_fpn_v2",
    (True, True): "mask_rcnn_r50_fpn_v2",
}
"""The model each torchvision R-CNN layout imports into, keyed by ``(with_masks, v2)``."""


def torchvision_rcnn_model(state_dict: Any) -> tuple[str, list[str], dict[str, Any]]:
    """The zoo model a torchvision R-CNN state dict fits, and its class names: COCO's 90 for
    a 91-logit head (pansight label ``k`` is torchvision label ``k + 1``), else
    ``class_1 .. class_K``."""
    with_masks, v2, num_classes = torchvision_rcnn_layout(state_dict)
    coco = coco_class_names()
    names = [f"class_{label}" for label in range(1, num_classes + 1)]
    return (
        TORCHVISION_RCNN_MODELS[(with_masks, v2)],
        coco if num_classes == len(coco) else names,
        {},
    )


def _entry(cls: type, description: str, defaults: dict[str, Any]) -> ModelEntry:
    task = "instance" if cls is MaskRCNN else "detect"
    with_masks = {} if cls is MaskRCNN else {"with_masks": False}
    return ModelEntry(task, RCNNConfig, cls, description, {**defaults, **with_masks})


FAMILY = register(
    Family(
        name="rcnn",
        models={
            "faster_rcnn_r18_fpn": _entry(
                FasterRCNN,
                "Faster R-CNN, ResNet-18 FPN, sized for small images (CPU training)",
                {"backbone": "resnet18", **SMALL_RCNN},
            ),
            "faster_rcnn_r50_fpn": _entry(
                FasterRCNN,
                "Faster R-CNN, ResNet-50 FPN (torchvision layout)",
                {"backbone": "resnet50"},
            ),
            "mask_rcnn_r18_fpn": _entry(
                MaskRCNN,
                "Mask R-CNN, ResNet-18 FPN, sized for small images (CPU training)",
                {"backbone": "resnet18", **SMALL_RCNN},
            ),
            "mask_rcnn_r50_fpn": _entry(
                MaskRCNN, "Mask R-CNN, ResNet-50 FPN (torchvision layout)", {"backbone": "resnet50"}
            ),
            "faster_rcnn_r50_fpn_v2": _entry(
                FasterRCNN,
                "Faster R-CNN v2, ResNet-50 FPN, batch-normed heads (torchvision layout)",
                {"backbone": "resnet50", **RCNN_V2},
            ),
            "mask_rcnn_r50_fpn_v2": _entry(
                MaskRCNN,
                "Mask R-CNN v2, ResNet-50 FPN, batch-normed heads (torchvision layout)",
                {"backbone": "resnet50", **RCNN_V2},
            ),
        },
        recipes={"detect": RCNN_RECIPE, "instance": RCNN_RECIPE},
        export={
            FasterRCNN: ExportSpec(
                RCNNOutputs, RCNN_OUTPUTS, per_image=RCNN_OUTPUTS, int8=RCNN_INT8
            ),
            MaskRCNN: ExportSpec(
                RCNNOutputs, (*RCNN_OUTPUTS, "mask_logits"), per_image=RCNN_OUTPUTS, int8=RCNN_INT8
            ),
        },
        weight_formats=(
            WeightFormat(
                "torchvision Faster/Mask R-CNN",
                is_torchvision_rcnn,
                torchvision_rcnn_model,
                import_torchvision_rcnn,
            ),
        ),
    )
)

__all__ = ["FAMILY", "FasterRCNN", "MaskRCNN", "RCNNConfig", "RCNNOutputs"]
