"""Image classification and single-object localization: a ResNet body with a class head, and
the same body with a grid box head on its stride-16 features."""

from pansight.models.classification.classifier import (
    Classifier,
    ClassifierConfig,
    ClassifierOutputs,
    import_torchvision_resnet,
)
from pansight.models.classification.localizer import Localizer, LocalizerConfig, LocalizerOutputs
from pansight.models.registry import ExportSpec, Family, by_depth, register

FAMILY = register(
    Family(
        name="classification",
        models={
            **by_depth(
                "classify",
                ClassifierConfig,
                Classifier,
                "classifier_r",
                (18, 34, 50, 101),
                "ResNet-{depth} classifier",
                import_weights=import_torchvision_resnet,
            ),
            **by_depth(
                "localize",
                LocalizerConfig,
                Localizer,
                "localizer_r",
                (18, 34, 50),
                "ResNet-{depth} classifier + grid box head on c4",
                import_weights=import_torchvision_resnet,
            ),
        },
        recipes={
            "classify": {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05, "batch_size": 64},
            "localize": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "batch_size": 64},
        },
        export={
            Classifier: ExportSpec(ClassifierOutputs, ("logits",)),
            Localizer: ExportSpec(LocalizerOutputs, ("logits", "boxes")),
        },
    )
)

__all__ = ["FAMILY", "Classifier", "ClassifierConfig", "Localizer", "LocalizerConfig"]
