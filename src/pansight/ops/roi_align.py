"""RoIAlign as two matrix products, for training on CPU.

Bilinear sampling is separable, so for one RoI and one channel ``out = A @ F @ B^T``, ``A``
holding the row weights and ``B`` the column weights (:func:`separable_roi_align`). The result
equals :func:`torchvision.ops.roi_align` (``aligned=False``) up to float rounding, and its
backward is two dense matrix products instead of a serial scatter. Inference keeps
torchvision's kernel, with the RoIs split across threads (:class:`TrainableMultiScaleRoIAlign`).

See docs/models.md for the shapes of the weights and their costs.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign


def axis_weights(starts: Tensor, ends: Tensor, size: int, bins: int, sampling_ratio: int) -> Tensor:
    """Interpolation weights along one axis, ``(R, bins, size)``.

    ``starts``/``ends`` ``(R,)`` are RoI edges in feature-map pixels. Each bin averages
    ``sampling_ratio`` samples spaced evenly inside it; a sample beyond ``[-1, size]`` counts as
    zero and one inside is clamped to the map, as torchvision's RoIAlign does.
    """
    length = (ends - starts).clamp(min=1.0)
    samples = bins * sampling_ratio
    fractions = (torch.arange(samples, device=starts.device, dtype=starts.dtype) + 0.5) / samples
    coords = starts[:, None] + fractions[None] * length[:, None]
    inside = ((coords >= -1.0) & (coords <= size)).to(coords.dtype)
    coords = coords.clamp(min=0.0)
    low = coords.floor().clamp(max=size - 1)
    at_edge = low >= size - 1
    coords = torch.where(at_edge, low, coords)
    high = torch.where(at_edge, low, low + 1)
    frac_high = coords - low
    weights = coords.new_zeros((len(starts), samples, size))
    weights.scatter_add_(2, low.long()[..., None], ((1 - frac_high) * inside)[..., None])
    weights.scatter_add_(2, high.long()[..., None], (frac_high * inside)[..., None])
    return weights.reshape(len(starts), bins, sampling_ratio, size).mean(2)


def separable_roi_align(
    features: Tensor,
    rois: list[Tensor],
    output_size: int,
    spatial_scale: float,
    sampling_ratio: int,
) -> Tensor:
    """RoIAlign of ``features`` ``(B, C, H, W)`` at ``rois`` (per image ``(R_i, 4)`` xyxy in
    input pixels) -> ``(sum R_i, C, output_size, output_size)``, rows in ``rois`` order."""
    _, channels, height, width = features.shape
    pooled = []
    for image_features, boxes in zip(features, rois):
        if len(boxes) == 0:
            pooled.append(features.new_zeros((0, channels, output_size, output_size)))
            continue
        scaled = boxes.to(features.dtype) * spatial_scale
        rows = axis_weights(scaled[:, 1], scaled[:, 3], height, output_size, sampling_ratio)
        cols = axis_weights(scaled[:, 0], scaled[:, 2], width, output_size, sampling_ratio)
        # (R * P, H) @ (H, C * W) -> (R, P, C, W): the rows of every bin, every channel.
        by_rows = rows.reshape(-1, height) @ image_features.transpose(0, 1).reshape(height, -1)
        by_rows = by_rows.reshape(len(boxes), output_size * channels, width)
        # (R, P * C, W) @ (R, W, Q) -> (R, P, C, Q).
        out = torch.bmm(by_rows, cols.transpose(1, 2))
        pooled.append(out.reshape(len(boxes), output_size, channels, output_size).transpose(1, 2))
    return torch.cat(pooled)


def fpn_levels(boxes: Tensor, min_level: int, max_level: int) -> Tensor:
    """Pyramid level of each ``(R, 4)`` box by the FPN paper's rule (canonical size 224 on
    level 4), clamped to ``[min_level, max_level]``; returns ``(R,)`` int64."""
    side = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    levels = torch.floor(4 + torch.log2(side / 224) + 1e-6)
    return levels.clamp(min_level, max_level).long()


PARALLEL_MIN_ROIS = 64
"""Fewest RoIs worth splitting across threads at inference."""


class TrainableMultiScaleRoIAlign(MultiScaleRoIAlign):
    """:class:`torchvision.ops.MultiScaleRoIAlign` whose features may need gradients, and
    whose CPU inference uses every intra-op thread.

    When gradients flow (training) it pools with :func:`separable_roi_align`. Otherwise it is
    torchvision's module, but on a CPU with several threads (``torch.get_num_threads()``) the
    RoIs are split into that many contiguous parts pooled at once on worker threads:
    torchvision's CPU kernel runs on one thread. Every path picks each RoI's level by the same
    FPN rule, and the split path returns exactly torchvision's tensor.
    """

    def forward(
        self,
        x: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> Tensor:
        levels = [x[name] for name in self.featmap_names]
        if torch.is_grad_enabled() and any(level.requires_grad for level in levels):
            return self._separable_forward(levels, boxes, image_shapes)
        workers = torch.get_num_threads()
        rois = sum(len(image_boxes) for image_boxes in boxes)
        if levels[0].device.type != "cpu" or workers < 2 or rois < PARALLEL_MIN_ROIS:
            return super().forward(x, boxes, image_shapes)
        return self._parallel_forward(x, boxes, image_shapes, workers)

    def _parallel_forward(
        self,
        x: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
        workers: int,
    ) -> Tensor:
        """torchvision's pooling of ``workers`` contiguous parts of every image's RoIs, run at
        once (the kernel releases the GIL), reassembled in the input order."""
        splits = [image_boxes.tensor_split(workers) for image_boxes in boxes]
        parts = [[split[k] for split in splits] for k in range(workers)]
        inference = torch.is_inference_mode_enabled()
        # Threads live for this call only: an OpenMP runtime keeps a thread team for every
        # thread that ran a parallel op, and idle teams slow every later parallel op.
        with ThreadPoolExecutor(max_workers=workers - 1) as pool:
            pending = [
                pool.submit(self._pool_part, x, part, image_shapes, inference) for part in parts[1:]
            ]
            pooled = [super().forward(x, parts[0], image_shapes)]
            pooled += [future.result() for future in pending]
        per_image = [
            result.split([len(image_boxes) for image_boxes in part])
            for result, part in zip(pooled, parts)
        ]
        return torch.cat([per_image[k][i] for i in range(len(boxes)) for k in range(workers)])

    def _pool_part(
        self,
        x: dict[str, Tensor],
        boxes: list[Tensor],
        image_shapes: list[tuple[int, int]],
        inference: bool,
    ) -> Tensor:
        """torchvision's pooling on a worker thread, in the caller's gradient mode (thread
        local)."""
        with torch.inference_mode(inference), torch.no_grad():
            return super().forward(x, boxes, image_shapes)

    def _separable_forward(
        self, levels: list[Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        max_height = max(height for height, _ in image_shapes)
        max_width = max(width for _, width in image_shapes)
        scales = [_level_scale(level.shape[-2:], (max_height, max_width)) for level in levels]
        min_level = -round(math.log2(scales[0]))
        max_level = -round(math.log2(scales[-1]))
        output_size = self.output_size[0]
        channels = levels[0].shape[1]
        counts = [len(b) for b in boxes]
        all_boxes = torch.cat(boxes)
        assigned = fpn_levels(all_boxes, min_level, max_level) - min_level
        image_index = torch.repeat_interleave(
            torch.arange(len(boxes), device=all_boxes.device),
            torch.tensor(counts, device=all_boxes.device),
        )
        result = levels[0].new_zeros((len(all_boxes), channels, output_size, output_size))
        for level_index, (features, scale) in enumerate(zip(levels, scales)):
            # Ascending indices: grouped by image, in the order the pooled rows come out.
            indices = torch.nonzero(assigned == level_index)[:, 0]
            if len(indices) == 0:
                continue
            owners = image_index[indices]
            per_image = [all_boxes[indices[owners == i]] for i in range(len(boxes))]
            pooled = separable_roi_align(
                features, per_image, output_size, scale, self.sampling_ratio
            )
            result = result.index_put((indices,), pooled)
        return result


def _level_scale(feature_size: torch.Size, image_size: tuple[int, int]) -> float:
    """``2 ** round(log2(feature_height / image_height))``: each level's scale as torchvision
    infers it."""
    return 2.0 ** round(math.log2(float(feature_size[0]) / float(image_size[0])))
