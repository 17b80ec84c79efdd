"""Augmentations on torchvision.transforms.v2, resize helpers, and seeded augmentation.

:func:`apply_transform` runs any v2 transform on an ``(image, Target)`` pair: the image, boxes
and every map move together, so a flip or crop keeps the target in the new image's pixels.
:func:`train_augment` and :func:`eval_transform` are the presets the trainer uses;
:class:`SeededAugment` makes augmentation a pure function of ``(seed, epoch, index)``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pansight.config import TASKS
from pansight.errors import ConfigError
from pansight.structures import IGNORE_LABEL, PanopticMap, Size, Target


def apply_transform(
    transform: v2.Transform, image: Tensor, target: Target
) -> tuple[Tensor, Target]:
    """Run a v2 ``transform`` on an image and its target together.

    Boxes are clamped to the new image; instances whose box became empty (a crop removed them)
    are dropped from ``boxes``, ``labels``, ``masks``, ``iscrowd`` and ``track_ids`` alike. The
    single ``box`` (localization) is clamped but kept. Masks and the semantic and panoptic maps
    move with nearest-neighbor sampling; pixels the transform invents (padding, corners of a
    rotation) become ``IGNORE_LABEL`` in ``semantic``, void (``0``) in ``panoptic`` and ``False``
    in ``masks``, whatever fill the transform uses (a second map of ones, moved alongside, tells
    real pixels from invented ones; its fill must not be ``1``). Panoptic segments that left the
    image are dropped and the areas of the others recounted.

    Args:
        transform: a torchvision.transforms.v2 transform.
        image: ``(3, H, W)`` float RGB in ``[0, 1]``.
        target: ground truth in ``image``'s pixels.

    Returns:
        ``(image, target)``: the new ``(3, H', W')`` image and a new target in its pixels.
    """
    inputs, panoptic_ids = _wrap(image, target)
    outputs = transform(inputs)
    new_image = outputs["image"].as_subclass(Tensor)
    size = (int(new_image.shape[-2]), int(new_image.shape[-1]))
    real = outputs["real"].as_subclass(Tensor) == 1 if "real" in outputs else None
    new_target = replace(target, size=size, box=_unwrap_box(outputs))
    new_target = _unwrap_instances(new_target, outputs, real)
    if target.semantic is not None:
        semantic = outputs["semantic"].as_subclass(Tensor)
        new_target.semantic = semantic.masked_fill(~real, IGNORE_LABEL)
    if target.panoptic is not None:
        new_target.panoptic = _unwrap_panoptic(target.panoptic, panoptic_ids, outputs, real)
    return new_image, new_target


def _wrap(image: Tensor, target: Target) -> tuple[dict[str, Any], Tensor | None]:
    """The v2 inputs (tv_tensors) of an image and target, and the panoptic ids in dense order.

    Panoptic ids travel as dense indices into the returned ids, because v2 resamples maps in
    float32 which cannot hold every int64 id exactly.
    """
    canvas = (int(image.shape[-2]), int(image.shape[-1]))
    inputs: dict[str, Any] = {
        "image": tv_tensors.Image(image),
        "boxes": tv_tensors.BoundingBoxes(target.boxes, format="XYXY", canvas_size=canvas),
    }
    if target.box is not None:
        inputs["box"] = tv_tensors.BoundingBoxes(
            target.box[None], format="XYXY", canvas_size=canvas
        )
    if target.masks is not None:
        inputs["masks"] = tv_tensors.Mask(target.masks)
    if target.semantic is not None:
        inputs["semantic"] = tv_tensors.Mask(target.semantic)
    panoptic_ids = None
    if target.panoptic is not None:
        panoptic_ids, dense = torch.unique(target.panoptic.ids, return_inverse=True)
        inputs["panoptic"] = tv_tensors.Mask(dense)
    if target.masks is not None or target.semantic is not None or target.panoptic is not None:
        inputs["real"] = tv_tensors.Mask(torch.ones(canvas, dtype=torch.uint8))
    return inputs, panoptic_ids


def _unwrap_box(outputs: dict[str, Any]) -> Tensor | None:
    if "box" not in outputs:
        return None
    return _clamp(outputs["box"])[0]


def _clamp(boxes: tv_tensors.BoundingBoxes) -> Tensor:
    """``(N, 4)`` xyxy boxes clamped to their canvas, as a plain tensor."""
    return TF.clamp_bounding_boxes(boxes).as_subclass(Tensor)


def _unwrap_instances(target: Target, outputs: dict[str, Any], real: Tensor | None) -> Target:
    """``target`` with the transformed per-instance fields, empty boxes dropped."""
    boxes = _clamp(outputs["boxes"])
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    masks = None
    if target.masks is not None:
        masks = (outputs["masks"].as_subclass(Tensor) != 0) & real
        masks = masks[keep]
    return replace(
        target,
        boxes=boxes[keep],
        labels=target.labels[keep],
        masks=masks,
        iscrowd=None if target.iscrowd is None else target.iscrowd[keep],
        track_ids=None if target.track_ids is None else target.track_ids[keep],
    )


def _unwrap_panoptic(
    panoptic: PanopticMap, panoptic_ids: Tensor, outputs: dict[str, Any], real: Tensor
) -> PanopticMap:
    """The moved id map (invented pixels void) with segments that remain, areas recounted."""
    dense = outputs["panoptic"].as_subclass(Tensor).masked_fill(~real, 0)
    ids = panoptic_ids[dense].masked_fill(~real, 0)
    present, counts = torch.unique(ids, return_counts=True)
    areas = dict(zip(present.tolist(), counts.tolist()))
    segments = [replace(s, area=areas[s.id]) for s in panoptic.segments if s.id in areas]
    return PanopticMap(ids=ids, segments=segments)


def train_augment(
    task: str, image_size: int | None = None, horizontal_flip: bool = True
) -> v2.Compose:
    """Cheap training augmentations for ``task``. (No hue jitter: turning hues costs as much
    as all the rest together.)

    - ``classify``: horizontal flip, a small random translation and scaling (or, when
      ``image_size`` is given, a random resized crop of 70-100% of the image to that side),
      and a small color jitter.
    - box and mask tasks: horizontal flip and a small color jitter; when ``image_size`` is
      given, also a scale jitter resizing the shorter side to 80-125% of ``image_size``.

    Args:
        task: a task name (``classify``, ``localize``, ``detect``, ``semantic``, ``instance``,
            ``panoptic``).
        image_size: target side for the crop (classify) or the scale jitter (other tasks).
        horizontal_flip: include the flip (turn it off where mirror images are other things,
            such as digits).
    """
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is unknown; choose one of {', '.join(TASKS)}")
    steps: list[v2.Transform] = [v2.RandomHorizontalFlip()] if horizontal_flip else []
    if task == "classify" and image_size is None:
        steps.append(v2.RandomAffine(degrees=0.0, translate=(0.1, 0.1), scale=(0.9, 1.1)))
    elif task == "classify":
        steps.append(v2.RandomResizedCrop(image_size, scale=(0.7, 1.0), antialias=True))
    elif image_size is not None:
        steps.append(v2.RandomResize(int(0.8 * image_size), int(1.25 * image_size) + 1))
    steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2))
    return v2.Compose(steps)


def eval_transform(task: str, image_size: int | None = None) -> v2.Transform | None:
    """The evaluation transform: ``None``, images are evaluated as stored.

    Resizing for the network is each model's ``preprocess``, so evaluation, prediction and
    export share it; the arguments mirror :func:`train_augment`.
    """
    return None


def resize_to(image: Tensor, size: Size) -> Tensor:
    """Bilinear, antialiased resize of ``(..., 3, H, W)`` images to ``size`` ``(h, w)``."""
    return TF.resize(image, list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)


def shortest_edge_size(h: int, w: int, min_size: int, max_size: int) -> Size:
    """``(h', w')`` with the shorter side ``min_size``, unless the longer would exceed ``max_size``.

    In that case the longer side becomes ``max_size`` instead (torchvision detection style).
    The aspect ratio is kept up to rounding.
    """
    scale = min_size / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return _scaled(h, w, scale)


def longest_edge_size(h: int, w: int, max_size: int) -> Size:
    """``(h', w')`` with the longer side ``max_size`` and the aspect ratio kept up to rounding."""
    return _scaled(h, w, max_size / max(h, w))


def _scaled(h: int, w: int, scale: float) -> Size:
    return max(1, round(h * scale)), max(1, round(w * scale))


TASK_TARGET_FIELDS: dict[str, tuple[str, ...]] = {
    "classify": ("label",),
    "localize": ("label", "box", "boxes", "labels"),
    "detect": ("boxes", "labels", "iscrowd", "track_ids"),
    "instance": ("boxes", "labels", "iscrowd", "track_ids", "masks"),
    "semantic": ("semantic",),
    "panoptic": ("boxes", "labels", "iscrowd", "track_ids", "masks", "semantic", "panoptic"),
}
"""The target fields each task trains on; :func:`task_view` drops the rest."""


def task_view(target: Target, task: str) -> Target:
    """``target`` without the fields ``task`` does not use (so augmentation skips them)."""
    keep = TASK_TARGET_FIELDS[task]
    empty = Target(target.image_id, target.size)
    dropped = {
        name: getattr(empty, name)
        for name in ("label", "box", "boxes", "labels", "masks", "iscrowd", "track_ids")
        + ("semantic", "panoptic")
        if name not in keep
    }
    return replace(target, **dropped)


class SeededAugment(Dataset):
    """A data set whose samples pass through ``transform`` with reproducible randomness.

    Sample ``i`` of epoch ``e`` is augmented under torch's CPU RNG seeded from ``(seed, e, i)``
    (forked, so the global RNG is untouched): the result does not depend on worker processes,
    sample order or resuming. Targets are first reduced to the fields ``task`` uses. The
    data-set attributes are forwarded from ``dataset``.

    Attributes:
        dataset: the wrapped data set.
        transform: a v2 transform drawing its randomness from torch's RNG.
        seed: the run's seed.
        task: the task whose target fields are kept (``None``: all).
        epoch: the current epoch (see :meth:`set_epoch`).
    """

    def __init__(
        self, dataset: Dataset, transform: v2.Transform, seed: int, task: str | None = None
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.task = task
        self.epoch = 0
        self.class_names = dataset.class_names
        self.semantic_class_names = dataset.semantic_class_names
        self.category_ids = dataset.category_ids
        self.thing_flags = dataset.thing_flags

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image, target = self.dataset[index]
        if self.task is not None:
            target = task_view(target, self.task)
        sample_seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        with torch.random.fork_rng(devices=[]):
            # Seeds the CPU generator only: torch.manual_seed would also queue CUDA seeding.
            torch.default_generator.manual_seed(int(sample_seed))
            return apply_transform(self.transform, image, target)
