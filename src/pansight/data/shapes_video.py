"""Video clips of the synthetic world: things that glide, pulse and turn over a drifting landscape.

Each thing of a clip moves at a constant velocity, turns at a constant rate and breathes in size,
so its shape changes smoothly from frame to frame; things cross and occlude each other and may
leave the picture. The landscape slides sideways by a whole number of pixels per frame (or stays).
Every frame's target carries ``track_ids``: the index of each visible thing in the clip, the same
in every frame. A thing that shows too little of itself in a frame (see
:func:`~pansight.data.shapes.paint_things`) is not drawn in that frame and has no target there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pansight.data.images import image_from_array
from pansight.data.shapes import (
    Thing,
    WorldLabels,
    build_target,
    check_options,
    paint_things,
    render_background,
    sample_rng,
    sample_things,
)
from pansight.errors import ConfigError
from pansight.structures import Size, Target

CLIP_STREAM = 1
MAX_DRIFT = 1
"""Largest sideways slide of the landscape, in pixels per frame."""
SPEED = (0.01, 0.04)
"""Range of a thing's speed, as a fraction of the image's shorter side per frame."""
MAX_SPIN = 0.15
"""Largest turn of a thing, in radians per frame."""
MAX_PULSE = 0.2
"""Largest relative change of a thing's size over its breathing cycle."""


@dataclass(frozen=True)
class Motion:
    """How one thing changes over a clip.

    Attributes:
        velocity: ``(vx, vy)`` pixels per frame.
        spin: radians per frame.
        pulse: relative amplitude of the size oscillation.
        pulse_rate: radians of the size oscillation per frame.
        pulse_phase: phase of the size oscillation at frame 0.
    """

    velocity: tuple[float, float]
    spin: float
    pulse: float
    pulse_rate: float
    pulse_phase: float

    def at(self, thing: Thing, frame: int) -> Thing:
        """``thing`` (as it is at frame 0) at ``frame``."""
        x, y = thing.center
        growth = self.pulse * (
            math.sin(self.pulse_phase + self.pulse_rate * frame) - math.sin(self.pulse_phase)
        )
        return replace(
            thing,
            center=(x + self.velocity[0] * frame, y + self.velocity[1] * frame),
            radius=thing.radius * (1 + growth),
            angle=thing.angle + self.spin * frame,
        )


def sample_motion(rng: np.random.Generator, side: int) -> Motion:
    """A random motion for a thing in an image whose shorter side is ``side`` pixels."""
    speed, heading = side * rng.uniform(*SPEED), rng.uniform(0, 2 * math.pi)
    return Motion(
        velocity=(speed * math.cos(heading), speed * math.sin(heading)),
        spin=rng.uniform(-MAX_SPIN, MAX_SPIN),
        pulse=rng.uniform(0, MAX_PULSE),
        pulse_rate=rng.uniform(0.1, 0.4),
        pulse_phase=rng.uniform(0, 2 * math.pi),
    )


def render_clip(
    index: int,
    *,
    num_frames: int = 10,
    image_size: int | Size = 64,
    seed: int = 0,
    split: str = "train",
    max_objects: int = 4,
) -> list[tuple[Tensor, Target]]:
    """Clip ``index`` of the world: ``num_frames`` pairs of a ``(3, H, W)`` image and its target.

    Targets are as in :func:`~pansight.data.shapes.render_sample` (multi mode) plus
    ``track_ids``; frame ``t`` has ``image_id = index * num_frames + t``.
    """
    height, width = check_options("multi", image_size, max_objects)
    if num_frames < 1:
        raise ConfigError(f"num_frames={num_frames} must be at least 1")
    rng = sample_rng(seed, split, index, stream=CLIP_STREAM)
    drift = int(rng.integers(-MAX_DRIFT, MAX_DRIFT + 1))
    slack = abs(drift) * (num_frames - 1)
    background, stuff = render_background(rng, height, width + slack)
    things = sample_things(rng, "multi", height, width, max_objects)
    motions = [sample_motion(rng, min(height, width)) for _ in things]
    frames = []
    for frame in range(num_frames):
        left = frame * drift if drift >= 0 else slack + frame * drift
        window = slice(left, left + width)
        moved = [motion.at(thing, frame) for thing, motion in zip(things, motions)]
        image, kept, masks = paint_things(background[:, window], moved)
        labels = [things[k].label for k in kept]
        target = build_target(index * num_frames + frame, stuff[:, window], labels, masks, kept)
        frames.append((image_from_array(image), target))
    return frames


class ShapesVideoDataset(WorldLabels, Dataset):
    """``num_clips`` clips of the world, rendered on demand (see :func:`render_clip`).

    Each item is one clip: a list of ``num_frames`` ``(image, target)`` pairs.
    """

    def __init__(
        self,
        split: str = "train",
        num_clips: int = 100,
        num_frames: int = 10,
        image_size: int | Size = 64,
        seed: int = 0,
        max_objects: int = 4,
    ) -> None:
        check_options("multi", image_size, max_objects)
        if num_clips < 0 or num_frames < 1:
            raise ConfigError(
                f"num_clips={num_clips} must not be negative and num_frames={num_frames} "
                "must be at least 1"
            )
        self.split, self.num_clips, self.num_frames = split, num_clips, num_frames
        self.image_size, self.seed, self.max_objects = image_size, seed, max_objects

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> list[tuple[Tensor, Target]]:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"index {index} is out of range for {self.num_clips} clips")
        return render_clip(
            index,
            num_frames=self.num_frames,
            image_size=self.image_size,
            seed=self.seed,
            split=self.split,
            max_objects=self.max_objects,
        )


class ShapesFramePairs(WorldLabels, Dataset):
    """Training pairs for a video model: ``num_pairs`` clips, each giving its first frame (the
    keyframe) and the frame ``1 + index % max_offset`` frames later.

    Each item is ``(pair, target)``: ``pair`` ``(2, 3, H, W)`` holds the keyframe and the later
    frame, ``target`` describes the later frame.
    """

    def __init__(
        self,
        split: str = "train",
        num_pairs: int = 100,
        max_offset: int = 4,
        image_size: int | Size = 64,
        seed: int = 0,
        max_objects: int = 4,
    ) -> None:
        check_options("multi", image_size, max_objects)
        if num_pairs < 0 or max_offset < 1:
            raise ConfigError(
                f"num_pairs={num_pairs} must not be negative and max_offset={max_offset} "
                "must be at least 1"
            )
        self.split, self.num_pairs, self.max_offset = split, num_pairs, max_offset
        self.image_size, self.seed, self.max_objects = image_size, seed, max_objects

    def __len__(self) -> int:
        return self.num_pairs

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        if not 0 <= index < self.num_pairs:
            raise IndexError(f"index {index} is out of range for {self.num_pairs} pairs")
        offset = 1 + index % self.max_offset
        clip = render_clip(
            index,
            num_frames=offset + 1,
            image_size=self.image_size,
            seed=self.seed,
            split=self.split,
            max_objects=self.max_objects,
        )
        (keyframe, _), (frame, target) = clip[0], clip[-1]
        return torch.stack([keyframe, frame]), target


class ShapesVideoFrames(WorldLabels, Dataset):
    """Every frame of ``num_clips`` clips as single ``(image, target)`` samples, clip after
    clip (for image-level evaluation of a video model)."""

    def __init__(self, clips: ShapesVideoDataset) -> None:
        self.clips = clips

    def __len__(self) -> int:
        return len(self.clips) * self.clips.num_frames

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} frames")
        clip, frame = divmod(index, self.clips.num_frames)
        return self.clips[clip][frame]
