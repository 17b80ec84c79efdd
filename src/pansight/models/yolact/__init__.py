"""YOLACT instance segmentation (prototypes x coefficients, Fast NMS) and YolactEdge (its video
variant, in ``edge/``): the models, the prediction head, the loss, and the import of the
original YOLACT / YolactEdge checkpoints."""

from typing import Any

from pansight.models.registry import (
    SCENES,
    ExportSpec,
    Family,
    Int8Spec,
    ModelEntry,
    WeightFormat,
    register,
)
from pansight.models.yolact.edge.model import YolactEdge, YolactEdgeConfig
from pansight.models.yolact.edge.original_import import (
    import_original_yolact_edge,
    is_original_yolact_edge,
    original_yolact_edge_model,
)
from pansight.models.yolact.edge.training import training_view
from pansight.models.yolact.model import Yolact, YolactConfig, YolactOutputs
from pansight.models.yolact.original_import import (
    import_original_yolact,
    is_original_yolact,
    original_yolact_model,
)

SMALL_YOLACT: dict[str, Any] = {
    "input_size": 160,
    "fpn_channels": 128,
    "proto_channels": 128,
    "anchor_scales": (20, 40, 80, 160, 320),
    "square_anchors": False,
}
"""YOLACT settings for the ResNet-18 variant: the synthetic world's things (20-60 px) at a
160-pixel input, anchors of the ratios they name (not the original's square ones)."""

YOLACT_RECIPE: dict[str, Any] = {
    "optimizer": "adamw",
    "lr": 3e-3,
    "weight_decay": 0.05,
    "batch_size": 8,
    "warmup_iters": 100,
    "clip_grad": 10.0,
    **SCENES,
}
"""YOLACT from scratch: AdamW converges in far fewer iterations than the R-CNN's SGD recipe
(mask AP50 0.72 vs 0.46 after 1,500 iterations of 4 images), bfloat16 autocast makes a CPU
iteration about 1.6 times faster, and batches of 8 use the processor better than batches of 4
(1,500 x 8 images: mask AP50 0.864 in 14.9 CPU-minutes; 3,000 x 4: 0.859 in 17.8)."""

HEAD_OUTPUTS = ("box_deltas", "class_logits", "mask_coefficients", "prototypes", "priors")
"""The fields of :class:`YolactOutputs` its graph outputs (``priors`` without a batch axis)."""

YOLACT_INT8 = Int8Spec(fp32_outputs=("box_deltas", "class_logits", "mask_coefficients"))
"""The prediction head's final convolutions stay in float: boxes and scores are sensitive."""

_SIZES = {
    18: (
        "YOLACT, ResNet-18 FPN, 160-pixel input, sized for small images (CPU training)",
        SMALL_YOLACT,
    ),
    50: ("YOLACT, ResNet-50 FPN, 550-pixel input (original yolact_resnet50 layout)", {}),
    101: ("YOLACT, ResNet-101 FPN, 550-pixel input (original yolact_base layout)", {}),
}
_EDGE_SIZES = {
    18: (
        "YolactEdge (YOLACT + flow-warped non-keyframes), ResNet-18, sized like yolact_r18",
        {**SMALL_YOLACT, "flow_channels": 32},
    ),
    50: (
        "YolactEdge, ResNet-50 FPN, 550-pixel input (original yolact_edge_vid_resnet50 layout)",
        {},
    ),
    101: ("YolactEdge, ResNet-101 FPN, 550-pixel input (original yolact_edge_vid layout)", {}),
}
"""Per ResNet depth: the zoo description and the config fields besides the body."""

FAMILY = register(
    Family(
        name="yolact",
        models={
            **{
                f"yolact_r{depth}": ModelEntry(
                    "instance", YolactConfig, Yolact, text, {"backbone": f"resnet{depth}", **fields}
                )
                for depth, (text, fields) in _SIZES.items()
            },
            **{
                f"yolact_edge_r{depth}": ModelEntry(
                    "instance",
                    YolactEdgeConfig,
                    YolactEdge,
                    text,
                    {"backbone": f"resnet{depth}", **fields},
                )
                for depth, (text, fields) in _EDGE_SIZES.items()
            },
        },
        recipes={"instance": YOLACT_RECIPE},
        export={
            Yolact: ExportSpec(
                YolactOutputs, HEAD_OUTPUTS, batch_free=("priors",), int8=YOLACT_INT8
            ),
            YolactEdge: ExportSpec(
                YolactOutputs,
                HEAD_OUTPUTS,
                batch_free=("priors",),
                int8=YOLACT_INT8,
                predictor="pansight.export.yolact_edge:YolactEdgeOnnxPredictor",
            ),
        },
        training_views={YolactEdge: training_view},
        weight_formats=(
            WeightFormat(
                "original YolactEdge",
                is_original_yolact_edge,
                original_yolact_edge_model,
                import_original_yolact_edge,
            ),
            WeightFormat(
                "original YOLACT", is_original_yolact, original_yolact_model, import_original_yolact
            ),
        ),
    )
)

__all__ = ["FAMILY", "Yolact", "YolactConfig", "YolactEdge", "YolactEdgeConfig"]
