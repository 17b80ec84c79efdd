"""The COCO panoptic PNG format: segment ids stored as colours.

A COCO panoptic PNG stores in every pixel the id of its segment as ``R + 256 G + 256^2 B``
(``0``: void). The panoptic JSON lists, per image, the PNG's ``file_name`` and each segment's
``id``, ``category_id``, ``area``, ``bbox`` (``xywh`` pixel extents) and ``iscrowd``.
The data set reading these files is :class:`pansight.data.coco.CocoPanoptic`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from pansight.errors import DataError
from pansight.structures import PanopticMap

MAX_SEGMENT_ID = 256**3 - 1


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 colours -> ``(...)`` int64 segment ids ``R + 256 G + 256^2 B``."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """``(...)`` integer segment ids in ``[0, 256^3)`` -> ``(..., 3)`` uint8 colours.

    Raises:
        ValueError: an id outside that range.
    """
    ids = np.asarray(ids).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(f"panoptic segment ids must lie in [0, {MAX_SEGMENT_ID}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2], axis=-1).astype(np.uint8)


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """``(H, W)`` int64 segment ids of a panoptic PNG.

    Raises:
        DataError: naming the file, if it is missing, corrupt or truncated.
    """
    try:
        with Image.open(path) as png:
            rgb = np.asarray(png.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: panoptic PNG not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(
            f"{path}: cannot decode panoptic PNG (corrupt or truncated?): {error}"
        ) from None
    return rgb_to_id(rgb)


def write_panoptic(
    panoptic: PanopticMap, image_id: int, png_path: str | Path, category_ids: Sequence[int]
) -> dict[str, Any]:
    """Write ``panoptic.ids`` as a panoptic PNG and return the image's JSON annotation record.

    Args:
        panoptic: the map; each segment's ``label`` indexes ``category_ids``.
        image_id: the image's id in the JSON.
        png_path: where the PNG goes (folders are created).
        category_ids: the category id of each label.

    Returns:
        ``{"image_id", "file_name", "segments_info": [{"id", "category_id", "area", "bbox",
        "iscrowd"}, ...]}``, areas and boxes measured on the map.
    """
    png_path = Path(png_path)
    ids = panoptic.ids.cpu().numpy()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(id_to_rgb(ids)).save(png_path)
    segments = []
    for segment in panoptic.segments:
        rle = mask_utils.encode(np.asfortranarray(ids == segment.id, dtype=np.uint8))
        segments.append(
            {
                "id": segment.id,
                "category_id": category_ids[segment.label],
                "area": int(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(),
                "iscrowd": int(segment.iscrowd),
            }
        )
    return {"image_id": image_id, "file_name": png_path.name, "segments_info": segments}
