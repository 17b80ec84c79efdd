"""Pasting fixed-size RoI masks into full images, for all detections at once."""

from __future__ import annotations

import torch
from torch import Tensor


def expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """``(N, 4)`` xyxy boxes grown about their centres by ``scale``."""
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    centre_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    centre_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack(
        [centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], dim=1
    )


def paste_masks(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int = 1
) -> Tensor:
    """Paste ``(N, M, M)`` mask probabilities into ``(N, H, W)`` images at ``boxes``.

    Each mask gets a border of ``padding`` zeros, its box grows to match and is truncated to
    whole pixels ``(x0, y0, x1, y1)`` (both ends inclusive); the mask is then resized
    bilinearly (``align_corners=False``) onto those pixels and is zero elsewhere. Bilinear
    resizing is separable, so all detections are pasted with one batched product
    ``rows (N, H, M) @ mask (N, M, M) @ cols (N, M, W)`` instead of a loop over detections.

    Args:
        masks: ``(N, M, M)`` float masks (probabilities or logits).
        boxes: ``(N, 4)`` xyxy boxes in the pixels of the target image.
        image_size: ``(H, W)`` of the target image.
        padding: zero border added around every mask before pasting.

    Returns:
        ``(N, H, W)`` float masks.
    """
    height, width = image_size
    if masks.shape[0] == 0:
        return masks.new_zeros((0, height, width))
    masks = torch.nn.functional.pad(masks.float(), (padding,) * 4)
    side = masks.shape[-1]
    pixel_boxes = expand_boxes(boxes.float(), side / (side - 2 * padding)).long()
    rows = _resize_weights(pixel_boxes[:, 1], pixel_boxes[:, 3], side, height)
    cols = _resize_weights(pixel_boxes[:, 0], pixel_boxes[:, 2], side, width)
    return rows @ masks @ cols.transpose(1, 2)


def _resize_weights(starts: Tensor, ends: Tensor, source: int, length: int) -> Tensor:
    """``(N, length, source)`` bilinear weights mapping ``source`` samples onto pixels
    ``starts..ends`` (inclusive) of a ``length``-pixel line; rows outside are zero.

    Follows ``F.interpolate(mode="bilinear", align_corners=False)``: output pixel ``u`` reads
    source coordinate ``(u + 0.5) * source / extent - 0.5``, clamped at 0, between its two
    neighbouring samples (the last sample repeats past the end).
    """
    extent = (ends - starts + 1).clamp(min=1)
    pixels = torch.arange(length, device=starts.device)
    offsets = pixels[None, :] - starts[:, None]  # (N, length): position inside the box
    inside = (offsets >= 0) & (offsets < extent[:, None])
    scale = source / extent.float()
    coords = ((offsets.float() + 0.5) * scale[:, None] - 0.5).clamp(min=0)
    lower = coords.floor().long().clamp(max=source - 1)
    upper = (lower + 1).clamp(max=source - 1)
    upper_weight = (coords - lower.float()) * inside
    lower_weight = (1 - (coords - lower.float())) * inside
    weights = torch.zeros(starts.shape[0], length, source, device=starts.device)
    weights.scatter_add_(2, lower[..., None], lower_weight[..., None])
    weights.scatter_add_(2, upper[..., None], upper_weight[..., None])
    return weights
