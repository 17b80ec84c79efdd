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
from pansight.models.yolact_edge import YolactEdge
from pansight.structures import Detections, Target
from pansight.tracking import IoUTracker


def clip_detections(
    model: PansightModel, frames: Iterable[Tensor], keyframe_interval: int | None = None
) -> list[Detections]:
    """Each ``(3, H, W)`` frame's detections, with track ids from an :class:`IoUTracker`.

    A :class:`YolactEdge` streams the clip: a keyframe every ``keyframe_interval`` frames
    (``None``: its configured interval; ``1``: every frame, which is YOLACT), plus the keyframes
    it forces itself (first frame, size change, scene cut). Other models see every frame alone.
    """
    tracker = IoUTracker()
    results = []
    state = None
    for index, frame in enumerate(frames):
        if isinstance(model, YolactEdge):
            keyframe = None if keyframe_interval is None else index % keyframe_interval == 0
            detections, state = model.predict_video_frame(frame, state, keyframe)
        else:
            (detections,) = model.predict([frame])
        detections = _on_cpu(detections)
        results.append(dataclasses.replace(detections, track_ids=tracker.update(detections)))
    return results


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


def _on_cpu(detections: Detections) -> Detections:
    fields = {
        name: None if value is None else value.cpu() for name, value in vars(detections).items()
    }
    return Detections(**fields)
