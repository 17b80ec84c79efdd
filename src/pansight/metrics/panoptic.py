"""Panoptic quality (PQ), segmentation quality (SQ) and recognition quality (RQ), as the COCO
panoptic task defines them (:func:`panoptic_scores` states the rules): per image counts of
matched, false and missed segments (:func:`image_counts`), their sums over a data set and the
scores (:class:`PanopticMetric`); :mod:`pansight.metrics.panoptic_files` scores COCO panoptic
files.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pansight.errors import DataError
from pansight.metrics.classification import check_lengths
from pansight.structures import PanopticMap, Segment, Target

MATCH_IOU = 0.5
"""A predicted and a ground-truth segment match when their IoU is above this."""
IGNORED_SHARE = 0.5
"""An unmatched prediction with more than this share of its pixels on void or same-category crowd
regions is not a false positive."""
LOOKUP_FACTOR = 4
"""Lookup tables from segment ids to indices have at most this many entries per pixel."""
PENDING_PER_WORKER = 4
"""Batches queued per worker before ``update`` waits for the oldest one."""
SUMMARY_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")


@dataclass
class PanopticCounts:
    """Matching counts per category, summed over images.

    Attributes:
        tp, fp, fn: ``(K,)`` int64 true positives, false positives and false negatives.
        iou: ``(K,)`` float64 sum of the IoUs of the true positives.
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    iou: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> PanopticCounts:
        counts = [np.zeros(num_classes, dtype=np.int64) for _ in range(3)]
        return cls(*counts, np.zeros(num_classes, dtype=np.float64))

    def __add__(self, other: PanopticCounts) -> PanopticCounts:
        return PanopticCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.iou + other.iou
        )


@dataclass
class ImagePair:
    """One image's ground truth and prediction as plain arrays (cheap to send to a worker).

    Attributes:
        image_id: named in errors.
        truth_ids, pred_ids: ``(H, W)`` int64 segment ids (``0``: void).
        truth_segments, pred_segments: the segments of each map.
    """

    image_id: int
    truth_ids: np.ndarray
    truth_segments: list[Segment]
    pred_ids: np.ndarray
    pred_segments: list[Segment]

    @classmethod
    def of(cls, image_id: int, truth: PanopticMap, prediction: PanopticMap) -> ImagePair:
        truth_ids = np.asarray(truth.ids.cpu().numpy(), dtype=np.int64)
        pred_ids = np.asarray(prediction.ids.cpu().numpy(), dtype=np.int64)
        return cls(image_id, truth_ids, truth.segments, pred_ids, prediction.segments)


@dataclass
class _SegmentTable:
    """The segments of one map, ordered by id: ``ids``, ``labels`` and ``crowd``, each ``(S,)``."""

    ids: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray


def _segment_table(segments: Sequence[Segment], num_classes: int, what: str) -> _SegmentTable:
    """``segments`` sorted by id, checked: ids positive and unique, labels in ``0..K-1``."""
    rows = [(segment.id, segment.label, segment.iscrowd) for segment in segments]
    table = np.array(rows, dtype=np.int64).reshape(-1, 3)
    table = table[np.argsort(table[:, 0])]
    ids, labels = table[:, 0], table[:, 1]
    if ids.size and ids[0] <= 0:
        raise DataError(f"{what}: segment ids must be positive (0 is void)")
    if np.any(ids[1:] == ids[:-1]):
        raise DataError(f"{what}: a segment id is listed twice")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{what}: a segment label is outside 0..{num_classes - 1}")
    return _SegmentTable(ids, labels, table[:, 2].astype(bool))


def _segment_index(ids: np.ndarray, segment_ids: np.ndarray, scale: int, what: str) -> np.ndarray:
    """``(H, W)`` int64 index of each pixel's segment times ``scale``: index ``0`` for void,
    ``1 + position`` in the sorted ``segment_ids`` (``(S,)``) for a listed id, ``S + 1`` for an id
    no segment lists.

    The ids' low bits address a lookup table (all bits when the ids are small, else the fewest
    that tell the listed ids apart, checked against the full ids); a binary search of
    ``segment_ids`` serves when no table of at most ``LOOKUP_FACTOR`` entries per pixel will do.

    Raises:
        DataError: ``ids`` (int64) holds a negative id.
    """
    largest = int(ids.view(np.uint64).max()) if ids.size else 0
    if largest > np.iinfo(np.int64).max:
        raise DataError(f"{what}: the map holds negative segment ids")
    unlisted = (segment_ids.size + 1) * scale
    keys = np.append(segment_ids, 0)
    values = np.append(np.arange(1, segment_ids.size + 1), 0) * scale
    bits = _table_bits(keys, largest, LOOKUP_FACTOR * max(ids.size, 1))
    if bits is None:
        positions = np.searchsorted(segment_ids, ids).clip(max=max(segment_ids.size - 1, 0))
        listed = segment_ids[positions] == ids if segment_ids.size else ids < 0
        return np.where(listed, (positions + 1) * scale, np.where(ids == 0, 0, unlisted))
    mask = (1 << bits) - 1
    index_table = np.full(mask + 1, unlisted, dtype=np.int64)
    index_table[keys & mask] = values
    if largest <= mask:
        return np.take(index_table, ids)
    key_table = np.full(mask + 1, -1, dtype=np.int64)
    key_table[keys & mask] = keys
    low = ids & mask
    index = np.take(index_table, low)
    index[np.take(key_table, low) != ids] = unlisted
    return index


def _table_bits(keys: np.ndarray, largest: int, max_entries: int) -> int | None:
    """The fewest low bits that tell ``keys`` apart (all bits of ``largest`` if that table is
    small enough), or ``None`` if that needs a table of more than ``max_entries``."""
    if largest < max_entries:
        return max(largest.bit_length(), 1)
    bits = max((2 * keys.size).bit_length(), 1)
    while (1 << bits) <= max_entries:
        if np.unique(keys & ((1 << bits) - 1)).size == keys.size:
            return bits
        bits += 1
    return None


def _overlaps(pair: ImagePair, gt: _SegmentTable, pred: _SegmentTable) -> np.ndarray:
    """``(G + 2, P + 2)`` int64 pixel counts of every (truth, prediction) segment index pair
    (see :func:`_segment_index`), from one bincount over the combined indices."""
    shape = (gt.ids.size + 2, pred.ids.size + 2)
    truth_index = _segment_index(pair.truth_ids, gt.ids, shape[1], "ground truth")
    combined = truth_index + _segment_index(pair.pred_ids, pred.ids, 1, "prediction")
    return np.bincount(combined.ravel(), minlength=shape[0] * shape[1]).reshape(shape)


def _check_listed(
    overlaps: np.ndarray, pair: ImagePair, gt: _SegmentTable, pred: _SegmentTable
) -> None:
    """Raise a DataError naming the ids of the pixels that ``overlaps`` counts in its last row
    or column (ids no segment lists)."""
    for what, ids, table, counts in (
        ("ground truth", pair.truth_ids, gt, overlaps[-1]),
        ("prediction", pair.pred_ids, pred, overlaps[:, -1]),
    ):
        if counts.any():
            unlisted = np.setdiff1d(ids, np.append(table.ids, 0))[:5].tolist()
            raise DataError(f"{what}: pixels carry segment ids {unlisted} that no segment lists")


def image_counts(truth: PanopticMap, prediction: PanopticMap, num_classes: int) -> PanopticCounts:
    """The TP, FP, FN and IoU sums per category of one image.

    Args:
        truth: ground truth; ``ids`` ``(H, W)``, segments with ``iscrowd`` for crowd regions.
        prediction: the predicted map of the same ``(H, W)``; its ``iscrowd`` flags are ignored.
        num_classes: ``K``; segment labels lie in ``0..K-1``.

    Raises:
        DataError: the maps differ in size, a pixel's id is negative or not listed, a segment id
            is listed twice or is not positive, or a label is outside ``0..K-1``.
    """
    return _pair_counts(ImagePair.of(0, truth, prediction), num_classes)


def _pair_counts(pair: ImagePair, num_classes: int) -> PanopticCounts:
    """:func:`image_counts` of an :class:`ImagePair`: one bincount of the pixels, then
    :func:`_match` on the segments."""
    truth_shape, pred_shape = pair.truth_ids.shape, pair.pred_ids.shape
    if truth_shape != pred_shape:
        raise DataError(f"prediction is {pred_shape} but the ground truth is {truth_shape}")
    gt = _segment_table(pair.truth_segments, num_classes, "ground truth")
    pred = _segment_table(pair.pred_segments, num_classes, "prediction")
    overlaps = _overlaps(pair, gt, pred)
    _check_listed(overlaps, pair, gt, pred)
    return _match(overlaps[:-1, :-1], gt, pred, num_classes)


def count_pairs(pairs: Sequence[ImagePair], num_classes: int) -> PanopticCounts:
    """The summed counts of ``pairs`` (see :func:`image_counts`).

    Raises:
        DataError: as :func:`image_counts`, naming the image.
    """
    total = PanopticCounts.zeros(num_classes)
    for pair in pairs:
        try:
            total = total + _pair_counts(pair, num_classes)
        except DataError as error:
            raise DataError(f"image {pair.image_id}: {error}") from None
    return total


def _match(
    overlaps: np.ndarray, gt: _SegmentTable, pred: _SegmentTable, num_classes: int
) -> PanopticCounts:
    """Counts of one image from its ``(G + 1, P + 1)`` overlaps (row and column ``0``: void)."""
    shared = overlaps[1:, 1:]
    gt_area, pred_area = overlaps[1:].sum(axis=1), overlaps[:, 1:].sum(axis=0)
    pred_on_void = overlaps[0, 1:]
    same_label = gt.labels[:, None] == pred.labels[None, :]
    union = gt_area[:, None] + (pred_area - pred_on_void) - shared
    countable = shared * (same_label & ~gt.crowd[:, None])
    matched = countable > MATCH_IOU * union
    gt_matched, pred_matched = np.nonzero(matched)
    tp_labels = gt.labels[gt_matched]
    iou = shared[gt_matched, pred_matched] / union[gt_matched, pred_matched]

    missed = ~matched.any(axis=1) & ~gt.crowd & (gt_area > 0)
    on_crowd = (shared * (same_label & gt.crowd[:, None])).sum(axis=0)
    ignored = (pred_on_void + on_crowd) > IGNORED_SHARE * pred_area
    false = ~matched.any(axis=0) & (pred_area > 0) & ~ignored
    labels = (tp_labels, pred.labels[false] + num_classes, gt.labels[missed] + 2 * num_classes)
    tp, fp, fn = np.bincount(np.concatenate(labels), minlength=3 * num_classes).reshape(3, -1)
    return PanopticCounts(tp, fp, fn, np.bincount(tp_labels, iou, minlength=num_classes))


def panoptic_scores(
    counts: PanopticCounts, class_names: Sequence[str], is_thing: Sequence[bool]
) -> dict[str, float]:
    """``PQ, SQ, RQ`` over all, things (``_th``) and stuff (``_st``), and ``PQ_<class>``.

    The counts follow the COCO panoptic rules. Per image and category, a predicted and a
    ground-truth segment match (a true positive, TP) when their IoU is above 0.5; such a match
    is unique. The IoU leaves out the predicted segment's pixels on ground-truth void (id
    ``0``): ``IoU = overlap / (pred area - pred area on void + truth area - overlap)``.
    Ground-truth crowd segments never match and are not false negatives (FN); an unmatched
    predicted segment is a false positive (FP) unless more than half of its pixels lie on void
    or on crowd segments of its own category. Segments without pixels are left out.

    Per category ``PQ = sum IoU(TP) / (TP + FP / 2 + FN / 2)``, ``SQ = sum IoU(TP) / TP`` (0
    without TP) and ``RQ = TP / (TP + FP / 2 + FN / 2)``; ``PQ = SQ * RQ``. The summary numbers
    average the categories that have any TP, FP or FN (over all, over things ``_th``, over stuff
    ``_st``); a category with none is NaN and left out of the averages. A summary over no
    category is NaN.
    """
    tp, iou = counts.tp.astype(np.float64), counts.iou
    denominator = tp + 0.5 * counts.fp + 0.5 * counts.fn
    present = denominator > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        pq = np.where(present, iou / denominator, math.nan)
        sq = np.where(present, np.where(tp > 0, iou / tp, 0.0), math.nan)
        rq = np.where(present, tp / denominator, math.nan)
    things = np.asarray(is_thing, dtype=bool)
    scores = {}
    for suffix, chosen in (("", np.ones_like(things)), ("_th", things), ("_st", ~things)):
        averaged = chosen & present
        for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
            scores[name + suffix] = float(values[averaged].mean()) if averaged.any() else math.nan
    for name, value in zip(class_names, pq.tolist()):
        scores[f"PQ_{name}"] = value
    return scores


class PanopticMetric:
    """PQ, SQ and RQ of :class:`PanopticMap` results against ``Target.panoptic``.

    Results and targets must be in the same (original-image) pixels and share one label space
    (things and stuff). ``compute`` returns ``PQ, SQ, RQ``, the same over things (``PQ_th``...)
    and stuff (``PQ_st``...), and ``PQ_<class name>`` per class (see :func:`panoptic_scores`).

    With ``workers > 0`` each ``update`` hands its batch to a pool of that many processes and
    returns at once (at most ``PENDING_PER_WORKER`` batches per worker wait); ``compute`` and
    ``reset`` wait for them and close the pool.

    Attributes:
        class_names: one name per label ``0..K-1``; is_thing: whether each is a thing class.
        counts: the :class:`PanopticCounts` of the images counted so far.
    """

    primary: ClassVar[str] = "PQ"

    def __init__(
        self, class_names: Sequence[str], is_thing: Sequence[bool], workers: int = 0
    ) -> None:
        if len(class_names) != len(is_thing):
            raise ValueError(f"{len(class_names)} class names but {len(is_thing)} is_thing flags")
        if workers < 0:
            raise ValueError(f"workers={workers} must not be negative")
        self.class_names, self.is_thing = list(class_names), [bool(f) for f in is_thing]
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._pending: deque[Future[PanopticCounts]] = deque()
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def reset(self) -> None:
        self._close_pool()
        self._pending.clear()
        self.counts = PanopticCounts.zeros(self.num_classes)

    def update(self, results: list[PanopticMap], targets: list[Target]) -> None:
        """Count one batch: ``results[i]`` is the prediction for ``targets[i]``.

        Raises:
            DataError: naming the image, if its target has no panoptic map or the pair is
                unusable (see :func:`image_counts`); with workers, from a later call.
        """
        check_lengths(results, targets)
        pairs = []
        for result, target in zip(results, targets):
            if target.panoptic is None:
                raise DataError(f"image {target.image_id}: the target has no panoptic map")
            pairs.append(ImagePair.of(target.image_id, target.panoptic, result))
        if self.workers == 0:
            self.counts = self.counts + count_pairs(pairs, self.num_classes)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers)
        self._pending.append(self._pool.submit(count_pairs, pairs, self.num_classes))
        while len(self._pending) > PENDING_PER_WORKER * self.workers:
            self.counts = self.counts + self._pending.popleft().result()

    def compute(self) -> dict[str, float]:
        """The scores so far (NaN where no segment was counted)."""
        while self._pending:
            self.counts = self.counts + self._pending.popleft().result()
        self._close_pool()
        return panoptic_scores(self.counts, self.class_names, self.is_thing)

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
