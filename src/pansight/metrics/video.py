"""YouTube-VIS video mask AP: predicted tracks matched to ground-truth tracks over whole clips.

A track is one object followed through a clip: a label, a score and per frame a mask or
``None``. The IoU of two tracks of a clip is the sum over its frames of their masks'
intersections over the sum of their unions (a frame where one track is absent adds the other's
area to the union; a frame where both are absent adds nothing). AP is COCO's, computed by
pycocotools' ``COCOeval`` with clips in place of images and this IoU in place of a mask's: IoU
thresholds 0.50:0.05:0.95, 101 recall points, up to 100 tracks per clip, objects of every size.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from pansight.errors import DataError
from pansight.metrics.coco import in_memory_coco
from pansight.structures import Detections, Target

ALL_AREAS = [0, 1e5**2]
"""COCO's area range ``all``: every object counts, whatever its size."""
MAX_TRACKS = 100
"""Most predicted tracks per clip that count, highest scores first (COCO's ``maxDets``)."""
STAT_IOUS = {"mask_AP": None, "mask_AP50": 0.5, "mask_AP75": 0.75}
"""The reported numbers and the IoU threshold each is taken at (``None``: mean over all)."""


@dataclass
class Track:
    """One object through a clip.

    Attributes:
        label: contiguous label in ``0..K-1``.
        masks: per frame of the clip an ``(H, W)`` bool mask in that frame's pixels, or ``None``
            where the object is not seen.
        score: confidence (1.0 for ground truth).
        iscrowd: a crowd region (ground truth only): predictions overlapping it are neither
            true nor false positives, and it is never missed. A prediction's IoU with it is the
            intersection over the prediction's own area, as in COCO.
    """

    label: int
    masks: list[Tensor | None]
    score: float = 1.0
    iscrowd: bool = False


@dataclass(frozen=True)
class EncodedTrack:
    """A track's masks as compressed RLE (``None`` where absent) and their ``(F,)`` areas."""

    rles: list[dict[str, Any] | None]
    areas: np.ndarray

    @classmethod
    def of(cls, track: Track) -> EncodedTrack:
        rles = [None if mask is None else _encode(mask) for mask in track.masks]
        areas = [0 if rle is None else int(mask_utils.area(rle)) for rle in rles]
        return cls(rles, np.array(areas, dtype=np.float64))


def tracks_from_detections(
    frames: Sequence[Detections], track_ids: Sequence[Tensor] | None = None
) -> list[Track]:
    """The tracks of a clip's per-frame detections, one per track id in increasing order.

    Args:
        frames: per frame, detections with ``masks`` ``(N_t, H, W)`` bool.
        track_ids: per frame, ``(N_t,)`` int64 track ids of the detections (at most one
            detection per id and frame); default: each frame's ``Detections.track_ids``.

    A track's label is the label it has most often (the smallest such label on a tie); its
    score is the mean of its detections' scores.

    Raises:
        ValueError: if detections lack masks or track ids, or an id repeats within a frame.
    """
    if track_ids is None:
        if any(frame.track_ids is None for frame in frames):
            raise ValueError("detections without track_ids need track_ids passed separately")
        track_ids = [frame.track_ids for frame in frames]
    if any(frame.masks is None for frame in frames):
        raise ValueError("video mask AP needs detections with masks")
    tracks = []
    for seen in _appearances(track_ids).values():
        labels = [int(frames[t].labels[row]) for t, row in seen]
        scores = [float(frames[t].scores[row]) for t, row in seen]
        tracks.append(
            Track(
                label=int(np.bincount(labels).argmax()),
                masks=_masks_through_clip(seen, [frame.masks for frame in frames]),
                score=float(np.mean(scores)),
            )
        )
    return tracks


def ground_truth_tracks(targets: Sequence[Target]) -> list[Track]:
    """The tracks of a clip's per-frame targets, one per track id in increasing order.

    Each target needs ``masks`` ``(N_t, H, W)`` and ``track_ids`` ``(N_t,)``; a track's label
    and crowd flag are those of its first frame.

    Raises:
        DataError: naming the frame, if a target lacks masks or track ids or repeats an id.
    """
    for target in targets:
        if target.masks is None or target.track_ids is None:
            raise DataError(f"image {target.image_id}: video mask AP needs masks and track_ids")
    try:
        appearances = _appearances([target.track_ids for target in targets])
    except ValueError as error:
        raise DataError(f"ground truth: {error}") from None
    tracks = []
    for seen in appearances.values():
        t, row = seen[0]
        crowd = targets[t].iscrowd is not None and bool(targets[t].iscrowd[row])
        masks = _masks_through_clip(seen, [target.masks for target in targets])
        tracks.append(Track(int(targets[t].labels[row]), masks, iscrowd=crowd))
    return tracks


def track_iou(
    predicted: Sequence[EncodedTrack],
    ground_truth: Sequence[EncodedTrack],
    iscrowd: Sequence[bool],
) -> np.ndarray:
    """``(D, G)`` IoU of every predicted track with every ground-truth track of one clip.

    Intersections are summed frame by frame (pycocotools' IoU of the masks present in a frame,
    turned back into pixel counts); a crowd track's IoU divides by the prediction's area only.
    Tracks without any pixel have IoU 0.
    """
    intersection = np.zeros((len(predicted), len(ground_truth)))
    for t in range(len(predicted[0].rles) if predicted else 0):
        rows = [i for i, track in enumerate(predicted) if track.rles[t] is not None]
        columns = [j for j, track in enumerate(ground_truth) if track.rles[t] is not None]
        if rows and columns:
            intersection[np.ix_(rows, columns)] += _frame_intersection(
                [predicted[i] for i in rows], [ground_truth[j] for j in columns], t
            )
    predicted_area = np.array([track.areas.sum() for track in predicted])[:, None]
    truth_area = np.array([track.areas.sum() for track in ground_truth])[None, :]
    crowd = np.asarray(iscrowd, dtype=bool)
    union = np.where(crowd, predicted_area, predicted_area + truth_area - intersection)
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


class VideoMaskMetric:
    """YouTube-VIS mask AP of predicted tracks against ground-truth clips.

    ``compute`` returns ``mask_AP`` (mean over IoU thresholds 0.50:0.05:0.95), ``mask_AP50`` and
    ``mask_AP75``. As in pycocotools, a number without ground truth to count is ``-1``; clips
    with ground truth but no predictions give ``0``.
    """

    primary = "mask_AP"

    def __init__(self, num_classes: int) -> None:
        """
        Args:
            num_classes: ``K``; labels are ``0..K-1``.
        """
        self.num_classes = num_classes
        self.reset()

    def reset(self) -> None:
        self._ground_truth: list[dict[str, Any]] = []
        self._predictions: list[dict[str, Any]] = []
        self._num_clips = 0

    def update(
        self, predicted_tracks: Sequence[Track], ground_truth_clip: Sequence[Target]
    ) -> None:
        """Add one clip: its predicted tracks and its per-frame targets (see
        :func:`ground_truth_tracks`). Every track has one entry per frame, each mask the size of
        its frame.

        Raises:
            DataError: naming the frame, if a target lacks masks or track ids or has a label
                outside ``0..K-1``.
            ValueError: if a predicted track has a bad label, length or mask size.
        """
        sizes = [target.size for target in ground_truth_clip]
        truth = ground_truth_tracks(ground_truth_clip)
        for track in truth:
            if not 0 <= track.label < self.num_classes:
                raise DataError(
                    f"clip of image {ground_truth_clip[0].image_id}: label {track.label} is "
                    f"outside 0..{self.num_classes - 1}"
                )
        for track in predicted_tracks:
            self._check_prediction(track, sizes)
        clip = self._num_clips
        self._ground_truth += _records(truth, clip, first_id=len(self._ground_truth) + 1)
        self._predictions += _records(predicted_tracks, clip, first_id=len(self._predictions) + 1)
        self._num_clips += 1

    def compute(self) -> dict[str, float]:
        """``mask_AP``, ``mask_AP50`` and ``mask_AP75``, each in ``[0, 1]`` or -1."""
        clips = [{"id": clip} for clip in range(self._num_clips)]
        categories = [{"id": label, "name": str(label)} for label in range(self.num_classes)]
        truth = in_memory_coco(clips, [dict(r) for r in self._ground_truth], categories)
        predictions = in_memory_coco(clips, [dict(r) for r in self._predictions], categories)
        evaluator = TrackEval(truth, predictions)
        with redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
        precision = evaluator.eval["precision"][:, :, :, 0, -1]
        thresholds = evaluator.params.iouThrs
        return {
            name: _mean_precision(precision, thresholds, threshold)
            for name, threshold in STAT_IOUS.items()
        }

    def _check_prediction(self, track: Track, sizes: list[tuple[int, int]]) -> None:
        if not 0 <= track.label < self.num_classes:
            raise ValueError(
                f"track labels must be in 0..{self.num_classes - 1}, got {track.label}"
            )
        if len(track.masks) != len(sizes):
            raise ValueError(f"a track has {len(track.masks)} frames, the clip {len(sizes)}")
        for t, (mask, size) in enumerate(zip(track.masks, sizes)):
            if mask is not None and tuple(mask.shape) != size:
                raise ValueError(f"a track's mask in frame {t} is {tuple(mask.shape)}, not {size}")


class TrackEval(COCOeval):
    """pycocotools' ``COCOeval`` over clips and tracks: only the IoU differs.

    Records are COCO annotation dicts whose ``image_id`` is the clip and whose ``track`` is an
    :class:`EncodedTrack`. The evaluation runs as ``"bbox"``, whose preparation leaves records as
    they are; every area counts and up to :data:`MAX_TRACKS` tracks per clip.
    """

    def __init__(self, ground_truth: Any, predictions: Any) -> None:
        super().__init__(ground_truth, predictions, "bbox")
        self.params.areaRng, self.params.areaRngLbl = [ALL_AREAS], ["all"]
        self.params.maxDets = [MAX_TRACKS]

    def computeIoU(self, clip: int, label: int) -> np.ndarray | list:  # noqa: N802
        """``(D, G)`` track IoU of the clip's predictions of ``label`` (best ``MAX_TRACKS`` by
        score, in decreasing score order) and its ground truth of ``label``."""
        truth, predictions = self._gts[clip, label], self._dts[clip, label]
        if not truth or not predictions:
            return []
        order = np.argsort([-record["score"] for record in predictions], kind="mergesort")
        best = [predictions[i]["track"] for i in order[: self.params.maxDets[-1]]]
        crowd = [bool(record["iscrowd"]) for record in truth]
        return track_iou(best, [record["track"] for record in truth], crowd)


def _records(tracks: Sequence[Track], clip: int, first_id: int) -> list[dict[str, Any]]:
    """The COCO-style records ``TrackEval`` reads, ids ``first_id...``: the clip is the
    ``image_id``, the area the mean over the frames where the track is seen."""
    records = []
    for number, track in enumerate(tracks):
        encoded = EncodedTrack.of(track)
        seen = encoded.areas[[rle is not None for rle in encoded.rles]]
        records.append(
            {
                "id": first_id + number,
                "image_id": clip,
                "category_id": track.label,
                "score": track.score,
                "iscrowd": int(track.iscrowd),
                "area": float(seen.mean()) if len(seen) else 0.0,
                "track": encoded,
            }
        )
    return records


def _frame_intersection(
    predicted: list[EncodedTrack], ground_truth: list[EncodedTrack], t: int
) -> np.ndarray:
    """``(D, G)`` pixel counts of the intersections of the masks in frame ``t``."""
    iou = np.asarray(
        mask_utils.iou(
            [track.rles[t] for track in predicted],
            [track.rles[t] for track in ground_truth],
            [0] * len(ground_truth),
        )
    ).reshape(len(predicted), len(ground_truth))
    sums = np.add.outer(
        [track.areas[t] for track in predicted], [track.areas[t] for track in ground_truth]
    )
    return np.rint(iou * sums / (1 + iou))


def _mean_precision(precision: np.ndarray, thresholds: np.ndarray, iou: float | None) -> float:
    """Mean of the ``(T, R, K)`` precision table over the counted entries, at IoU ``iou`` or
    over every threshold; -1 when nothing counts."""
    if iou is not None:
        precision = precision[np.isclose(thresholds, iou)]
    counted = precision[precision > -1]
    return float(counted.mean()) if counted.size else -1.0


def _appearances(track_ids: Sequence[Tensor]) -> dict[int, list[tuple[int, int]]]:
    """For every track id (in increasing order), the ``(frame, row)`` pairs where it appears."""
    seen: dict[int, list[tuple[int, int]]] = {}
    for t, ids in enumerate(track_ids):
        ids = ids.tolist()
        if len(set(ids)) != len(ids):
            raise ValueError(f"frame {t} has a track id twice: {ids}")
        for row, track_id in enumerate(ids):
            seen.setdefault(int(track_id), []).append((t, row))
    return dict(sorted(seen.items()))


def _masks_through_clip(
    seen: list[tuple[int, int]], masks: Sequence[Tensor]
) -> list[Tensor | None]:
    """One track's masks: ``masks[t][row]`` where it appears, ``None`` elsewhere."""
    through = [None] * len(masks)
    for t, row in seen:
        through[t] = masks[t][row]
    return through


def _encode(mask: Tensor) -> dict[str, Any]:
    """Compressed RLE of an ``(H, W)`` bool mask."""
    return mask_utils.encode(np.asfortranarray(mask.cpu().numpy(), dtype=np.uint8))
