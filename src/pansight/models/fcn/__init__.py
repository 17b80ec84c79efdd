"""FCN semantic segmentation (FCN-32s/16s/8s on a ResNet body, and torchvision's dilated
layout) and the import of torchvision's FCN and ResNet weights."""

from pansight.models.fcn.model import FCN, FCNConfig, FCNOutputs
from pansight.models.fcn.torchvision_import import import_torchvision_fcn
from pansight.models.registry import SCENES, ExportSpec, Family, ModelEntry, by_depth, register

_SKIP_HEADS = {
    "32s": "class scores on c5 upsampled x32",
    "16s": "c5 and c4 scores fused, upsampled x16",
    "8s": "c5, c4 and c3 scores fused, upsampled x8",
}

FAMILY = register(
    Family(
        name="fcn",
        models={
            **{
                f"fcn{head}_r18": ModelEntry(
                    "semantic",
                    FCNConfig,
                    FCN,
                    f"FCN-{head}, ResNet-18: {what}",
                    {"backbone": "resnet18", "head": head},
                    import_torchvision_fcn,
                )
                for head, what in _SKIP_HEADS.items()
            },
            **by_depth(
                "semantic",
                FCNConfig,
                FCN,
                "fcn_resnet",
                (50, 101),
                "FCN, dilated ResNet-{depth} with auxiliary head "
                "(torchvision fcn_resnet{depth} layout)",
                {"head": "dilated", "aux_head": True, "input_size": 520},
                import_weights=import_torchvision_fcn,
            ),
        },
        recipes={
            "semantic": {
                "optimizer": "adamw",
                "lr": 4e-3,
                "weight_decay": 0.01,
                "batch_size": 16,
                **SCENES,
            }
        },
        export={FCN: ExportSpec(FCNOutputs, ("logits",))},
    )
)

__all__ = ["FAMILY", "FCN", "FCNConfig"]
