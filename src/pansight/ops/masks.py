"""Masks into full images, for all detections at once: pasting fixed-size RoI masks
(Mask R-CNN) and upsampling image-frame masks that are zero outside a small region (YOLACT)."""

from __future__ import annotations

import torch
from torch import Tensor


def expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    """``(N, 4)`` xyxy boxes grown about their centers by ``scale``."""
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    center_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    center_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    return torch.stack(
        [center_x - half_w, center_y - half_h, center_x + half_w, center_y + half_h], dim=1
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


def paste_masks_above(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float, padding: int = 1
) -> Tensor:
    """``paste_masks(masks, boxes, image_size, padding) > threshold``, computed only inside the
    boxes.

    A pasted mask is zero outside its (grown, whole-pixel) box, so with ``threshold >= 0`` only
    the pixels of the box can be true: each mask is resampled onto its box's pixels alone, with
    one batched product over the largest box, and written into the ``(N, H, W)`` result.

    Args:
        masks: ``(N, M, M)`` float masks.
        boxes: ``(N, 4)`` xyxy boxes in the pixels of the target image.
        image_size: ``(H, W)`` of the target image.
        threshold: a value ``>= 0``; pasted values above it are true.
        padding: zero border added around every mask before pasting.

    Returns:
        ``(N, H, W)`` bool masks.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    height, width = image_size
    count = masks.shape[0]
    result = torch.zeros((count, height, width), dtype=torch.bool, device=masks.device)
    if count == 0:
        return result
    masks = torch.nn.functional.pad(masks.float(), (padding,) * 4)
    side = masks.shape[-1]
    pixel_boxes = expand_boxes(boxes.float(), side / (side - 2 * padding)).long()
    rows = _pixels_in_box(pixel_boxes[:, 1], pixel_boxes[:, 3], height)
    cols = _pixels_in_box(pixel_boxes[:, 0], pixel_boxes[:, 2], width)
    row_weights = _box_weights(pixel_boxes[:, 1], pixel_boxes[:, 3], rows, side)
    col_weights = _box_weights(pixel_boxes[:, 0], pixel_boxes[:, 2], cols, side)
    values = row_weights @ masks @ col_weights.transpose(1, 2)
    flat_index = rows[:, :, None] * width + cols[:, None, :]
    result.view(count, -1).scatter_(1, flat_index.flatten(1), (values > threshold).flatten(1))
    return result


def _pixels_in_box(starts: Tensor, ends: Tensor, length: int) -> Tensor:
    """``(N, n)`` pixels ``starts..ends`` (inclusive) of each box clipped to ``0..length-1``,
    padded as :func:`_padded_run` does (a box wholly outside gets one pixel of zero weight)."""
    first = starts.clamp(0, length - 1)
    count = (ends.clamp(max=length - 1) - starts.clamp(min=0) + 1).clamp(min=0)
    return _padded_run(first, count, length)


def upsample_above(masks: Tensor, image_size: tuple[int, int], threshold: float) -> Tensor:
    """``F.interpolate(masks[None], image_size, mode="bilinear") > threshold``, computed only
    where it can be true.

    Each mask is zero outside a small region (a detection's box); with ``threshold >= 0`` an
    output pixel whose source samples are all zero is false. So each mask's nonzero block of
    samples is resampled onto just the output pixels that read it, with one batched product
    ``rows (D, H', h') @ block (D, h', w') @ cols (D, w', W')`` over the largest block, and
    written into the ``(D, H, W)`` result. Equal to the full upsampling up to float rounding
    of the weighted sums.

    Args:
        masks: ``(D, h, w)`` float masks covering the whole image frame.
        image_size: ``(H, W)`` of the output.
        threshold: a value ``>= 0``; output pixels above it are true.

    Returns:
        ``(D, H, W)`` bool masks.
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    height, width = image_size
    count, source_height, source_width = masks.shape
    result = torch.zeros((count, height, width), dtype=torch.bool, device=masks.device)
    if count == 0:
        return result
    nonzero = masks != 0
    rows, source_rows, row_weights = _axis_resampling(nonzero.any(dim=2), height)
    cols, source_cols, col_weights = _axis_resampling(nonzero.any(dim=1), width)
    detection = torch.arange(count, device=masks.device)[:, None, None]
    blocks = masks.float()[detection, source_rows[:, :, None], source_cols[:, None, :]]
    values = row_weights @ blocks @ col_weights.transpose(1, 2)
    flat_index = rows[:, :, None] * width + cols[:, None, :]
    result.view(count, -1).scatter_(1, flat_index.flatten(1), (values > threshold).flatten(1))
    return result


def _axis_resampling(active: Tensor, length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear resampling along one axis, restricted to each mask's nonzero samples.

    Args:
        active: ``(D, s)`` bool, the source samples that are nonzero (a contiguous run).
        length: output pixels along the axis.

    Returns:
        ``pixels`` ``(D, n)``: the output pixels that read an active sample (the widest run
        sets ``n``; shorter runs repeat their last pixel), ``samples`` ``(D, m)``: the active
        samples (likewise padded), and ``weights`` ``(D, n, m)`` (zero for padding samples).
        Output pixel ``u`` reads source coordinate ``c = (u + 0.5) * s / length - 0.5``
        clamped to ``[0, s - 1]`` with weight ``max(0, 1 - |c - i|)`` on sample ``i``, as
        ``F.interpolate(mode="bilinear", align_corners=False)`` does.
    """
    source = active.shape[1]
    coords = ((torch.arange(length, device=active.device) + 0.5) * (source / length) - 0.5).clamp(
        0, source - 1
    )
    first, count = _runs(active)
    last = first + count - 1
    reached = (coords[None, :] > first[:, None] - 1) & (coords[None, :] < last[:, None] + 1)
    pixels = _padded_run(*_runs(reached & (count[:, None] > 0)), length)
    samples = _padded_run(first, count, source)
    offsets = torch.arange(samples.shape[1], device=active.device)
    valid = offsets[None, :] < count[:, None]
    distance = (coords[pixels][:, :, None] - samples[:, None, :].float()).abs()
    return pixels, samples, (1 - distance).clamp(min=0) * valid[:, None, :]


def _runs(flags: Tensor) -> tuple[Tensor, Tensor]:
    """First index and length of each row's run of true ``flags`` ``(D, L)`` (length 0 for
    rows with none)."""
    count = flags.sum(dim=1)
    return flags.int().argmax(dim=1), count


def _padded_run(first: Tensor, count: Tensor, length: int) -> Tensor:
    """``(D, n)`` indices ``first .. first + count - 1`` per row, ``n`` the longest run (at
    least 1), padded by repeating the last index (clipped to ``length - 1``)."""
    span = int(count.max().clamp(min=1))
    offsets = torch.arange(span, device=first.device)
    last = first + (count - 1).clamp(min=0)
    return torch.minimum(first[:, None] + offsets[None, :], last[:, None]).clamp(max=length - 1)


def _resize_weights(starts: Tensor, ends: Tensor, source: int, length: int) -> Tensor:
    """``(N, length, source)`` bilinear weights mapping ``source`` samples onto pixels
    ``starts..ends`` (inclusive) of a ``length``-pixel line; rows outside are zero."""
    pixels = torch.arange(length, device=starts.device).expand(len(starts), length)
    return _box_weights(starts, ends, pixels, source)


def _box_weights(starts: Tensor, ends: Tensor, pixels: Tensor, source: int) -> Tensor:
    """``(N, n, source)`` bilinear weights mapping ``source`` samples onto the box
    ``starts..ends`` (inclusive) of a line, at the ``(N, n)`` line ``pixels``; pixels outside
    the box get zero weights.

    Follows ``F.interpolate(mode="bilinear", align_corners=False)``: output pixel ``u`` reads
    source coordinate ``(u + 0.5) * source / extent - 0.5``, clamped at 0, between its two
    neighboring samples (the last sample repeats past the end).
    """
    extent = (ends - starts + 1).clamp(min=1)
    offsets = pixels - starts[:, None]  # (N, n): position inside the box
    inside = (offsets >= 0) & (offsets < extent[:, None])
    scale = source / extent.float()
    coords = ((offsets.float() + 0.5) * scale[:, None] - 0.5).clamp(min=0)
    lower = coords.floor().long().clamp(max=source - 1)
    upper = (lower + 1).clamp(max=source - 1)
    upper_weight = (coords - lower.float()) * inside
    lower_weight = (1 - (coords - lower.float())) * inside
    weights = torch.zeros(*pixels.shape, source, device=starts.device)
    weights.scatter_add_(2, lower[..., None], lower_weight[..., None])
    weights.scatter_add_(2, upper[..., None], upper_weight[..., None])
    return weights
