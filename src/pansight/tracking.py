"""Track ids across video frames by overlap with the objects of the frames before.

:class:`IoUTracker` matches each frame's detections to the tracks seen in the last few frames,
greedily by highest overlap: mask IoU where both sides have masks of the frame's size, box IoU
otherwise. A match needs the same label and an IoU of at least the threshold; a detection left
unmatched starts a new track.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

from pansight.structures import Detections

UNTRACKED = -1
"""Track id of a detection scoring below the tracker's ``min_score``."""


class IoUTracker:
    """Persistent ids for the detections of consecutive frames of one clip.

    Args:
        iou_threshold: least IoU between a detection and a track's last appearance to continue
            the track.
        max_age: a track can be continued until this many frames after it was last seen (``1``:
            only by the next frame).
        min_score: detections scoring below this are not tracked: their id is
            :data:`UNTRACKED` and they neither continue nor start a track.
    """

    def __init__(self, iou_threshold: float = 0.3, max_age: int = 5, min_score: float = 0.0):
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold={iou_threshold} must be in (0, 1]")
        if max_age < 1:
            raise ValueError(f"max_age={max_age} must be at least 1")
        self.iou_threshold, self.max_age, self.min_score = iou_threshold, max_age, min_score
        self.frame_index = -1
        self.next_id = 0
        self.track_ids = torch.empty(0, dtype=torch.int64)
        self.labels = torch.empty(0, dtype=torch.int64)
        self.last_seen = torch.empty(0, dtype=torch.int64)
        self.boxes = torch.empty(0, 4)
        self.masks: Tensor | None = None

    def update(self, detections: Detections) -> Tensor:
        """The next frame's detections -> their ``(N,)`` int64 track ids.

        Ids of detections scoring below ``min_score`` are :data:`UNTRACKED`.
        """
        self.frame_index += 1
        self._forget_old_tracks()
        ids = torch.full((len(detections),), UNTRACKED, dtype=torch.int64)
        tracked = (detections.scores.cpu() >= self.min_score).nonzero().flatten()
        boxes = detections.boxes.detach().float().cpu()[tracked]
        labels = detections.labels.cpu()[tracked]
        masks = None if detections.masks is None else detections.masks.cpu()[tracked]
        matches = self._match(boxes, labels, masks)
        new = matches == UNTRACKED
        matches[new] = torch.arange(self.next_id, self.next_id + int(new.sum()))
        self.next_id += int(new.sum())
        self._remember(matches, boxes, labels, masks)
        ids[tracked] = matches
        return ids

    def _forget_old_tracks(self) -> None:
        keep = self.frame_index - self.last_seen <= self.max_age
        self.track_ids, self.labels = self.track_ids[keep], self.labels[keep]
        self.last_seen, self.boxes = self.last_seen[keep], self.boxes[keep]
        if self.masks is not None:
            self.masks = self.masks[keep]

    def _match(self, boxes: Tensor, labels: Tensor, masks: Tensor | None) -> Tensor:
        """Greedy matching, highest IoU first: the ``(N,)`` track id of each detection, or
        :data:`UNTRACKED` where none qualifies."""
        matches = torch.full((len(boxes),), UNTRACKED, dtype=torch.int64)
        if len(boxes) == 0 or len(self.track_ids) == 0:
            return matches
        overlaps = self._overlaps(boxes, masks)
        overlaps[labels[:, None] != self.labels[None, :]] = -1.0
        for _ in range(min(overlaps.shape)):
            best = int(overlaps.argmax())
            detection, track = divmod(best, overlaps.shape[1])
            if overlaps[detection, track] < self.iou_threshold:
                break
            matches[detection] = self.track_ids[track]
            overlaps[detection, :] = -1.0
            overlaps[:, track] = -1.0
        return matches

    def _overlaps(self, boxes: Tensor, masks: Tensor | None) -> Tensor:
        """``(N, T)`` IoU of each detection with each track's last appearance."""
        if masks is not None and self._masks_fit(masks):
            return mask_iou(masks, self.masks)
        return box_iou(boxes, self.boxes)

    def _remember(
        self, track_ids: Tensor, boxes: Tensor, labels: Tensor, masks: Tensor | None
    ) -> None:
        """Set the last appearance of each of ``track_ids`` (continued or new) to this frame."""
        continued = torch.isin(self.track_ids, track_ids)
        kept = ~continued
        self.track_ids = torch.cat([self.track_ids[kept], track_ids])
        self.labels = torch.cat([self.labels[kept], labels])
        self.boxes = torch.cat([self.boxes[kept], boxes])
        seen_now = torch.full((len(track_ids),), self.frame_index, dtype=torch.int64)
        self.last_seen = torch.cat([self.last_seen[kept], seen_now])
        if not kept.any():
            self.masks = None if masks is None else masks.bool()
        elif masks is None or not self._masks_fit(masks):
            self.masks = None
        else:
            self.masks = torch.cat([self.masks[kept], masks.bool()])

    def _masks_fit(self, masks: Tensor) -> bool:
        """Whether the tracks have masks of the size of ``masks``."""
        return self.masks is not None and self.masks.shape[1:] == masks.shape[1:]


def mask_iou(masks: Tensor, others: Tensor) -> Tensor:
    """IoU of every pair of boolean masks: ``(N, H, W)`` and ``(M, H, W)`` -> ``(N, M)``.

    Two empty masks have IoU 0.
    """
    flat = masks.flatten(1).float()
    other_flat = others.flatten(1).float()
    intersection = flat @ other_flat.T
    union = flat.sum(1)[:, None] + other_flat.sum(1)[None, :] - intersection
    return intersection / union.clamp(min=1.0)
