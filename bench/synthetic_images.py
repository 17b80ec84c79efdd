"""Random bench images with some structure, for models that need no particular content."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def blob_images(count: int, height: int, width: int, seed: int) -> Tensor:
    """``(count, 3, height, width)`` images in ``[0, 1]``: smooth random blobs (noise at 1/32 of
    the size, upsampled) plus pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, height // 32, width // 32, generator=generator)
    smooth = nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    noise = torch.rand(count, 3, height, width, generator=generator)
    return (0.8 * smooth + 0.2 * noise).clamp(0, 1)
