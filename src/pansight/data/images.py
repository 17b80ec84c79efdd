"""Reading and writing image files as pansight tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from pansight.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_image(path: str | Path) -> Tensor:
    """Load an image file as ``(3, H, W)`` float RGB in ``[0, 1]``.

    Raises:
        DataError: naming the file, if it is missing, not an image, corrupt or truncated.
    """
    try:
        with Image.open(path) as image:
            image.load()
            array = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{path}: cannot decode image (corrupt or truncated?): {error}") from None
    return image_from_array(array)


def image_from_array(array: np.ndarray) -> Tensor:
    """``(H, W, 3)`` uint8 array -> ``(3, H, W)`` float tensor in ``[0, 1]``."""
    return torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1).float().div_(255)


def image_to_array(image: Tensor) -> np.ndarray:
    """``(3, H, W)`` float tensor in ``[0, 1]`` -> ``(H, W, 3)`` uint8 array."""
    return image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def write_image(image: Tensor, path: str | Path) -> None:
    """Save a ``(3, H, W)`` float image in ``[0, 1]`` (format from the suffix)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_to_array(image)).save(path)
