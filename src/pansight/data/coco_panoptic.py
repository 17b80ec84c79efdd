"""The COCO panoptic PNG format: segment ids stored as colors.

A COCO panoptic PNG holds in every pixel the id of its segment as ``R + 256 G + 256^2 B``
(``0``: void); a panoptic JSON lists each image's PNG and segments. This module writes maps
(:func:`write_panoptic`) and reads any such JSON and its PNGs into
:class:`~pansight.structures.PanopticMap` (:func:`load_panoptic_json`,
:func:`read_panoptic_record`), as the panoptic metric does. The data set reading these files with
their images is :class:`pansight.data.coco.CocoPanoptic`.

See docs/data.md for the JSON layout and what prediction files need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from pansight.data.coco_format import (
    check_category,
    is_int,
    load_json,
    parse_categories,
    require_keys,
    require_list,
)
from pansight.errors import DataError
from pansight.structures import PanopticMap, Segment

MAX_SEGMENT_ID = 256**3 - 1
RECORD_KEYS = ("image_id", "file_name", "segments_info")


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 colors -> ``(...)`` int64 segment ids ``R + 256 G + 256^2 B``."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """``(...)`` integer segment ids in ``[0, 256^3)`` -> ``(..., 3)`` uint8 colors.

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


@dataclass(frozen=True)
class PanopticCategories:
    """The categories of a panoptic JSON in id order; a segment's label is its category's position.

    Attributes:
        names: category names; category_ids: their ids; thing_flags: their ``isthing``.
    """

    names: list[str]
    category_ids: list[int]
    thing_flags: list[bool]

    @property
    def label_of(self) -> dict[int, int]:
        """``category id -> label``."""
        return {category_id: label for label, category_id in enumerate(self.category_ids)}


@dataclass
class PanopticJson:
    """A checked panoptic JSON (ground truth or predictions).

    Attributes:
        path: the file.
        categories: the categories its segments' ``category_id`` refer to.
        records: the ``annotations`` records by ``image_id``.
    """

    path: Path
    categories: PanopticCategories
    records: dict[int, dict[str, Any]]


def load_panoptic_json(
    path: str | Path, categories: PanopticCategories | None = None
) -> PanopticJson:
    """Read and check a COCO panoptic JSON.

    Args:
        path: the file; it needs ``annotations`` (``image_id``, ``file_name``, ``segments_info``
            with ``id`` and ``category_id`` per segment), and ``categories`` (``id``, ``name``,
            ``isthing``) unless ``categories`` is given.
        categories: the categories to check segments against (a prediction file takes those of
            its ground truth); ``None``: the file's own.

    Raises:
        DataError: naming the file and the record at fault.
    """
    path = Path(path)
    own_categories = categories is None
    data = load_json(path, ("annotations", "categories") if own_categories else ("annotations",))
    if own_categories:
        listed = parse_categories(path, data["categories"], ("id", "name", "isthing"))
        categories = PanopticCategories(
            [category["name"] for category in listed],
            [category["id"] for category in listed],
            [bool(category["isthing"]) for category in listed],
        )
    records: dict[int, dict[str, Any]] = {}
    label_of = categories.label_of
    for position, record in enumerate(require_list(path, data, "annotations")):
        require_keys(path, record, RECORD_KEYS, f"annotations[{position}]")
        where = f"{path}: annotation of image {record['image_id']}"
        if record["image_id"] in records:
            raise DataError(f"{where}: the image has two annotation records")
        _check_segments(path, record, where, label_of)
        records[record["image_id"]] = record
    return PanopticJson(path, categories, records)


def _check_segments(path: Path, record: dict[str, Any], where: str, label_of: dict) -> None:
    """Each segment of ``record`` has a positive, unique integer id and a known category."""
    seen = set()
    for segment in require_list(path, record, "segments_info"):
        require_keys(path, segment, ("id", "category_id"), f"{where}: a segment")
        if not is_int(segment["id"]) or segment["id"] <= 0 or segment["id"] in seen:
            raise DataError(f"{where}: segment id {segment['id']!r} is invalid or repeated")
        check_category(f"{where}: segment {segment['id']}", segment["category_id"], label_of)
        seen.add(segment["id"])


def read_panoptic_record(
    record: dict[str, Any], png_dir: str | Path, categories: PanopticCategories
) -> PanopticMap:
    """The map of one checked annotation record (see :func:`load_panoptic_json`) and its PNG.

    Segment areas are counted on the PNG; listed segments without pixels are left out.

    Returns:
        ``ids`` ``(H, W)`` int64 from the PNG; segments labeled by category position, with
        ``is_thing`` from the categories and ``iscrowd`` from the record (default ``0``).

    Raises:
        DataError: naming the PNG: missing, corrupt, or with pixels of unlisted segment ids.
    """
    png_path = Path(png_dir) / record["file_name"]
    ids = read_panoptic_png(png_path)
    present, areas = np.unique(ids, return_counts=True)
    area_of = dict(zip(present.tolist(), areas.tolist()))
    listed = {segment["id"] for segment in record["segments_info"]}
    unlisted = set(area_of) - listed - {0}
    if unlisted:
        raise DataError(
            f"{png_path}: segment ids {sorted(unlisted)[:5]} are not listed for image "
            f"{record['image_id']}"
        )
    label_of = categories.label_of
    segments = []
    for segment in record["segments_info"]:
        if segment["id"] in area_of:
            label = label_of[segment["category_id"]]
            segments.append(
                Segment(
                    segment["id"],
                    label,
                    categories.thing_flags[label],
                    area_of[segment["id"]],
                    iscrowd=bool(segment.get("iscrowd", 0)),
                )
            )
    return PanopticMap(torch.from_numpy(ids), segments)
