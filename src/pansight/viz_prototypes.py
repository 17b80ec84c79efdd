"""Pictures of how YOLACT assembles its masks from prototypes and per-detection coefficients.

:func:`draw_mask_composition` draws one image's grid of ``k`` prototype masks, then one row per
detection (the highest scores first): the image with the detection's final mask and box, its
``k`` coefficients as bars, and its assembled mask probabilities ``sigmoid(sum_j c_j P_j)``
cropped to its box. Tiles keep the image's aspect ratio.

See docs/demo.md for the layout, colors and scales.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from pansight.structures import Detections
from pansight.viz import Color, class_color, image_grid, with_title

if TYPE_CHECKING:
    from pansight.models.yolact.model import MaskComposition

TILE_SIDE = 96
"""Long side of every tile (prototype, detection, assembled mask) in pixels."""

PROTOTYPES_PER_ROW = 8
MAX_DETECTIONS_SHOWN = 8
POSITIVE_COLOR: Color = (30, 90, 210)
NEGATIVE_COLOR: Color = (215, 50, 40)
BAR_WIDTH = 8
"""Width of one coefficient's bar (one pixel of it is the gap to the next)."""

STRONGEST_SHOWN = 3
"""Coefficients of largest magnitude named in each detection's title."""


def draw_mask_composition(
    image: Tensor,
    detections: Detections,
    composition: MaskComposition,
    class_names: list[str],
    max_detections: int = MAX_DETECTIONS_SHOWN,
) -> Tensor:
    """The prototypes of one image and, for its ``max_detections`` best detections, their
    coefficients and assembled masks (docs/demo.md describes the layout).

    Args:
        image: ``(3, H, W)`` float in ``[0, 1]``, the original image.
        detections: its detections (original-image pixels), in the order of ``composition``.
        composition: its prototypes ``(k, Hp, Wp)``, coefficients ``(D, k)`` and boxes.
        class_names: one name per label.

    Returns:
        ``(3, H', W')`` uint8 picture.
    """
    tile_size = _tile_size(tuple(image.shape[-2:]))
    prototypes = composition.prototypes.detach().float().cpu()
    grid = with_title(
        _prototype_grid(prototypes, tile_size),
        f"{len(prototypes)} prototypes P_j (each scaled to its own min..max)",
    )
    order = detections.scores.detach().cpu().argsort(descending=True)[:max_detections].tolist()
    if not order:
        return _stack([grid, with_title(_blank(tile_size), "no detections")], axis=1)
    probabilities = composition.mask_probabilities().detach().float().cpu()
    rows = [
        _detection_row(image, detections, composition, probabilities, index, class_names)
        for index in order
    ]
    header = (
        f"detections: final mask | coefficients c_j, j = 0..{len(prototypes) - 1} "
        "(blue > 0, red < 0) | sigmoid(sum c_j P_j) cropped to the box"
    )
    return _stack([grid, with_title(_stack(rows, axis=1), header)], axis=1)


def _detection_row(
    image: Tensor,
    detections: Detections,
    composition: MaskComposition,
    probabilities: Tensor,
    index: int,
    class_names: list[str],
) -> Tensor:
    """Detection ``index``: its final mask over the image, its coefficient bars and its
    assembled mask, under a title naming it and its strongest coefficients."""
    color = class_color(index)
    tile_size = _tile_size(tuple(image.shape[-2:]))
    coefficients = composition.coefficients[index].detach().float().cpu()
    box = composition.boxes[index].detach().float().cpu()
    tiles = [
        _detection_tile(image, detections, index, color, tile_size),
        _coefficient_bars(coefficients, tile_size[0]),
        _assembled_tile(probabilities[index], box, color, tile_size),
    ]
    label = int(detections.labels[index])
    name = class_names[label] if 0 <= label < len(class_names) else f"class {label}"
    strongest = coefficients.abs().argsort(descending=True)[:STRONGEST_SHOWN].tolist()
    named = ", ".join(f"{float(coefficients[j]):+.2f} P_{j}" for j in strongest)
    title = f"#{index} {name} {float(detections.scores[index]):.2f}   strongest: {named}"
    return with_title(_stack(tiles, axis=2), title, size=12)


def _tile_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` with the image's aspect ratio and a long side of :data:`TILE_SIDE`."""
    height, width = image_size
    scale = TILE_SIDE / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resized(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``(C, h, w)`` float maps resized bilinearly (antialiased) to ``size``."""
    resized = F.interpolate(maps[None], size, mode="bilinear", align_corners=False, antialias=True)
    return resized[0]


def _gray(maps: Tensor) -> Tensor:
    """``(h, w)`` float in ``[0, 1]`` -> ``(3, h, w)`` uint8 gray picture."""
    return maps.clamp(0, 1).mul(255).round().to(torch.uint8).expand(3, -1, -1).contiguous()


def _prototype_grid(prototypes: Tensor, tile_size: tuple[int, int]) -> Tensor:
    """``(k, Hp, Wp)`` prototypes as captioned gray tiles, :data:`PROTOTYPES_PER_ROW` a row."""
    flat = prototypes.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    spread = (high - low).clamp(min=1e-12)[:, None, None]
    scaled = _resized((prototypes - low[:, None, None]) / spread, tile_size)
    tiles = [_stamp(_gray(tile), str(j), (200, 30, 30)) for j, tile in enumerate(scaled)]
    return image_grid(tiles, ncol=min(PROTOTYPES_PER_ROW, len(tiles)))


def _detection_tile(
    image: Tensor, detections: Detections, index: int, color: Color, tile_size: tuple[int, int]
) -> Tensor:
    """The image at tile size with detection ``index``'s mask (if any) and box drawn."""
    height, width = image.shape[-2:]
    tile = _resized(image.detach().float().cpu(), tile_size).clamp(0, 1).mul(255).round()
    tile = tile.to(torch.uint8)
    if detections.masks is not None:
        mask = detections.masks[index].detach().float().cpu()[None, None]
        small = F.interpolate(mask, tile_size, mode="nearest")[0] > 0.5
        tile = draw_segmentation_masks(tile, small, alpha=0.5, colors=[color])
    scale = torch.tensor([tile_size[1] / width, tile_size[0] / height] * 2)
    box = detections.boxes[index].detach().float().cpu() * scale
    return draw_bounding_boxes(tile, box[None], colors=[color], width=2)


def _assembled_tile(
    probabilities: Tensor, box: Tensor, color: Color, tile_size: tuple[int, int]
) -> Tensor:
    """``(Hp, Wp)`` mask probabilities as a gray tile with the relative xyxy ``box`` outlined."""
    tile = _gray(_resized(probabilities[None], tile_size)[0])
    corners = box.clamp(0, 1) * torch.tensor([tile_size[1], tile_size[0]] * 2)
    x0, x1 = sorted((float(corners[0]), float(corners[2])))
    y0, y1 = sorted((float(corners[1]), float(corners[3])))
    outline = torch.tensor([[x0, y0, x1, y1]])
    return draw_bounding_boxes(tile, outline, colors=[color], width=1)


def _coefficient_bars(coefficients: Tensor, height: int) -> Tensor:
    """``(k,)`` coefficients in ``[-1, 1]`` as bars about a zero line, indices every 8 below."""
    font = ImageFont.load_default(size=10)
    chart_height = max(height, 24)
    middle = chart_height // 2
    width = len(coefficients) * BAR_WIDTH + 2
    picture = Image.new("RGB", (width, chart_height + 14), "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, width - 1, chart_height - 1), outline=(190, 190, 190))
    for j, value in enumerate(coefficients.clamp(-1, 1).tolist()):
        left = 1 + j * BAR_WIDTH
        end = middle - round(value * (middle - 1))
        color = POSITIVE_COLOR if value >= 0 else NEGATIVE_COLOR
        draw.rectangle((left, min(middle, end), left + BAR_WIDTH - 2, max(middle, end)), fill=color)
        if j % 8 == 0:
            draw.text((left, chart_height + 1), str(j), fill="black", font=font)
    draw.line((0, middle, width - 1, middle), fill="black")
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def _stamp(tile: Tensor, text: str, background: Color) -> Tensor:
    """``tile`` with ``text`` in white on a ``background`` label in its top-left corner."""
    picture = Image.fromarray(tile.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=11)
    right, bottom = draw.textbbox((2, 1), text, font=font)[2:]
    draw.rectangle((0, 0, right + 2, bottom + 2), fill=background)
    draw.text((2, 1), text, fill=(255, 255, 255), font=font)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def _blank(tile_size: tuple[int, int]) -> Tensor:
    return torch.full((3, *tile_size), 255, dtype=torch.uint8)


def _stack(pictures: list[Tensor], axis: int, gap: int = 6) -> Tensor:
    """uint8 ``(3, h, w)`` pictures one below another (``axis=1``) or side by side
    (``axis=2``), ``gap`` white pixels apart, padded white only across that axis."""
    across = 3 - axis
    size = max(picture.shape[across] for picture in pictures)
    parts = []
    for picture in pictures:
        shape = list(picture.shape)
        shape[across] = size
        padded = picture.new_full(shape, 255)
        padded.narrow(across, 0, picture.shape[across]).copy_(picture)
        shape[axis] = gap
        parts += [padded, picture.new_full(shape, 255)]
    return torch.cat(parts[:-1], dim=axis)
