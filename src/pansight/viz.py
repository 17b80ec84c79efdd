"""Pictures of results and ground truth: boxes, captions, masks, class colors, panoptic maps.

Every drawing function takes an image ``(3, H, W)`` float in ``[0, 1]`` and returns a new
``(3, H', W')`` uint8 picture. Small images are first enlarged by a whole factor (nearest
neighbor) so that the short side is at least :data:`MIN_DRAW_SIDE` pixels and captions stay
readable; semantic and panoptic pictures also get a legend strip below the image.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from pansight.structures import (
    IGNORE_LABEL,
    Classification,
    Detections,
    Localization,
    PanopticMap,
    Result,
    SemanticMap,
    Target,
)

Color = tuple[int, int, int]

MIN_DRAW_SIDE = 192
"""Images whose short side is smaller are enlarged before drawing."""

MASK_ALPHA = 0.5
"""Opacity of masks and class-color maps over the image."""

VOID_COLOR: Color = (0, 0, 0)
"""Color of ignored / unassigned pixels in semantic and panoptic pictures."""

_DISTINCT_COLORS: tuple[Color, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)


def palette(num_colors: int) -> list[Color]:
    """``num_colors`` fixed RGB colors: twenty hand-picked distinct ones, then golden-ratio hues.

    Color ``i`` is the same whatever ``num_colors`` is, so label ``i`` always has one color.
    """
    colors = list(_DISTINCT_COLORS[:num_colors])
    golden_ratio = (math.sqrt(5) - 1) / 2
    for index in range(len(colors), num_colors):
        hue = (index * golden_ratio) % 1.0
        red, green, blue = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
        colors.append((round(red * 255), round(green * 255), round(blue * 255)))
    return colors


def class_color(label: int) -> Color:
    """The palette color of contiguous label ``label``."""
    return palette(label + 1)[label]


DRAW_MIN_SCORE = 0.3
"""Detections scoring below this are left out of pictures (they stay in the results)."""


def draw_result(
    image: Tensor, result: Result, class_names: list[str], min_score: float = DRAW_MIN_SCORE
) -> Tensor:
    """Draw a model's result (in original-image pixels) over its image ``(3, H, W)`` in [0, 1].

    Classification: a caption with the class and score. Localization: its box and caption.
    Detections scoring at least ``min_score``: masks and boxes in one color per instance (per
    track id when present) with class-and-score captions. SemanticMap: class colors and a
    legend. PanopticMap: one color per segment (stuff in its class color, things in shades of
    it) and a legend.

    Returns:
        ``(3, H', W')`` uint8, where ``H' = s * H`` (plus a legend strip) for the enlargement
        factor ``s`` (``1`` when the short side is already >= :data:`MIN_DRAW_SIDE`).
    """
    if isinstance(result, Detections):
        result = result.above(min_score)
    return _draw(image, result, class_names, show_scores=True)


def draw_target(
    image: Tensor, target: Target, class_names: list[str], task: str | None = None
) -> Tensor:
    """Draw ground truth over its image, as :func:`draw_result` draws a result of ``task``.

    ``task`` (``classify``, ``localize``, ``detect``, ``semantic``, ``instance``, ``panoptic``)
    chooses which fields of the target to draw, and ``class_names`` must name that task's label
    space (the semantic classes for ``semantic`` and ``panoptic``). ``None`` picks the highest
    rung in the object label space that the target carries: ``instance`` (masks), ``detect``
    (boxes), ``localize`` (one box) or ``classify``.
    """
    result = _target_as_result(target, task or _object_task(target), len(class_names))
    return _draw(image, result, class_names, show_scores=False)


def image_grid(images: list[Tensor], ncol: int) -> Tensor:
    """Tile pictures (uint8, or float in [0, 1]) ``ncol`` per row; smaller ones padded white.

    Returns:
        ``(3, H, W)`` uint8 grid.
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    pictures = [_to_uint8(image) for image in images]
    height = max(picture.shape[1] for picture in pictures)
    width = max(picture.shape[2] for picture in pictures)
    padded = [_pad_to(picture, height, width) for picture in pictures]
    return make_grid(padded, nrow=ncol, padding=4, pad_value=255)


def with_title(picture: Tensor, title: str, size: int = 14) -> Tensor:
    """A ``(3, H, W)`` uint8 picture below a white strip holding ``title`` in black.

    The result is as wide as the wider of the two; the picture is padded white on the right.
    """
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox(
        (0, 0), title, font=font
    )
    width = max(picture.shape[-1], right - left + 8)
    strip = Image.new("RGB", (width, bottom - top + 8), "white")
    ImageDraw.Draw(strip).text((4 - left, 4 - top), title, fill="black", font=font)
    header = torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)
    return torch.cat([header, _pad_to(_to_uint8(picture), picture.shape[-2], width)], dim=1)


def save_png(picture: Tensor, path: str | Path) -> None:
    """Write a ``(3, H, W)`` uint8 picture as a PNG file (parent folders are created)."""
    if picture.dtype != torch.uint8 or picture.dim() != 3 or picture.shape[0] != 3:
        raise ValueError(
            f"save_png needs a (3, H, W) uint8 tensor, got {picture.dtype} {tuple(picture.shape)}"
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture.permute(1, 2, 0).cpu().numpy()).save(path, format="PNG")


def _draw(image: Tensor, result: Result, class_names: list[str], show_scores: bool) -> Tensor:
    canvas, factor = _enlarged(image)
    if isinstance(result, Classification):
        caption = _caption(class_names, result.label, result.score, show_scores)
        return _write_captions(canvas, [((0, 0), caption, class_color(result.label))])
    if isinstance(result, Localization):
        detections = Detections(
            result.box[None], torch.tensor([result.score]), torch.tensor([result.label])
        )
        return _draw_detections(canvas, factor, detections, class_names, show_scores, by_class=True)
    if isinstance(result, Detections):
        return _draw_detections(canvas, factor, result, class_names, show_scores, by_class=False)
    if isinstance(result, SemanticMap):
        return _draw_semantic(canvas, factor, result, class_names)
    if isinstance(result, PanopticMap):
        return _draw_panoptic(canvas, factor, result, class_names)
    raise TypeError(f"cannot draw a {type(result).__name__}")


def _draw_detections(
    canvas: Tensor,
    factor: int,
    detections: Detections,
    class_names: list[str],
    show_scores: bool,
    by_class: bool,
) -> Tensor:
    """Masks, boxes and captions; colors by class (``by_class``) or per instance/track."""
    if len(detections) == 0:
        return canvas
    labels = detections.labels.tolist()
    if by_class:
        colors = [class_color(label) for label in labels]
    else:
        keys = detections.track_ids if detections.track_ids is not None else range(len(labels))
        colors = [class_color(int(key)) for key in keys]
    if detections.masks is not None:
        masks = _enlarge(detections.masks.cpu(), factor)
        _check_size(masks.shape[-2:], canvas.shape[-2:], "Detections.masks")
        canvas = draw_segmentation_masks(canvas, masks, alpha=MASK_ALPHA, colors=colors)
    boxes = detections.boxes.detach().float().cpu() * factor
    canvas = draw_bounding_boxes(canvas, boxes, colors=colors, width=max(2, factor))
    captions = [
        ((box[0], box[1]), _caption(class_names, label, float(score), show_scores), color)
        for box, label, score, color in zip(boxes.tolist(), labels, detections.scores, colors)
    ]
    return _write_captions(canvas, captions)


def _draw_semantic(
    canvas: Tensor, factor: int, semantic: SemanticMap, class_names: list[str]
) -> Tensor:
    """Class colors blended over the image, and a legend of the classes present."""
    labels = _enlarge(semantic.labels.cpu(), factor)
    _check_size(labels.shape, canvas.shape[-2:], "SemanticMap.labels")
    lookup = torch.tensor(palette(IGNORE_LABEL) + [VOID_COLOR], dtype=torch.float32)
    colors = lookup[labels.clamp(0, IGNORE_LABEL)].permute(2, 0, 1)
    present = sorted({int(label) for label in labels.unique()} - {IGNORE_LABEL})
    return _with_legend(_blend(canvas, colors), present, class_names)


def _draw_panoptic(
    canvas: Tensor, factor: int, panoptic: PanopticMap, class_names: list[str]
) -> Tensor:
    """Each segment in its own color blended over the image, and a legend of its classes."""
    ids = _enlarge(panoptic.ids.cpu(), factor)
    _check_size(ids.shape, canvas.shape[-2:], "PanopticMap.ids")
    colors = torch.tensor(VOID_COLOR, dtype=torch.float32).view(3, 1, 1).repeat(1, *ids.shape)
    shade_of_class: dict[int, int] = {}
    for segment in panoptic.segments:
        color = class_color(segment.label)
        if segment.is_thing:
            shade = shade_of_class.get(segment.label, 0)
            shade_of_class[segment.label] = shade + 1
            color = _shade(color, shade)
        colors[:, ids == segment.id] = torch.tensor(color, dtype=torch.float32)[:, None]
    present = sorted({segment.label for segment in panoptic.segments})
    return _with_legend(_blend(canvas, colors), present, class_names)


def _target_as_result(target: Target, task: str, num_classes: int) -> Result:
    """The ground truth of ``task`` in ``target`` as the result type a model of it returns."""
    if task in ("classify", "localize") and target.label is not None:
        scores = torch.nn.functional.one_hot(torch.tensor(target.label), num_classes).float()
        if task == "classify":
            return Classification(target.label, 1.0, scores)
        if target.box is not None:
            return Localization(target.label, 1.0, target.box, scores)
    if task in ("detect", "instance"):
        masks = target.masks if task == "instance" else None
        ones = torch.ones(len(target.labels))
        return Detections(target.boxes, ones, target.labels, masks, target.track_ids)
    if task == "semantic" and target.semantic is not None:
        return SemanticMap(target.semantic)
    if task == "panoptic" and target.panoptic is not None:
        return target.panoptic
    raise ValueError(f"image {target.image_id}: the target has no ground truth for task {task!r}")


def _object_task(target: Target) -> str:
    """The highest rung in the object label space whose ground truth ``target`` carries."""
    if target.masks is not None and len(target.masks) > 0:
        return "instance"
    if len(target.boxes) > 0:
        return "detect"
    return "localize" if target.box is not None else "classify"


def _to_uint8(image: Tensor) -> Tensor:
    if image.dtype == torch.uint8:
        return image.cpu()
    return image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def _enlarged(image: Tensor) -> tuple[Tensor, int]:
    """A uint8 copy of ``image`` enlarged by the whole factor that makes it readable."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    factor = max(1, math.ceil(MIN_DRAW_SIDE / min(image.shape[-2:])))
    return _enlarge(_to_uint8(image), factor), factor


def _enlarge(maps: Tensor, factor: int) -> Tensor:
    """Nearest-neighbor enlargement of the last two dimensions by ``factor``."""
    return maps.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def _check_size(size: tuple[int, ...], expected: tuple[int, ...], what: str) -> None:
    if tuple(size) != tuple(expected):
        raise ValueError(f"{what} has size {tuple(size)} but the image is {tuple(expected)}")


def _blend(canvas: Tensor, colors: Tensor) -> Tensor:
    """``canvas`` uint8 ``(3, H, W)`` mixed with float ``colors`` ``(3, H, W)`` at MASK_ALPHA."""
    mixed = canvas.float() * (1 - MASK_ALPHA) + colors * MASK_ALPHA
    return mixed.round().to(torch.uint8)


def _shade(color: Color, index: int) -> Color:
    """The ``index``-th shade of ``color``: alternately lighter and darker, further each time."""
    if index == 0:
        return color
    step = 0.25 * ((index + 1) // 2)
    target = 255 if index % 2 else 0
    return tuple(round(c + (target - c) * min(step, 0.75)) for c in color)


def _caption(class_names: list[str], label: int, score: float, show_score: bool) -> str:
    name = class_names[label] if 0 <= label < len(class_names) else f"class {label}"
    return f"{name} {score:.2f}" if show_score else name


def _font(canvas: Tensor) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(12, min(canvas.shape[-2:]) // 14))


def _write_captions(
    canvas: Tensor, captions: list[tuple[tuple[float, float], str, Color]]
) -> Tensor:
    """Write each ``(anchor xy, text, color)`` on a filled label just above ``xy``.

    The label sits below ``xy`` where there is no room above, and is kept inside the picture.
    """
    picture = Image.fromarray(canvas.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(picture)
    font = _font(canvas)
    for (x, y), text, color in captions:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        width, height = right - left + 4, bottom - top + 4
        x = min(max(0, x), picture.width - width)
        y = y - height if y >= height else min(max(0, y), picture.height - height)
        draw.rectangle((x, y, x + width, y + height), fill=color)
        draw.text((x + 2 - left, y + 2 - top), text, fill=_text_color(color), font=font)
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def _with_legend(canvas: Tensor, labels: list[int], class_names: list[str]) -> Tensor:
    """``canvas`` with a white strip below it naming each label beside its color swatch."""
    font = _font(canvas)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = measure.textbbox((0, 0), "Ag", font=font)[3] + 6
    entries, rows, x = [], 0, 4
    for label in labels:
        text = _caption(class_names, label, 0.0, show_score=False)
        width = line_height + measure.textlength(text, font=font) + 12
        if x + width > canvas.shape[-1] and x > 4:
            rows, x = rows + 1, 4
        entries.append((x, rows * line_height + 3, label, text))
        x += width
    strip = Image.new("RGB", (canvas.shape[-1], (rows + 1) * line_height + 6), "white")
    draw = ImageDraw.Draw(strip)
    swatch = line_height - 6
    for x, y, label, text in entries:
        draw.rectangle((x, y, x + swatch, y + swatch), fill=class_color(label), outline="black")
        draw.text((x + swatch + 4, y), text, fill="black", font=font)
    legend = torch.from_numpy(np.asarray(strip).copy()).permute(2, 0, 1)
    return torch.cat([canvas, legend], dim=1)


def _text_color(background: Color) -> Color:
    """Black on light backgrounds, white on dark ones."""
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)


def _pad_to(picture: Tensor, height: int, width: int) -> Tensor:
    padded = picture.new_full((3, height, width), 255)
    padded[:, : picture.shape[1], : picture.shape[2]] = picture
    return padded
