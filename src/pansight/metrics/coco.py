"""COCO box and mask average precision of :class:`Detections`, computed by pycocotools.

Ground truth and predictions are kept as COCO records (masks as compressed RLE, encoded once in
``update``), so memory stays small on large validation sets. ``compute`` builds the ground-truth
``COCO`` object in memory and runs ``COCOeval`` once per IoU type.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from dataclasses import replace
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pansight.data.coco import image_record, instance_annotations
from pansight.errors import ConfigError, DataError
from pansight.metrics.classification import check_lengths
from pansight.structures import Detections, Target

IOU_TYPES = ("bbox", "segm")
KEY_PREFIXES = {"bbox": "box", "segm": "mask"}
STAT_NAMES = (
    *("AP", "AP50", "AP75", "APs", "APm", "APl"),
    *("AR1", "AR10", "AR100", "ARs", "ARm", "ARl"),
)
"""Names of the 12 numbers of ``COCOeval.stats``, in its order."""


class CocoMetric:
    """COCO AP / AR of :class:`Detections` against the objects of :class:`Target`.

    Results and targets must be in the same (original-image) pixels. Each ``Target`` gives
    ``boxes`` ``(N, 4)`` xyxy, ``labels`` ``(N,)`` in ``0..K-1``, ``masks`` ``(N, H, W)`` bool
    (needed for ``"segm"``; when present they also give each object's area, else its box does),
    ``iscrowd`` (crowd regions are neither matched nor missed) and ``size``. Every target is a new
    image, whatever its ``image_id``.

    ``compute`` returns the 12 COCO numbers per IoU type, named ``box_AP``, ``box_AP50``,
    ``box_AP75``, ``box_APs``, ``box_APm``, ``box_APl``, ``box_AR1``, ``box_AR10``,
    ``box_AR100``, ``box_ARs``, ``box_ARm``, ``box_ARl`` and the same with ``mask_``. As in
    pycocotools, a number without any ground truth to count (no objects at all, or none of that
    size) is ``-1``; images with objects but no predictions give ``0``.
    """

    def __init__(
        self,
        num_classes: int,
        iou_types: tuple[str, ...] = ("bbox",),
        category_ids: list[int] | None = None,
    ) -> None:
        """
        Args:
            num_classes: ``K``; labels are ``0..K-1``.
            iou_types: ``"bbox"`` and/or ``"segm"`` (mask AP).
            category_ids: the COCO category id of each label (default ``0..K-1``).
        """
        unknown = [name for name in iou_types if name not in IOU_TYPES]
        if unknown or not iou_types:
            raise ConfigError(f"iou_types={iou_types!r}; choose from {', '.join(IOU_TYPES)}")
        if category_ids is not None and len(category_ids) != num_classes:
            raise ConfigError(f"{len(category_ids)} category_ids for {num_classes} classes")
        self.num_classes = num_classes
        self.iou_types = tuple(iou_types)
        self.category_ids = list(range(num_classes)) if category_ids is None else category_ids
        self.primary = "mask_AP" if "segm" in self.iou_types else "box_AP"
        self.reset()

    def reset(self) -> None:
        self._images: list[dict[str, Any]] = []
        self._ground_truth: list[dict[str, Any]] = []
        self._predictions: dict[str, list[dict[str, Any]]] = {name: [] for name in self.iou_types}
        self._summary: str | None = None

    def update(self, results: list[Detections], targets: list[Target]) -> None:
        """Add one batch: ``results[i]`` is the prediction for ``targets[i]``.

        Raises:
            DataError: naming the image, if a target has a label outside ``0..K-1`` or lacks the
                masks that mask AP needs.
            ValueError: if the lengths differ, or a result has a bad label or lacks masks.
        """
        check_lengths(results, targets)
        for result, target in zip(results, targets):
            self._check_target(target)
            self._check_result(result, target)
            image_id = len(self._images) + 1
            self._images.append(image_record(image_id, str(target.image_id), target.size))
            masks = None if target.masks is None else target.masks.cpu()
            own_target = replace(target, image_id=image_id, masks=masks)
            first_id = len(self._ground_truth) + 1
            self._ground_truth += instance_annotations(own_target, self.category_ids, first_id)
            self._add_predictions(result, image_id)
        self._summary = None

    def compute(self) -> dict[str, float]:
        """The 12 COCO numbers of each IoU type (see the class docstring), in ``[0, 1]`` or -1."""
        ground_truth = self._ground_truth_coco()
        metrics: dict[str, float] = {}
        summaries = []
        for iou_type in self.iou_types:
            stats, printed = evaluate_coco(ground_truth, self._predictions[iou_type], iou_type)
            prefix = KEY_PREFIXES[iou_type]
            metrics |= {f"{prefix}_{name}": float(v) for name, v in zip(STAT_NAMES, stats)}
            summaries.append(f"{prefix} ({iou_type}):\n{printed.rstrip()}")
        self._summary = "\n".join(summaries)
        return metrics

    def summary(self) -> str:
        """pycocotools' printed table of the last ``compute`` (computed now if needed)."""
        if self._summary is None:
            self.compute()
        return self._summary

    def _check_target(self, target: Target) -> None:
        labels = target.labels
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < self.num_classes):
            raise DataError(
                f"image {target.image_id}: labels must be in 0..{self.num_classes - 1}, "
                f"got {labels.tolist()}"
            )
        if "segm" in self.iou_types and target.masks is None:
            raise DataError(f"image {target.image_id}: mask AP needs masks in the target")

    def _check_result(self, result: Detections, target: Target) -> None:
        labels = result.labels
        if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < self.num_classes):
            raise ValueError(f"result labels must be in 0..{self.num_classes - 1}")
        if "segm" in self.iou_types and result.masks is None:
            raise ValueError(f"the result for image {target.image_id} has no masks for mask AP")

    def _add_predictions(self, result: Detections, image_id: int) -> None:
        """Store the result's COCO records: ``bbox`` ones without masks, ``segm`` ones without
        boxes, so that pycocotools takes a predicted mask's area from the mask, not its box."""
        masks = result.masks.cpu() if "segm" in self.iou_types else None
        result = replace(result, boxes=result.boxes.cpu(), scores=result.scores.cpu(), masks=masks)
        for record in result.to_coco(image_id, self.category_ids):
            if "bbox" in self.iou_types:
                self._predictions["bbox"].append(_without(record, "segmentation"))
            if "segm" in self.iou_types:
                self._predictions["segm"].append(_without(record, "bbox"))

    def _ground_truth_coco(self) -> COCO:
        categories = [{"id": cid, "name": str(cid)} for cid in self.category_ids]
        return in_memory_coco(self._images, [dict(a) for a in self._ground_truth], categories)


def in_memory_coco(
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]],
) -> COCO:
    """A pycocotools ``COCO`` object of these records, built without a file or printing."""
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_coco(
    ground_truth: COCO, predictions: list[dict[str, Any]], iou_type: str
) -> tuple[np.ndarray, str]:
    """``(COCOeval.stats, its printed summary)`` of COCO result records against ground truth.

    Records are copied first (``loadRes`` adds fields to them). With no records, every image has
    no predictions: AP is 0 where ground truth exists.
    """
    dataset = ground_truth.dataset
    with redirect_stdout(io.StringIO()):
        if predictions:
            detections = ground_truth.loadRes([dict(record) for record in predictions])
        else:
            detections = in_memory_coco(dataset["images"], [], dataset["categories"])
        evaluator = COCOeval(ground_truth, detections, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
    with redirect_stdout(io.StringIO()) as printed:
        evaluator.summarize()
    return evaluator.stats, printed.getvalue()


def _without(record: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in record.items() if name != key}
