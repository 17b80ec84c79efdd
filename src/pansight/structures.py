"""The typed data that passes between pansight's layers.

Conventions (see docs/architecture.md):
- images are float RGB in ``[0, 1]``, shape ``(3, H, W)``;
- boxes are absolute ``xyxy`` float pixels (left, top, right, bottom); in a :class:`Target` they are
  in the frame of the image they belong to, in a result they are in original-image pixels;
- masks are ``bool`` with shape ``(N, H, W)``;
- labels are contiguous ``0..K-1``; data sets map their own category ids in and out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import Tensor
from torchvision.ops import box_convert

Size = tuple[int, int]
"""``(height, width)`` in pixels."""

IGNORE_LABEL = 255
"""Value of semantic-map pixels that no metric or loss counts."""


@dataclass
class ImageBatch:
    """Images resized by a model's preprocessing and padded into one tensor.

    Attributes:
        tensor: ``(B, 3, H, W)`` float images in ``[0, 1]``, zero-padded at the right and bottom.
        image_sizes: ``(h, w)`` of each image inside the padding (the resized input frame).
        original_sizes: ``(h, w)`` of each image before resizing (the original-image frame).
    """

    tensor: Tensor
    image_sizes: list[Size]
    original_sizes: list[Size]

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def to(self, device: torch.device | str) -> ImageBatch:
        return replace(self, tensor=self.tensor.to(device))

    def scale(self, index: int) -> tuple[float, float]:
        """``(sx, sy)`` taking original-image x/y pixels of image ``index`` to the input frame."""
        (h, w), (oh, ow) = self.image_sizes[index], self.original_sizes[index]
        return w / ow, h / oh

    @classmethod
    def from_images(
        cls,
        images: list[Tensor],
        original_sizes: list[Size] | None = None,
        size_divisible: int = 1,
        pad_to: Size | None = None,
    ) -> ImageBatch:
        """Pad ``(3, h, w)`` images into one batch.

        Args:
            images: already resized images, each ``(3, h, w)``.
            original_sizes: sizes before resizing; defaults to the given sizes (no resize).
            size_divisible: round the padded height and width up to a multiple of this.
            pad_to: a fixed ``(H, W)`` to pad to (must hold every image).
        """
        if not images:
            raise ValueError("ImageBatch.from_images needs at least one image")
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        if pad_to is not None:
            height, width = pad_to
        else:
            height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
            height = -(-height // size_divisible) * size_divisible
            width = -(-width // size_divisible) * size_divisible
        tensor = images[0].new_zeros((len(images), 3, height, width))
        for i, (image, (h, w)) in enumerate(zip(images, sizes)):
            tensor[i, :, :h, :w] = image
        return cls(tensor, sizes, list(original_sizes) if original_sizes else sizes)


@dataclass
class Segment:
    """One segment of a panoptic map.

    Attributes:
        id: the value of this segment's pixels in :attr:`PanopticMap.ids` (``> 0``).
        label: contiguous category label (things and stuff share one label space).
        is_thing: whether the category is countable (an instance) or stuff.
        area: number of pixels.
        score: confidence (1.0 for ground truth).
        iscrowd: a crowd region (ground truth only).
    """

    id: int
    label: int
    is_thing: bool
    area: int
    score: float = 1.0
    iscrowd: bool = False


@dataclass
class PanopticMap:
    """Every pixel assigned a segment (``ids > 0``) or void (``ids == 0``).

    Attributes:
        ids: ``(H, W)`` int64 segment ids.
        segments: one :class:`Segment` per id present.
    """

    ids: Tensor
    segments: list[Segment] = field(default_factory=list)

    def to_numpy(self) -> dict[str, Any]:
        return {"ids": self.ids.cpu().numpy(), "segments": [vars(s) for s in self.segments]}

    def to_coco(self, image_id: int, category_ids: list[int]) -> dict[str, Any]:
        """COCO panoptic ``annotation`` record (without ``file_name``)."""
        segments = [
            {
                "id": s.id,
                "category_id": category_ids[s.label],
                "area": s.area,
                "iscrowd": int(s.iscrowd),
                "score": s.score,
            }
            for s in self.segments
        ]
        return {"image_id": image_id, "segments_info": segments}


@dataclass
class Target:
    """Ground truth for one image, in that image's pixels.

    One sample of the synthetic world fills every field; real data sets fill what they have.

    Attributes:
        image_id: the data set's id of the image.
        size: ``(h, w)`` of the image.
        label: the image's class (classification, localization), or ``None``.
        box: ``(4,)`` xyxy box of the single object (localization), or ``None``.
        boxes: ``(N, 4)`` xyxy boxes of every object.
        labels: ``(N,)`` int64 contiguous labels of every object.
        masks: ``(N, H, W)`` bool visible masks, or ``None``.
        iscrowd: ``(N,)`` bool crowd flags, or ``None`` (all ``False``).
        track_ids: ``(N,)`` int64 ids stable across the frames of a video, or ``None``.
        semantic: ``(H, W)`` int64 class per pixel (``IGNORE_LABEL`` is ignored), or ``None``.
        panoptic: the panoptic ground truth, or ``None``.
    """

    image_id: int
    size: Size
    label: int | None = None
    box: Tensor | None = None
    boxes: Tensor = field(default_factory=lambda: torch.zeros((0, 4)))
    labels: Tensor = field(default_factory=lambda: torch.zeros((0,), dtype=torch.int64))
    masks: Tensor | None = None
    iscrowd: Tensor | None = None
    track_ids: Tensor | None = None
    semantic: Tensor | None = None
    panoptic: PanopticMap | None = None

    def to(self, device: torch.device | str) -> Target:
        """This target with every tensor on ``device``."""
        moved = {
            name: value.to(device)
            for name, value in vars(self).items()
            if isinstance(value, Tensor)
        }
        if self.panoptic is not None:
            moved["panoptic"] = replace(self.panoptic, ids=self.panoptic.ids.to(device))
        return replace(self, **moved)

    def resized(self, new_size: Size) -> Target:
        """This target mapped onto the same image resized to ``new_size`` ``(h, w)``.

        Boxes are scaled; masks, semantic and panoptic maps use nearest-neighbor resizing.
        """
        (h, w), (nh, nw) = self.size, new_size
        if (h, w) == (nh, nw):
            return self
        scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], device=self.boxes.device)
        return replace(
            self,
            size=(nh, nw),
            box=None if self.box is None else self.box * scale,
            boxes=self.boxes * scale,
            masks=None if self.masks is None else _resize_nearest(self.masks, new_size),
            semantic=None if self.semantic is None else _resize_nearest(self.semantic, new_size),
            panoptic=None
            if self.panoptic is None
            else replace(self.panoptic, ids=_resize_nearest(self.panoptic.ids, new_size)),
        )


def _resize_nearest(maps: Tensor, size: Size) -> Tensor:
    """Nearest-neighbor resize of ``(H, W)`` or ``(N, H, W)`` integer/bool maps."""
    batched = maps.unsqueeze(0) if maps.dim() == 2 else maps
    if batched.shape[0] == 0:
        return maps.new_zeros((0, *size))
    resized = F.interpolate(batched[None].float(), size=size, mode="nearest")[0]
    resized = resized.to(maps.dtype)
    return resized[0] if maps.dim() == 2 else resized


@dataclass
class Classification:
    """One class per image.

    Attributes:
        label: predicted contiguous label.
        score: its probability.
        scores: ``(K,)`` probabilities of every class.
    """

    label: int
    score: float
    scores: Tensor

    def to_numpy(self) -> dict[str, Any]:
        return {"label": self.label, "score": self.score, "scores": self.scores.cpu().numpy()}

    def to_coco(self, image_id: int, category_ids: list[int]) -> dict[str, Any]:
        return {"image_id": image_id, "category_id": category_ids[self.label], "score": self.score}


@dataclass
class Localization:
    """One class and one box per image.

    Attributes:
        label: predicted contiguous label.
        score: its probability.
        box: ``(4,)`` xyxy box in original-image pixels.
        scores: ``(K,)`` probabilities of every class.
    """

    label: int
    score: float
    box: Tensor
    scores: Tensor

    def to_numpy(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "score": self.score,
            "box": self.box.cpu().numpy(),
            "scores": self.scores.cpu().numpy(),
        }

    def to_coco(self, image_id: int, category_ids: list[int]) -> dict[str, Any]:
        return {
            "image_id": image_id,
            "category_id": category_ids[self.label],
            "bbox": box_convert(self.box, "xyxy", "xywh").tolist(),
            "score": self.score,
        }


@dataclass
class Detections:
    """Many objects per image.

    Attributes:
        boxes: ``(N, 4)`` xyxy boxes in original-image pixels.
        scores: ``(N,)`` confidences.
        labels: ``(N,)`` int64 contiguous labels.
        masks: ``(N, H, W)`` bool masks in original-image pixels, or ``None`` (detection only).
        track_ids: ``(N,)`` int64 instance ids that persist across video frames, or ``None``.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Tensor | None = None
    track_ids: Tensor | None = None

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def above(self, min_score: float) -> Detections:
        """The detections whose score is at least ``min_score``, in the same order."""
        keep = self.scores >= min_score
        masks = None if self.masks is None else self.masks[keep]
        track_ids = None if self.track_ids is None else self.track_ids[keep]
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], masks, track_ids)

    def to_numpy(self) -> dict[str, Any]:
        fields = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}
        fields |= {"masks": self.masks, "track_ids": self.track_ids}
        return {k: v.cpu().numpy() for k, v in fields.items() if v is not None}

    def to_coco(self, image_id: int, category_ids: list[int]) -> list[dict[str, Any]]:
        """COCO results records; masks become compressed RLE."""
        records = []
        xywh = box_convert(self.boxes, "xyxy", "xywh").tolist()
        for i in range(len(self)):
            record = {
                "image_id": image_id,
                "category_id": category_ids[int(self.labels[i])],
                "bbox": xywh[i],
                "score": float(self.scores[i]),
            }
            if self.masks is not None:
                mask = np.asfortranarray(self.masks[i].cpu().numpy().astype(np.uint8))
                rle = mask_utils.encode(mask)
                rle["counts"] = rle["counts"].decode("ascii")
                record["segmentation"] = rle
            records.append(record)
        return records


@dataclass
class SemanticMap:
    """A class for every pixel.

    Attributes:
        labels: ``(H, W)`` int64 class map in original-image pixels.
        scores: ``(K, H, W)`` per-class scores before the argmax, or ``None``.
    """

    labels: Tensor
    scores: Tensor | None = None

    def to_numpy(self) -> dict[str, Any]:
        out = {"labels": self.labels.cpu().numpy()}
        if self.scores is not None:
            out["scores"] = self.scores.cpu().numpy()
        return out

    def to_coco(self, image_id: int, category_ids: list[int]) -> dict[str, Any]:
        ids = np.asarray(category_ids)[self.labels.cpu().numpy()]
        return {"image_id": image_id, "category_map": ids}


Result = Classification | Localization | Detections | SemanticMap | PanopticMap


def on_cpu(result: Result) -> Result:
    """A copy of ``result`` with every tensor field moved to the CPU."""
    moved = {name: value.cpu() for name, value in vars(result).items() if isinstance(value, Tensor)}
    return replace(result, **moved)
