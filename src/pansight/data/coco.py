"""COCO data sets: the instances and panoptic readers, and the instances writer.

The readers check the JSON when they are built (structure, categories, boxes, segmentations;
the checks are in :mod:`pansight.data.coco_format`) and decode images, masks and panoptic PNGs
when an item is read. Anything unusable raises :class:`~pansight.errors.DataError` naming the
file and the image, annotation or key at fault.

Category ids may be any integers: a data set's labels are the positions of its categories in id
order, and its ``category_ids`` map labels back. Boxes are read as COCO ``xywh`` pixel extents
and returned as ``xyxy``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import box_convert, masks_to_boxes

from pansight.data.coco_format import (
    check_box,
    check_category,
    check_segmentation,
    decode_segmentation,
    is_int,
    load_json,
    parse_categories,
    parse_images,
    require_keys,
    require_list,
)
from pansight.data.coco_panoptic import read_panoptic_png
from pansight.data.images import read_image
from pansight.errors import DataError
from pansight.structures import IGNORE_LABEL, PanopticMap, Segment, Size, Target

INSTANCE_KEYS = ("id", "image_id", "category_id", "bbox")
PANOPTIC_KEYS = ("image_id", "file_name", "segments_info")


class CocoInstances(Dataset):
    """A COCO instances file (detection and instance segmentation) and its images.

    Items are ``(image, target)``: ``(3, H, W)`` float in ``[0, 1]`` and a
    :class:`~pansight.structures.Target` with ``boxes`` ``(N, 4)`` xyxy, ``labels`` ``(N,)``,
    ``masks`` ``(N, H, W)`` bool (``None`` when the file has no segmentations) and ``iscrowd``
    ``(N,)`` bool (``iscrowd`` or ``ignore`` set). Segmentations may be polygons, uncompressed or
    compressed RLE. Boxes of zero size are kept.

    Attributes:
        class_names: category names in id order; ``category_ids``: their ids.
        semantic_class_names, thing_flags: ``None`` (no semantic targets).
    """

    semantic_class_names = None
    thing_flags = None

    def __init__(self, annotation_file: str | Path, image_dir: str | Path) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        data = load_json(self.annotation_file, ("images", "annotations", "categories"))
        categories = parse_categories(self.annotation_file, data["categories"], ("id", "name"))
        self.class_names = [category["name"] for category in categories]
        self.category_ids = [category["id"] for category in categories]
        self._label_of = {category_id: i for i, category_id in enumerate(self.category_ids)}
        self._images = parse_images(self.annotation_file, data["images"])
        annotations = require_list(self.annotation_file, data, "annotations")
        self.has_masks = self._check_segmentation_presence(annotations)
        self._annotations_of = self._group_annotations(annotations)

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        info = self._images[index]
        image = read_checked_image(self.image_dir, info, self.annotation_file)
        annotations = self._annotations_of[info["id"]]
        height, width = info["height"], info["width"]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        labels = [self._label_of[a["category_id"]] for a in annotations]
        target = Target(
            image_id=info["id"],
            size=(height, width),
            boxes=box_convert(boxes, "xywh", "xyxy"),
            labels=torch.tensor(labels, dtype=torch.int64),
            masks=_decode_masks(annotations, height, width) if self.has_masks else None,
            iscrowd=torch.tensor([_is_crowd(a) for a in annotations], dtype=torch.bool),
        )
        return image, target

    def _check_segmentation_presence(self, annotations: list[Any]) -> bool:
        """Whether the file has masks: every annotation has a segmentation, or none has."""
        with_masks = sum(isinstance(a, dict) and "segmentation" in a for a in annotations)
        if 0 < with_masks < len(annotations):
            raise DataError(
                f"{self.annotation_file}: {with_masks} of {len(annotations)} annotations have a "
                "'segmentation'; give every annotation one, or none"
            )
        return with_masks > 0

    def _group_annotations(self, annotations: list[Any]) -> dict[int, list[dict[str, Any]]]:
        """Check every annotation and group them by image id (every image gets a list)."""
        path = self.annotation_file
        sizes = {image["id"]: (image["height"], image["width"]) for image in self._images}
        grouped: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in sizes}
        for position, annotation in enumerate(annotations):
            require_keys(path, annotation, INSTANCE_KEYS, f"annotations[{position}]")
            where = f"{path}: annotation {annotation['id']}"
            if annotation["image_id"] not in grouped:
                raise DataError(f"{where}: image_id {annotation['image_id']} is not in 'images'")
            check_category(where, annotation["category_id"], self._label_of)
            check_box(where, annotation["bbox"])
            if self.has_masks:
                check_segmentation(where, annotation["segmentation"], sizes[annotation["image_id"]])
            grouped[annotation["image_id"]].append(annotation)
        return grouped


class CocoPanoptic(Dataset):
    """A COCO panoptic JSON, its PNGs and its images.

    Items are ``(image, target)`` where the target has ``panoptic`` (segment ids from the PNG;
    segment labels over all categories), ``semantic`` ``(H, W)`` int64 (void pixels are
    ``IGNORE_LABEL``) and, for the thing segments, ``boxes`` ``(N, 4)`` xyxy pixel extents,
    ``labels`` over the thing categories, ``masks`` ``(N, H, W)`` bool and ``iscrowd``.
    Segments listed in the JSON but absent from the PNG are dropped; an image without an
    annotation record is all void.

    Attributes:
        class_names, category_ids: the thing categories in id order.
        semantic_class_names, semantic_category_ids: every category (things and stuff) in id order.
        thing_flags: per semantic class, whether it is a thing.
    """

    def __init__(
        self, annotation_file: str | Path, png_dir: str | Path, image_dir: str | Path
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.png_dir, self.image_dir = Path(png_dir), Path(image_dir)
        path = self.annotation_file
        data = load_json(path, ("images", "annotations", "categories"))
        categories = parse_categories(path, data["categories"], ("id", "name", "isthing"))
        self.semantic_class_names = [category["name"] for category in categories]
        self.semantic_category_ids = [category["id"] for category in categories]
        self.thing_flags = [bool(category["isthing"]) for category in categories]
        things = [label for label, is_thing in enumerate(self.thing_flags) if is_thing]
        self.class_names = [self.semantic_class_names[label] for label in things]
        self.category_ids = [self.semantic_category_ids[label] for label in things]
        self._label_of = {
            category_id: i for i, category_id in enumerate(self.semantic_category_ids)
        }
        self._thing_label_of = {label: i for i, label in enumerate(things)}
        self._images = parse_images(path, data["images"])
        self._annotation_of = self._index_annotations(require_list(path, data, "annotations"))

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        info = self._images[index]
        image = read_checked_image(self.image_dir, info, self.annotation_file)
        panoptic = self._read_panoptic(info)
        ids = panoptic.ids
        semantic = torch.full_like(ids, IGNORE_LABEL)
        for segment in panoptic.segments:
            semantic[ids == segment.id] = segment.label
        things = [segment for segment in panoptic.segments if segment.is_thing]
        masks = torch.zeros((0, *ids.shape), dtype=torch.bool)
        if things:
            masks = torch.stack([ids == segment.id for segment in things])
        target = Target(
            image_id=info["id"],
            size=(info["height"], info["width"]),
            boxes=mask_boxes(masks),
            labels=torch.tensor([self._thing_label_of[s.label] for s in things], dtype=torch.int64),
            masks=masks,
            iscrowd=torch.tensor([s.iscrowd for s in things], dtype=torch.bool),
            semantic=semantic,
            panoptic=panoptic,
        )
        return image, target

    def _index_annotations(self, annotations: list[Any]) -> dict[int, dict[str, Any]]:
        """Check every annotation record and index them by image id."""
        path = self.annotation_file
        image_ids = {image["id"] for image in self._images}
        indexed: dict[int, dict[str, Any]] = {}
        for position, annotation in enumerate(annotations):
            require_keys(path, annotation, PANOPTIC_KEYS, f"annotations[{position}]")
            where = f"{path}: annotation of image {annotation['image_id']}"
            if annotation["image_id"] not in image_ids:
                raise DataError(f"{where}: the image is not in 'images'")
            if annotation["image_id"] in indexed:
                raise DataError(f"{where}: the image has two annotation records")
            segment_ids = set()
            for segment in require_list(path, annotation, "segments_info"):
                require_keys(path, segment, ("id", "category_id"), f"{where}: a segment")
                if not is_int(segment["id"]) or segment["id"] <= 0 or segment["id"] in segment_ids:
                    raise DataError(f"{where}: segment id {segment['id']!r} is invalid or repeated")
                check_category(
                    f"{where}: segment {segment['id']}", segment["category_id"], self._label_of
                )
                segment_ids.add(segment["id"])
            indexed[annotation["image_id"]] = annotation
        return indexed

    def _read_panoptic(self, info: dict[str, Any]) -> PanopticMap:
        """The image's panoptic map from its PNG; segments with no pixels are dropped."""
        size = (info["height"], info["width"])
        annotation = self._annotation_of.get(info["id"])
        if annotation is None:
            return PanopticMap(torch.zeros(size, dtype=torch.int64), [])
        png_path = self.png_dir / annotation["file_name"]
        ids = read_panoptic_png(png_path)
        if ids.shape != size:
            raise DataError(f"{png_path}: PNG is {ids.shape} but image {info['id']} is {size}")
        listed = {segment["id"] for segment in annotation["segments_info"]}
        unlisted = set(np.unique(ids).tolist()) - listed - {0}
        if unlisted:
            raise DataError(
                f"{png_path}: segment ids {sorted(unlisted)} are not listed for image "
                f"{info['id']} in {self.annotation_file}"
            )
        segments = []
        for record in annotation["segments_info"]:
            area = int((ids == record["id"]).sum())
            if area:
                label = self._label_of[record["category_id"]]
                is_thing, iscrowd = self.thing_flags[label], bool(record.get("iscrowd", 0))
                segments.append(Segment(record["id"], label, is_thing, area, iscrowd=iscrowd))
        return PanopticMap(torch.from_numpy(ids), segments)


def read_checked_image(image_dir: Path, info: dict[str, Any], annotation_file: Path) -> Tensor:
    """The ``(3, H, W)`` image of record ``info``, which must have the size the record says."""
    path = image_dir / info["file_name"]
    image = read_image(path)
    if tuple(image.shape[1:]) != (info["height"], info["width"]):
        raise DataError(
            f"{path}: image is {image.shape[1]}x{image.shape[2]} but image {info['id']} in "
            f"{annotation_file} is {info['height']}x{info['width']} (height x width)"
        )
    return image


def mask_boxes(masks: Tensor) -> Tensor:
    """``(N, 4)`` float xyxy pixel extents of ``(N, H, W)`` bool masks (COCO's ``bbox`` of a
    mask): a mask over columns 3..7 gives ``x1 = 3``, ``x2 = 8``. Empty masks give zeros."""
    boxes = masks_to_boxes(masks).float()
    boxes[:, 2:] += 1
    boxes[~masks.flatten(1).any(dim=1)] = 0
    return boxes


def image_record(image_id: int, file_name: str, size: Size) -> dict[str, Any]:
    """COCO ``images`` record of an image of ``size`` ``(h, w)``."""
    return {"id": image_id, "file_name": file_name, "height": size[0], "width": size[1]}


def instance_annotations(
    target: Target, category_ids: Sequence[int], first_id: int
) -> list[dict[str, Any]]:
    """COCO ``annotations`` records of ``target``'s objects, with ids ``first_id, first_id + 1...``.

    Boxes become ``xywh``; masks become compressed RLE and give the area (else the box area).
    """
    boxes = box_convert(target.boxes, "xyxy", "xywh").tolist()
    records = []
    for i, box in enumerate(boxes):
        record = {
            "id": first_id + i,
            "image_id": target.image_id,
            "category_id": category_ids[int(target.labels[i])],
            "bbox": box,
            "area": box[2] * box[3],
            "iscrowd": int(target.iscrowd is not None and bool(target.iscrowd[i])),
        }
        if target.masks is not None:
            mask = np.asfortranarray(target.masks[i].cpu().numpy(), dtype=np.uint8)
            rle = mask_utils.encode(mask)
            record["area"] = int(mask_utils.area(rle))
            record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        records.append(record)
    return records


def write_coco_json(
    path: str | Path,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]],
) -> None:
    """Write a COCO JSON file (instances or panoptic) with these records."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(payload))


def _decode_masks(annotations: list[dict[str, Any]], height: int, width: int) -> Tensor:
    """``(N, H, W)`` bool masks of the annotations' segmentations."""
    masks = np.zeros((len(annotations), height, width), dtype=bool)
    for i, annotation in enumerate(annotations):
        masks[i] = decode_segmentation(annotation["segmentation"], height, width)
    return torch.from_numpy(masks)


def _is_crowd(annotation: dict[str, Any]) -> bool:
    """Crowd regions, and regions some COCO-style files flag ``ignore``, count as crowd."""
    return bool(annotation.get("iscrowd", 0) or annotation.get("ignore", 0))
