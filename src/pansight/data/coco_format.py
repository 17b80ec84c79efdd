"""Reading and checking the COCO JSON format.

The checks raise :class:`~pansight.errors.DataError` naming the file and the record or key at
fault; the COCO data sets in :mod:`pansight.data.coco` build on them.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from pansight.errors import DataError
from pansight.structures import Size

IMAGE_KEYS = ("id", "file_name", "height", "width")


def load_json(path: Path, required_keys: Sequence[str]) -> dict[str, Any]:
    """The JSON object in ``path``, which must have ``required_keys``.

    Raises:
        DataError: naming the file: missing, unreadable, invalid JSON or a missing key.
    """
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read annotation file: {error}") from None
    except ValueError as error:
        raise DataError(f"{path}: invalid JSON: {error}") from None
    require_keys(path, data, required_keys, "the top-level object")
    return data


def require_keys(path: Path, record: Any, keys: Sequence[str], where: str) -> None:
    """Raise a DataError naming ``path`` and ``where`` unless ``record`` is a dict with ``keys``."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: {where} must be a JSON object")
    for key in keys:
        if key not in record:
            raise DataError(f"{path}: {where} is missing required key '{key}'")


def parse_categories(path: Path, records: Any, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The category records sorted by id, each with ``keys`` and a unique integer id."""
    if not isinstance(records, list) or not records:
        raise DataError(f"{path}: 'categories' must be a non-empty list")
    seen = set()
    for position, category in enumerate(records):
        require_keys(path, category, keys, f"categories[{position}]")
        if not is_int(category["id"]) or category["id"] in seen:
            raise DataError(f"{path}: category id {category['id']!r} is invalid or repeated")
        seen.add(category["id"])
    return sorted(records, key=lambda category: category["id"])


def parse_images(path: Path, records: Any) -> list[dict[str, Any]]:
    """The image records, each with a unique id, a file name and a positive height and width."""
    if not isinstance(records, list) or not records:
        raise DataError(f"{path}: the image list 'images' is empty (or not a list)")
    seen = set()
    for position, image in enumerate(records):
        require_keys(path, image, IMAGE_KEYS, f"images[{position}]")
        if not is_int(image["id"]) or image["id"] in seen:
            raise DataError(f"{path}: image id {image['id']!r} is invalid or repeated")
        if not all(is_int(image[key]) and image[key] > 0 for key in ("height", "width")):
            raise DataError(f"{path}: image {image['id']}: height and width must be positive")
        seen.add(image["id"])
    return records


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """``(H, W)`` bool mask of a COCO segmentation: polygons (``[]``: empty), uncompressed RLE
    (``counts`` a list) or compressed RLE (``counts`` a string)."""
    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def require_list(path: Path, data: dict[str, Any], key: str) -> list[Any]:
    """``data[key]``, which must be a JSON list."""
    if not isinstance(data[key], list):
        raise DataError(f"{path}: '{key}' must be a list")
    return data[key]


def check_category(where: str, category_id: Any, label_of: dict[int, int]) -> None:
    """Raise a DataError naming ``where`` unless ``category_id`` is a key of ``label_of``."""
    if category_id not in label_of:
        known = ", ".join(map(str, label_of))
        raise DataError(f"{where}: unknown category_id {category_id!r} (known: {known})")


def check_box(where: str, box: Any) -> None:
    """A COCO ``bbox``: a list of 4 numbers ``[x, y, width, height]``, no negative extent."""
    if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
        raise DataError(f"{where}: bbox must be [x, y, width, height], got {box!r}")
    if box[2] < 0 or box[3] < 0:
        raise DataError(f"{where}: bbox {box} has a negative width or height")


def check_segmentation(where: str, segmentation: Any, size: Size) -> None:
    """Polygons of at least 3 points, or an RLE of the image's size whose runs cover it."""
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0):
                raise DataError(f"{where}: a polygon must list at least 3 x, y pairs")
            if not all(map(_is_number, polygon)):
                raise DataError(f"{where}: polygon coordinates must be numbers")
        return
    if not (isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation):
        raise DataError(f"{where}: segmentation must be polygons or an RLE with counts and size")
    if list(segmentation["size"]) != list(size):
        raise DataError(f"{where}: RLE size {segmentation['size']} is not the image's {list(size)}")
    counts = segmentation["counts"]
    runs = counts if isinstance(counts, list) else _compressed_counts(where, counts)
    if not all(is_int(run) and run >= 0 for run in runs) or sum(runs) != size[0] * size[1]:
        raise DataError(f"{where}: RLE counts must be run lengths adding up to height x width")


def _compressed_counts(where: str, counts: Any) -> list[int]:
    """Run lengths of a compressed RLE string (COCO's 6-bit, difference-coded run lengths)."""
    if not isinstance(counts, str):
        raise DataError(f"{where}: RLE counts must be a list or a string")
    runs: list[int] = []
    value, shift = 0, 0
    for character in counts:
        chunk = ord(character) - 48
        value |= (chunk & 0x1F) << shift
        shift += 5
        if chunk & 0x20:
            continue
        if chunk & 0x10:
            value -= 1 << shift
        runs.append(value + runs[-2] if len(runs) > 2 else value)
        value, shift = 0, 0
    if shift:
        raise DataError(f"{where}: RLE counts string ends in the middle of a number")
    return runs


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (``bool`` is not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
