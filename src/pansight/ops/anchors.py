"""Anchor boxes for every location of every pyramid level."""

from __future__ import annotations

import torch
from torch import Tensor

from pansight.errors import ConfigError


class AnchorGenerator:
    """One set of anchors (every size x aspect ratio) centered on each feature-map location.

    Level ``i`` uses ``sizes[i]``; an anchor of size ``s`` and aspect ratio ``r = h / w`` has
    ``w = s / sqrt(r)``, ``h = s * sqrt(r)``, rounded to whole pixels. Anchors of one location
    are ordered ratio-major, size-minor; locations row-major, matching the RPN head's layout.

    Args:
        sizes: anchor sizes per level, e.g. ``((32,), (64,), (128,), (256,), (512,))``.
        aspect_ratios: ratios ``h / w`` used at every level.
    """

    def __init__(
        self, sizes: tuple[tuple[int, ...], ...], aspect_ratios: tuple[float, ...]
    ) -> None:
        if not sizes or not aspect_ratios or any(not level for level in sizes):
            raise ConfigError("anchor sizes and aspect_ratios must not be empty")
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.sizes[0]) * len(self.aspect_ratios)

    def cell_anchors(self, level: int) -> Tensor:
        """``(A, 4)`` xyxy anchors centered on the origin for pyramid level ``level``."""
        scales = torch.as_tensor(self.sizes[level], dtype=torch.float32)
        h_ratios = torch.sqrt(torch.as_tensor(self.aspect_ratios, dtype=torch.float32))
        widths = (scales[None, :] / h_ratios[:, None]).reshape(-1)
        heights = (scales[None, :] * h_ratios[:, None]).reshape(-1)
        return (torch.stack([-widths, -heights, widths, heights], dim=1) / 2).round()

    def __call__(
        self,
        feature_sizes: list[tuple[int, int]],
        padded_size: tuple[int, int],
        device: torch.device,
    ) -> list[Tensor]:
        """Anchors per level, each ``(h_i * w_i * A, 4)`` in padded-input pixels.

        Args:
            feature_sizes: ``(h_i, w_i)`` of each level's feature map.
            padded_size: ``(H, W)`` of the padded input batch; a level's stride is
                ``H // h_i`` by ``W // w_i``.
        """
        if len(feature_sizes) != len(self.sizes):
            raise ConfigError(
                f"{len(self.sizes)} anchor size levels for {len(feature_sizes)} feature maps"
            )
        anchors = []
        for level, (height, width) in enumerate(feature_sizes):
            stride_y, stride_x = padded_size[0] // height, padded_size[1] // width
            shift_y = torch.arange(height, dtype=torch.float32, device=device) * stride_y
            shift_x = torch.arange(width, dtype=torch.float32, device=device) * stride_x
            grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack([grid_x, grid_y, grid_x, grid_y], dim=-1).reshape(-1, 1, 4)
            cell = self.cell_anchors(level).to(device)
            anchors.append((shifts + cell[None]).reshape(-1, 4))
        return anchors
