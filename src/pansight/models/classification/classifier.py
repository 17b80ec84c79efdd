"""ResNet image classifier: resize to a square, ResNet body, global average pool, linear.

Also holds what the localizer shares with it: square resizing (:func:`resize_to_square`), reading
class labels out of targets (:func:`target_labels`) and importing torchvision ResNet weights
(:func:`import_torchvision_resnet`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pansight.errors import CheckpointError, ConfigError, DataError
from pansight.models.backbones import ResNetBody, check_resnet_settings
from pansight.models.base import PansightModel, check_class_names, resize_to_square
from pansight.structures import Classification, ImageBatch, Target


@dataclass(frozen=True)
class ClassifierConfig:
    """Settings of :class:`Classifier`.

    Attributes:
        backbone: ``resnet18``, ``resnet34``, ``resnet50`` or ``resnet101``.
        input_size: side of the square every image is resized to, in pixels (>= 32).
        dropout: dropout probability before the final linear layer.
        torchvision_weights: path of a torchvision ResNet state-dict file whose weights the zoo
            imports when it builds the model (``""``: random initialization).
    """

    backbone: str = "resnet18"
    input_size: int = 64
    dropout: float = 0.0
    torchvision_weights: str = ""

    def __post_init__(self) -> None:
        check_resnet_settings(self.backbone, self.input_size)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1)")


@dataclass
class ClassifierOutputs:
    """Raw classifier outputs.

    Attributes:
        logits: ``(B, K)`` unnormalized class scores.
    """

    logits: Tensor


class Classifier(PansightModel):
    """One class per image from a ResNet body.

    ``forward``: normalize pixels -> body -> global average pool of ``c5`` -> dropout -> ``fc``.
    The head is called ``fc`` and the body keeps torchvision's names, so torchvision ResNet
    weights map in directly (:func:`import_torchvision_resnet`).
    """

    task = "classify"

    def __init__(self, config: ClassifierConfig, class_names: list[str]) -> None:
        super().__init__(config, class_names)
        check_class_names(class_names)
        self.body = ResNetBody(config.backbone)
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(self.body.out_channels["c5"], self.num_classes)

    def preprocess(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> tuple[ImageBatch, list[Target] | None]:
        """Resize every image to ``input_size x input_size`` (targets follow)."""
        return resize_to_square(images, targets, self.config.input_size)

    def forward(self, batch: ImageBatch, targets: list[Target] | None = None) -> ClassifierOutputs:
        """``batch.tensor`` ``(B, 3, S, S)`` in ``[0, 1]`` -> logits ``(B, K)``. Ignores targets."""
        features = self.body(self.normalize(batch.tensor))
        pooled = features["c5"].mean(dim=(2, 3))
        return ClassifierOutputs(logits=self.fc(self.dropout(pooled)))

    def loss(self, outputs: ClassifierOutputs, targets: list[Target]) -> dict[str, Tensor]:
        """``{"cls": cross entropy}`` against each target's ``label``."""
        labels = target_labels(targets, self.num_classes).to(outputs.logits.device)
        return {"cls": F.cross_entropy(outputs.logits, labels)}

    def postprocess(self, outputs: ClassifierOutputs, batch: ImageBatch) -> list[Classification]:
        """Softmax probabilities; the most probable class per image."""
        probabilities = outputs.logits.float().softmax(dim=1)
        scores, labels = probabilities.max(dim=1)
        return [
            Classification(label=int(label), score=float(score), scores=probs)
            for label, score, probs in zip(labels, scores, probabilities)
        ]


def target_labels(targets: list[Target], num_classes: int) -> Tensor:
    """``(B,)`` int64 image labels of ``targets``.

    Raises:
        DataError: naming the image, if a target has no label or one outside ``0..K-1``.
    """
    labels = []
    for target in targets:
        if target.label is None:
            raise DataError(f"image {target.image_id}: the target has no class label")
        if not 0 <= target.label < num_classes:
            raise DataError(
                f"image {target.image_id}: label {target.label} is outside 0..{num_classes - 1}"
            )
        labels.append(target.label)
    return torch.tensor(labels, dtype=torch.int64)


def import_torchvision_resnet(model: nn.Module, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Copy a torchvision ResNet state dict into a model with a ResNet ``body`` and an ``fc`` head.

    Body keys map to ``body.<key>``. The torchvision ``fc`` is copied when its shape fits the
    model's head (same class count); otherwise it is skipped and the head keeps its weights.

    Returns:
        The torchvision keys that were not imported (the skipped ``fc.*`` keys, or ``[]``).

    Raises:
        CheckpointError: naming the key, if a key has no place in the model, has another shape,
            or a body key is missing from ``state_dict``.
    """
    own = model.state_dict()
    imported: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key, value in state_dict.items():
        is_head = key.startswith("fc.")
        own_key = key if is_head else f"body.{key}"
        if own_key not in own:
            raise CheckpointError(
                f"torchvision key {key!r} has no place in a {model.body.name} model; "
                "is this a state dict of the same ResNet depth?"
            )
        if own[own_key].shape != value.shape:
            if is_head:
                skipped.append(key)
                continue
            raise CheckpointError(
                f"torchvision key {key!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(own[own_key].shape)}"
            )
        imported[own_key] = value
    missing = [key.removeprefix("body.") for key in own if key.startswith("body.")]
    missing = [key for key in missing if key not in state_dict]
    if missing:
        raise CheckpointError(
            f"the torchvision state dict lacks {missing[0]!r} ({len(missing)} body keys missing)"
        )
    model.load_state_dict(imported, strict=False)
    return skipped
