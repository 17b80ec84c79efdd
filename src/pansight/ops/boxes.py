"""Box coder (boxes <-> regression deltas), IoU matcher and balanced positive/negative sampler.

All boxes are absolute ``xyxy`` float pixels in one frame (the model's input frame).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DELTA_CLAMP = math.log(1000.0 / 16)
"""Largest log-scale change of width or height a decoded delta may ask for."""

BELOW_LOW_THRESHOLD = -1
"""Matcher index of a box whose best IoU is below the low threshold (background)."""

BETWEEN_THRESHOLDS = -2
"""Matcher index of a box whose best IoU lies between the thresholds (ignored)."""


class BoxCoder:
    """Encodes boxes as deltas ``(dx, dy, dw, dh)`` relative to reference boxes, and back.

    ``dx = wx * (cx - ref_cx) / ref_w``, ``dw = ww * log(w / ref_w)`` (likewise for y and h).

    Attributes:
        weights: ``(wx, wy, ww, wh)`` multipliers of the four deltas.
    """

    def __init__(self, weights: tuple[float, float, float, float]) -> None:
        self.weights = weights

    def encode(self, boxes: Tensor, references: Tensor) -> Tensor:
        """Deltas ``(N, 4)`` taking ``references`` ``(N, 4)`` onto ``boxes`` ``(N, 4)``."""
        wx, wy, ww, wh = self.weights
        ref_w, ref_h, ref_cx, ref_cy = _size_and_center(references)
        w, h, cx, cy = _size_and_center(boxes)
        return torch.stack(
            [
                wx * (cx - ref_cx) / ref_w,
                wy * (cy - ref_cy) / ref_h,
                ww * torch.log(w / ref_w),
                wh * torch.log(h / ref_h),
            ],
            dim=1,
        )

    def decode(self, deltas: Tensor, references: Tensor) -> Tensor:
        """Boxes from deltas ``(N, 4 * C)`` on ``references`` ``(N, 4)``: ``(N, C, 4)``.

        ``C`` is the number of boxes per reference (one per class in a box predictor).
        """
        references = references.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        ref_w, ref_h, ref_cx, ref_cy = (v[:, None] for v in _size_and_center(references))
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=DELTA_CLAMP)
        dh = (deltas[:, 3::4] / wh).clamp(max=DELTA_CLAMP)
        cx, cy = dx * ref_w + ref_cx, dy * ref_h + ref_cy
        half_w, half_h = 0.5 * torch.exp(dw) * ref_w, 0.5 * torch.exp(dh) * ref_h
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=2)


def _size_and_center(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(w, h, cx, cy)`` of ``(N, 4)`` xyxy boxes, each ``(N,)``."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return widths, heights, boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights


class Matcher:
    """Assigns each prediction the ground-truth box it overlaps most.

    Args:
        high_threshold: IoU at or above which a match is kept.
        low_threshold: IoU below which a prediction is background (:data:`BELOW_LOW_THRESHOLD`);
            in between it is ignored (:data:`BETWEEN_THRESHOLDS`).
        allow_low_quality_matches: also keep, for every ground-truth box, the predictions that
            reach its highest IoU (so each ground-truth box gets at least one match; the RPN
            uses this).
    """

    def __init__(
        self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False
    ) -> None:
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> Tensor:
        """``iou`` ``(G, P)`` -> ``(P,)`` int64 ground-truth index, or -1 / -2 as above.

        With no ground truth (``G == 0``) every prediction is background.
        """
        if iou.shape[0] == 0:
            return torch.full((iou.shape[1],), BELOW_LOW_THRESHOLD, device=iou.device)
        best_iou, matches = iou.max(dim=0)
        original = matches.clone()
        matches[best_iou < self.high_threshold] = BETWEEN_THRESHOLDS
        matches[best_iou < self.low_threshold] = BELOW_LOW_THRESHOLD
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            _, reaching = torch.nonzero(iou == best_per_gt, as_tuple=True)
            matches[reaching] = original[reaching]
        return matches


class BalancedSampler:
    """Draws a fixed-size batch of positives and negatives per image.

    Args:
        batch_size: examples drawn per image.
        positive_fraction: the largest share of positives; negatives fill the rest.
    """

    def __init__(self, batch_size: int, positive_fraction: float) -> None:
        self.batch_size = batch_size
        self.positive_fraction = positive_fraction

    def __call__(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """``labels`` ``(P,)`` (``>= 1`` positive, ``0`` negative, ``< 0`` ignored) ->
        boolean ``(P,)`` masks of the sampled positives and negatives (drawn uniformly)."""
        positive = torch.nonzero(labels >= 1).flatten()
        negative = torch.nonzero(labels == 0).flatten()
        num_positive = min(positive.numel(), int(self.batch_size * self.positive_fraction))
        num_negative = min(negative.numel(), self.batch_size - num_positive)
        chosen_pos = positive[torch.randperm(positive.numel(), device=labels.device)[:num_positive]]
        chosen_neg = negative[torch.randperm(negative.numel(), device=labels.device)[:num_negative]]
        positive_mask = torch.zeros_like(labels, dtype=torch.bool)
        negative_mask = torch.zeros_like(labels, dtype=torch.bool)
        positive_mask[chosen_pos] = True
        negative_mask[chosen_neg] = True
        return positive_mask, negative_mask
