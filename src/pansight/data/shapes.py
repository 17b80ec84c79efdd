"""The embedded synthetic world: colored things over textured stuff, with targets for every rung.

A sample is a landscape of stuff (sky, grass, road, water) with things (circle, square, triangle,
star, ring) drawn over it, later things occluding earlier ones; the owner of every pixel is known
exactly, so one render fills every field of a :class:`~pansight.structures.Target`. Every sample
is a function of ``(seed, split, index)`` alone. :func:`render_sample` draws one sample;
:class:`ShapesDataset` serves them.

See docs/data.md for the world, the pixel and box conventions and determinism.
"""

from __future__ import annotations

import colorsys
import math
import zlib
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pansight.data.coco import mask_boxes
from pansight.data.images import image_from_array
from pansight.data.sample_cache import SampleCache
from pansight.errors import ConfigError
from pansight.structures import PanopticMap, Segment, Size, Target

THING_CLASSES = ("circle", "square", "triangle", "star", "ring")
STUFF_CLASSES = ("sky", "grass", "road", "water")
ALL_CLASSES = THING_CLASSES + STUFF_CLASSES
THING_FLAGS = [True] * len(THING_CLASSES) + [False] * len(STUFF_CLASSES)
COCO_CATEGORY_IDS = (1, 3, 5, 7, 9, 11, 13, 15, 17)
"""Category id of each class of ``ALL_CLASSES`` in COCO files (non-contiguous on purpose)."""

SKY, GRASS, ROAD, WATER = (ALL_CLASSES.index(name) for name in STUFF_CLASSES)
GROUND_LABELS = (GRASS, ROAD, WATER)
STUFF_COLORS = {
    SKY: (125, 180, 235),
    GRASS: (70, 145, 60),
    ROAD: (105, 105, 110),
    WATER: (35, 85, 165),
}

MODES = ("single", "multi")
MIN_IMAGE_SIDE = 16
SINGLE_RADIUS = (0.2, 0.34)
"""Circumradius range of the one thing of single mode, as a fraction of the image's shorter side."""
MULTI_RADIUS = (0.09, 0.22)
"""Circumradius range of multi-mode things, as a fraction of the image's shorter side."""
MIN_RADIUS = 5.0
"""Smallest circumradius in pixels, so that even the smallest thing shows enough pixels."""
STAR_INNER = 0.45
"""Radius of a star's inner corners, relative to its circumradius."""
RING_HOLE = 0.55
"""Radius of a ring's hole, relative to its outer radius."""
MIN_VISIBLE_PIXELS = 20
MIN_VISIBLE_FRACTION = 0.2
"""A thing is drawn only where it shows at least ``MIN_VISIBLE_PIXELS`` pixels and this fraction
of its area inside the image; a thing hidden more than that is left out of picture and targets."""
MIN_COLOR_DISTANCE = 90.0
"""Least RGB distance of a thing's color from the stuff colors and from the other things'."""
COLOR_TRIES = 30


@dataclass(frozen=True)
class Thing:
    """One object of the world.

    Attributes:
        label: index into ``THING_CLASSES``.
        center: ``(x, y)`` in pixels.
        radius: circumradius in pixels.
        angle: rotation in radians.
        color: ``(r, g, b)`` in ``0..255``.
    """

    label: int
    center: tuple[float, float]
    radius: float
    angle: float
    color: tuple[int, int, int]

    def mask(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """``(H, W)`` bool: pixels whose centers ``xs, ys`` (each ``(H, W)``) lie in the shape."""
        dx, dy = xs - self.center[0], ys - self.center[1]
        name = THING_CLASSES[self.label]
        if name in ("circle", "ring"):
            squared = dx * dx + dy * dy
            inside = squared <= self.radius**2
            if name == "ring":
                inside &= squared >= (RING_HOLE * self.radius) ** 2
            return inside
        corners = {"square": 4, "triangle": 3, "star": 10}[name]
        radii = np.full(corners, self.radius)
        if name == "star":
            radii[1::2] *= STAR_INNER
        theta = self.angle - math.pi / 2 + 2 * math.pi * np.arange(corners) / corners
        return _inside_polygon(dx, dy, radii * np.cos(theta), radii * np.sin(theta))


def _inside_polygon(
    xs: np.ndarray, ys: np.ndarray, corner_xs: np.ndarray, corner_ys: np.ndarray
) -> np.ndarray:
    """Even-odd rule: a point is inside when a ray to its right crosses the outline an odd
    number of times."""
    inside = np.zeros(xs.shape, dtype=bool)
    previous = len(corner_xs) - 1
    for current in range(len(corner_xs)):
        x0, y0 = corner_xs[previous], corner_ys[previous]
        x1, y1 = corner_xs[current], corner_ys[current]
        previous = current
        if y0 == y1:
            continue
        spans_row = (ys < y0) != (ys < y1)
        inside ^= spans_row & (xs < x0 + (ys - y0) * (x1 - x0) / (y1 - y0))
    return inside


def sample_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of sample ``index`` of ``split``; ``stream`` separates images from clips."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index, stream])


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(xs, ys)``, each ``(H, W)`` float: the coordinates of every pixel's center."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    return xs, ys


def render_background(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Textured stuff: sky above a wavy horizon, two or three ground regions below it.

    Returns:
        ``rgb``: ``(H, W, 3)`` uint8 image; ``stuff``: ``(H, W)`` int64 labels in ``ALL_CLASSES``.
    """
    xs, ys = pixel_grid(height, width)
    horizon = height * rng.uniform(0.25, 0.45) + height * rng.uniform(0.03, 0.08) * np.sin(
        2 * math.pi * xs / (width * rng.uniform(0.5, 1.5)) + rng.uniform(0, 2 * math.pi)
    )
    ground = rng.permutation(GROUND_LABELS)[: rng.integers(2, len(GROUND_LABELS) + 1)]
    region = np.zeros((height, width), dtype=np.int64)
    for border in np.sort(rng.uniform(0.15, 0.85, len(ground) - 1)):
        slope, wave = rng.uniform(-0.5, 0.5), rng.uniform(0.02, 0.06) * width
        border_xs = (
            border * width + slope * (ys - height) + wave * np.sin(ys * rng.uniform(0.1, 0.3))
        )
        region += xs >= border_xs
    stuff = np.where(ys < horizon, SKY, ground[region]).astype(np.int64)
    rgb = np.zeros((height, width, 3))
    for label in STUFF_COLORS:
        inside = stuff == label
        rgb[inside] = _texture(rng, label, xs[inside], ys[inside], height)
    return rgb.clip(0, 255).astype(np.uint8), stuff


def _texture(
    rng: np.random.Generator, label: int, xs: np.ndarray, ys: np.ndarray, height: int
) -> np.ndarray:
    """``(P, 3)`` float RGB of the pixels centered at ``xs, ys`` (each ``(P,)``): the stuff
    color, a pattern of light and shade, and grain."""
    phase = rng.uniform(0, 2 * math.pi)
    if label == SKY:
        pattern, grain = 30 * ys / height, 3.0
    elif label == GRASS:
        pattern, grain = 10 * np.sin(1.3 * xs + 0.4 * ys + phase), 14.0
    elif label == ROAD:
        pattern, grain = 35 * (np.sin(0.5 * xs + 0.25 * ys + phase) > 0.85), 5.0
    else:
        pattern, grain = 18 * np.sin(0.9 * ys + 1.5 * np.sin(0.3 * xs + phase)), 6.0
    color = np.asarray(STUFF_COLORS[label], dtype=float) + rng.normal(0, 8, 3)
    shade = pattern + grain * rng.standard_normal(xs.shape)
    return color + shade[..., None]


def _thing_color(
    rng: np.random.Generator, avoid: list[tuple[int, int, int]]
) -> tuple[int, int, int]:
    """A saturated color at least ``MIN_COLOR_DISTANCE`` from each color of ``avoid`` (the
    last one tried if ``COLOR_TRIES`` tries find none)."""
    for _ in range(COLOR_TRIES):
        hsv = rng.uniform(0, 1), rng.uniform(0.55, 1), rng.uniform(0.65, 1)
        color = tuple(round(channel * 255) for channel in colorsys.hsv_to_rgb(*hsv))
        if all(math.dist(color, other) >= MIN_COLOR_DISTANCE for other in avoid):
            break
    return color


def sample_things(
    rng: np.random.Generator, mode: str, height: int, width: int, max_objects: int
) -> list[Thing]:
    """Random things, each wholly inside the image: one in single mode, ``1..max_objects``
    (bottom first) in multi mode."""
    side = min(height, width)
    single = mode == "single"
    count = 1 if single else int(rng.integers(1, max_objects + 1))
    avoid = list(STUFF_COLORS.values())
    things = []
    for _ in range(count):
        radius = max(MIN_RADIUS, side * rng.uniform(*(SINGLE_RADIUS if single else MULTI_RADIUS)))
        center = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
        color = _thing_color(rng, avoid)
        avoid.append(color)
        label = int(rng.integers(len(THING_CLASSES)))
        things.append(Thing(label, center, radius, rng.uniform(0, 2 * math.pi), color))
    return things


def paint_things(
    background: np.ndarray, things: list[Thing]
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Draw ``things`` in order over ``background`` (``(H, W, 3)`` uint8, left unchanged).

    A thing that would show fewer than ``MIN_VISIBLE_PIXELS`` pixels, or less than
    ``MIN_VISIBLE_FRACTION`` of its in-image area, is left out so pixels and targets agree.

    Returns:
        ``image`` ``(H, W, 3)`` uint8; ``kept``: indices into ``things`` of those drawn (in order);
        ``masks``: ``(len(kept), H, W)`` bool visible masks.
    """
    height, width = background.shape[:2]
    xs, ys = pixel_grid(height, width)
    covered = np.zeros((height, width), dtype=bool)
    kept, masks = [], []
    for index in reversed(range(len(things))):
        shape = things[index].mask(xs, ys)
        visible = shape & ~covered
        if visible.sum() < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * shape.sum()):
            continue
        covered |= shape
        kept.insert(0, index)
        masks.insert(0, visible)
    image = background.copy()
    for index, mask in zip(kept, masks):
        image[mask] = things[index].color
    return image, kept, np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)


def build_target(
    image_id: int,
    stuff: np.ndarray,
    labels: list[int],
    masks: np.ndarray,
    track_ids: list[int] | None = None,
) -> Target:
    """Every target of one picture from its ``(H, W)`` stuff labels and things' visible masks.

    Panoptic ids are ``1..N`` for the things (in order), then one id per stuff class present.
    """
    semantic = stuff.copy()
    for label, mask in zip(labels, masks):
        semantic[mask] = label
    ids = np.zeros(stuff.shape, dtype=np.int64)
    segments = []
    for index, (label, mask) in enumerate(zip(labels, masks)):
        ids[mask] = index + 1
        segments.append(Segment(index + 1, label, True, int(mask.sum())))
    for label in STUFF_COLORS:
        region = semantic == label
        if region.any():
            ids[region] = len(segments) + 1
            segments.append(Segment(len(segments) + 1, label, False, int(region.sum())))
    mask_tensor = torch.from_numpy(masks)
    return Target(
        image_id=image_id,
        size=(stuff.shape[0], stuff.shape[1]),
        boxes=mask_boxes(mask_tensor),
        labels=torch.tensor(labels, dtype=torch.int64),
        masks=mask_tensor,
        iscrowd=torch.zeros(len(labels), dtype=torch.bool),
        track_ids=None if track_ids is None else torch.tensor(track_ids, dtype=torch.int64),
        semantic=torch.from_numpy(semantic),
        panoptic=PanopticMap(torch.from_numpy(ids), segments),
    )


def render_sample(
    index: int,
    *,
    mode: str = "multi",
    image_size: int | Size = 64,
    seed: int = 0,
    split: str = "train",
    max_objects: int = 4,
) -> tuple[Tensor, Target]:
    """Sample ``index`` of the world: a ``(3, H, W)`` image in ``[0, 1]`` and its full target.

    ``mode="single"``: one reasonably large thing, with ``label`` and ``box`` set.
    ``mode="multi"``: ``1..max_objects`` things that may overlap; ``label`` and ``box`` are None.
    Boxes, labels (thing labels ``0..4``), masks, iscrowd, semantic (labels ``0..8``) and panoptic
    are filled in both modes.
    """
    height, width = check_options(mode, image_size, max_objects)
    rng = sample_rng(seed, split, index)
    background, stuff = render_background(rng, height, width)
    things = sample_things(rng, mode, height, width, max_objects)
    image, kept, masks = paint_things(background, things)
    target = build_target(index, stuff, [things[k].label for k in kept], masks)
    if mode == "single":
        target = replace(target, label=int(target.labels[0]), box=target.boxes[0])
    return image_from_array(image), target


def check_options(mode: str, image_size: int | Size, max_objects: int) -> Size:
    """``(h, w)`` of ``image_size`` (an int for square images), once all three are known valid.

    Raises:
        ConfigError: naming the bad option.
    """
    if mode not in MODES:
        raise ConfigError(f"mode={mode!r} is unknown; choose one of {', '.join(MODES)}")
    if max_objects < 1:
        raise ConfigError(f"max_objects={max_objects} must be at least 1")
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ConfigError(
            f"image_size={image_size!r} is too small; sides must be >= {MIN_IMAGE_SIDE}"
        )
    return int(height), int(width)


class WorldLabels:
    """The synthetic world's label spaces as the data-set attributes every pansight data set has."""

    class_names = list(THING_CLASSES)
    category_ids = list(range(len(THING_CLASSES)))
    semantic_class_names = list(ALL_CLASSES)
    semantic_category_ids = list(range(len(ALL_CLASSES)))
    thing_flags = list(THING_FLAGS)


RENDERED = SampleCache()
"""Samples rendered in this process, shared by every :class:`ShapesDataset` (a sample is a
function of its arguments alone, so data sets of the same world share their renders)."""


class ShapesDataset(WorldLabels, Dataset):
    """``num_images`` samples of the world, rendered on first use (see :func:`render_sample`)
    and then kept in :data:`RENDERED`.

    Items are ``(image, target)``: ``(3, H, W)`` float in ``[0, 1]`` and a full
    :class:`~pansight.structures.Target` in that image's pixels.
    """

    def __init__(
        self,
        split: str = "train",
        mode: str = "single",
        num_images: int = 1000,
        image_size: int | Size = 64,
        seed: int = 0,
        max_objects: int = 4,
    ) -> None:
        check_options(mode, image_size, max_objects)
        if num_images < 0:
            raise ConfigError(f"num_images={num_images} must not be negative")
        self.split, self.mode, self.num_images = split, mode, num_images
        self.image_size, self.seed, self.max_objects = image_size, seed, max_objects

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} is out of range for {self.num_images} images")
        options = {
            "mode": self.mode,
            "image_size": self.image_size,
            "seed": self.seed,
            "split": self.split,
            "max_objects": self.max_objects,
        }
        key = (index, *options.values())
        return RENDERED.get(key, lambda: render_sample(index, **options))
