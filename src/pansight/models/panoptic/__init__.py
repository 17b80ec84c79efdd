"""Panoptic FPN: Mask R-CNN with a semantic FPN branch, and the fusion of its instances and
stuff into one panoptic map."""

from pansight.models.panoptic.model import PanopticFPN, PanopticFPNConfig, PanopticFPNOutputs
from pansight.models.rcnn import RCNN_INT8, RCNN_OUTPUTS, RCNN_RECIPE, SMALL_RCNN
from pansight.models.registry import ExportSpec, Family, ModelEntry, register

FAMILY = register(
    Family(
        name="panoptic",
        models={
            "panoptic_fpn_r18": ModelEntry(
                "panoptic",
                PanopticFPNConfig,
                PanopticFPN,
                "Panoptic FPN (Mask R-CNN + semantic FPN branch), ResNet-18, "
                "sized for small images",
                {"backbone": "resnet18", **SMALL_RCNN},
            ),
            "panoptic_fpn_r50": ModelEntry(
                "panoptic",
                PanopticFPNConfig,
                PanopticFPN,
                "Panoptic FPN (Mask R-CNN + semantic FPN branch), ResNet-50 FPN",
                {"backbone": "resnet50"},
            ),
        },
        recipes={"panoptic": RCNN_RECIPE},
        export={
            PanopticFPN: ExportSpec(
                PanopticFPNOutputs,
                (*RCNN_OUTPUTS, "mask_logits", "semantic_logits"),
                per_image=RCNN_OUTPUTS,
                int8=RCNN_INT8,
            )
        },
    )
)

__all__ = ["FAMILY", "PanopticFPN", "PanopticFPNConfig"]
