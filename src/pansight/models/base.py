"""What every pansight model is: preprocess -> forward -> loss / postprocess.

A model is three separate steps (as in DETR):

- ``model(batch, targets=None) -> Outputs``: a fixed-field dataclass of raw tensors whose type
  never depends on ``self.training``. ``targets`` (in the input frame) is passed only to models
  whose architecture needs them inside forward (two-stage proposal sampling); others ignore it.
- ``model.loss(outputs, targets) -> dict[str, Tensor]``: named scalar losses; targets are in the
  input frame (as returned by :meth:`PansightModel.preprocess`).
- ``model.postprocess(outputs, batch) -> list[Result]``: one result per image in original-image
  pixels.

``model.predict(images)`` chains the three for users.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pansight.structures import ImageBatch, Result, Target

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PansightModel(nn.Module):
    """Base class: holds the config and class names, normalises pixels, and chains predict.

    Subclasses set :attr:`task` and implement :meth:`preprocess`, :meth:`forward`,
    :meth:`loss` and :meth:`postprocess`.

    Attributes:
        config: the model's frozen config dataclass.
        class_names: one name per contiguous label.
    """

    task: ClassVar[str]

    def __init__(self, config: Any, class_names: list[str]) -> None:
        super().__init__()
        self.config = config
        self.class_names = list(class_names)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images in ``[0, 1]`` -> ImageNet-normalised network input."""
        return (images - self.pixel_mean) / self.pixel_std

    def preprocess(
        self, images: list[Tensor], targets: list[Target] | None = None
    ) -> tuple[ImageBatch, list[Target] | None]:
        """Resize and pad ``(3, h, w)`` images in ``[0, 1]`` as the config says.

        Returns the batch and the targets mapped into the input frame (``None`` if not given).
        """
        raise NotImplementedError

    def loss(self, outputs: Any, targets: list[Target]) -> dict[str, Tensor]:
        raise NotImplementedError

    def postprocess(self, outputs: Any, batch: ImageBatch) -> list[Result]:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images: list[Tensor] | Tensor) -> list[Result]:
        """Results for ``(3, h, w)`` images in ``[0, 1]`` (a list, or a ``(B, 3, H, W)`` tensor)."""
        was_training = self.training
        self.eval()
        try:
            batch, _ = self.preprocess([image.to(self.device) for image in images])
            return self.postprocess(self(batch), batch)
        finally:
            self.train(was_training)
