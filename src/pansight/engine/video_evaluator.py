"""Run a model over video clips, track its detections, and score the tracks with video mask AP
(:class:`~pansight.metrics.video.VideoMaskMetric`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from pansight.metrics.video import VideoMaskMetric, tracks_from_detections
from pansight.models.base import PansightModel
from pansight.models.streaming import video_detections
from pansight.structures import Detections, Target
from pansight.tracking import IoUTracker


def clip_detections(
    model: PansightModel, frames: Iterable[Tensor], keyframe_interval: int | None = None
) -> list[Detections]:
    """Each ``(3, H, W)`` frame's detections (see
    :func:`~pansight.models.streaming.video_detections` for ``keyframe_interval``), with track ids
    from an :class:`IoUTracker` that tracks every detection."""
    tracker = IoUTracker()
    return [
        dataclasses.replace(detections, track_ids=tracker.update(detections))
        for _, detections in video_detections(model, frames, keyframe_interval=keyframe_interval)
    ]


def evaluate_video(
    model: PansightModel,
    clips: Sequence[Sequence[tuple[Tensor, Target]]],
    keyframe_interval: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Video mask AP (``mask_AP``, ``mask_AP50``, ``mask_AP75``) of ``model`` on ``clips``,
    each a list of ``(image, target)`` frames with ``track_ids`` in the targets (as
    :class:`~pansight.data.shapes_video.ShapesVideoDataset` and
    :class:`~pansight.data.youtube_vis.YouTubeVIS` give them)."""
    metric = VideoMaskMetric(model.num_classes)
    with torch.no_grad():
        for clip in tqdm(clips, desc="video eval", unit="clip", disable=not progress):
            frames = [image for image, _ in clip]
            detections = clip_detections(model, frames, keyframe_interval)
            metric.update(tracks_from_detections(detections), [target for _, target in clip])
    return metric.compute()
