"""What every pansight model is: preprocess -> forward -> loss / postprocess.

A :class:`PansightModel` is three separate steps (as in DETR): ``model(batch, targets=None) ->
Outputs``, a fixed-field dataclass of raw tensors; ``model.loss(outputs, targets) ->
dict[str, Tensor]``, named scalar losses; and ``model.postprocess(outputs, batch) ->
list[Result]``, one result per image in original-image pixels. ``model.predict(images)`` chains
the three for users.

See docs/models.md for the rules of each step.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pansight.errors import ConfigError, DataError
from pansight.structures import ImageBatch, Result, Target

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PansightModel(nn.Module):
    """Base class: holds the config and class names, normalizes pixels, and chains predict.

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
        """``(B, 3, H, W)`` images in ``[0, 1]`` -> ImageNet-normalized network input."""
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


def check_class_names(class_names: list[str]) -> None:
    """Raise ConfigError unless there is at least one class name."""
    if not class_names:
        raise ConfigError("class_names is empty; a model needs at least one class")


def resize_to_square(
    images: list[Tensor], targets: list[Target] | None, side: int
) -> tuple[ImageBatch, list[Target] | None]:
    """Resize ``(3, h, w)`` images to ``(3, side, side)`` (bilinear, antialiased) into one batch.

    Returns the :class:`ImageBatch` (``image_sizes`` all ``(side, side)``, ``original_sizes`` the
    given sizes) and the targets resized into that input frame (``None`` if not given).
    """
    for index, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != 3:
            raise DataError(f"image {index} has shape {tuple(image.shape)}; expected (3, H, W)")
    size = (side, side)
    resized = [
        F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)[0]
        for image in images
    ]
    original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    batch = ImageBatch(torch.stack(resized), [size] * len(images), original_sizes)
    if targets is None:
        return batch, None
    return batch, [target.resized(size) for target in targets]
