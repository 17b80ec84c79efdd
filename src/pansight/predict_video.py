"""Run a checkpoint over video clips: an annotated video and a JSON of every frame's detections.

Each clip (a video file, or a folder of frames) gives an annotated ``<clip>.mp4`` and a
``<clip>.json`` with every frame's detections and their track ids
(:class:`~pansight.tracking.IoUTracker`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm import tqdm

from pansight.api import load
from pansight.errors import ConfigError, DataError
from pansight.models.base import PansightModel
from pansight.models.streaming import video_detections
from pansight.structures import Detections
from pansight.tracking import IoUTracker
from pansight.video import (
    DEFAULT_FPS,
    VIDEO_SUFFIXES,
    VideoWriter,
    atomic_file,
    is_video_file,
    open_frames,
)
from pansight.viz import DRAW_MIN_SCORE, draw_result

VIDEO_TASKS = ("detect", "instance")
"""Tasks whose models can run over videos (their results are :class:`Detections`)."""


def find_clips(inputs: list[Path], frame_folders: bool) -> list[Path]:
    """The video clips named in ``inputs``: video files and, with ``frame_folders``, folders of
    frame images.

    Raises:
        DataError: an input does not exist, or is neither a video file nor (with
            ``frame_folders``) a folder.
    """
    for path in inputs:
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if path.is_dir() and not frame_folders:
            raise DataError(f"{path}: a folder among videos; add --video to read it as frames")
        if path.is_file() and not is_video_file(path):
            raise DataError(
                f"{path}: not a video file (known suffixes: {', '.join(VIDEO_SUFFIXES)}); "
                "images and videos go to separate calls"
            )
    return list(inputs)


def predict_videos(
    checkpoint: Path,
    inputs: list[Path],
    out: Path,
    batch_size: int = 8,
    fps: float | None = None,
    frame_folders: bool = False,
) -> list[Path]:
    """Predict every clip of ``inputs`` (see :func:`find_clips`) with :func:`predict_clip`.

    Returns the files written: ``out/<clip>.mp4`` and ``out/<clip>.json`` for each clip.

    Raises:
        ConfigError: the model's task is not one of :data:`VIDEO_TASKS`; two clips would write
            the same files, or a clip would be overwritten by its own output.
    """
    clips = find_clips(inputs, frame_folders)
    _check_clip_outputs(clips, out)
    model = load(checkpoint)
    if model.task not in VIDEO_TASKS:
        raise ConfigError(
            f"{checkpoint}: video needs a {' or '.join(VIDEO_TASKS)} model, not a {model.task} one"
        )
    written = []
    for clip in clips:
        written += predict_clip(model, clip, out, batch_size, fps)
    return written


def predict_clip(
    model: PansightModel,
    clip: Path,
    out: Path,
    batch_size: int = 8,
    fps: float | None = None,
) -> list[Path]:
    """Run ``model`` over one clip; write ``out/<clip stem>.mp4`` and ``out/<clip stem>.json``.

    A YolactEdge (eager or ONNX) streams the frames through its ``predict_video_frame``
    (keyframes as its config says); other models predict ``batch_size`` frames at a time.
    Detections scoring at least :data:`~pansight.viz.DRAW_MIN_SCORE` are tracked and drawn
    (one color per track); the JSON holds every detection, ``track_id`` -1 for the untracked
    ones. ``fps`` sets the output frame rate (default: the clip's, else
    :data:`~pansight.video.DEFAULT_FPS`). Both files appear only once complete.

    Raises:
        DataError: naming the clip, if it cannot be read or decoded (nothing is left behind).
    """
    source = open_frames(clip)
    video_path, json_path = _clip_outputs(clip, out)
    frames = tqdm(source.frames, total=source.num_frames, desc=clip.name, unit="frame")
    with atomic_file(json_path) as json_temporary:
        with VideoWriter(video_path, fps or source.fps or DEFAULT_FPS) as writer:
            records = _write_tracked_frames(model, frames, writer, batch_size)
            payload = {"task": model.task, "file": str(clip), "fps": float(writer.fps)}
            payload["frames"] = records
            json_temporary.write_text(json.dumps(payload, indent=1))
    return [video_path, json_path]


def _write_tracked_frames(
    model: PansightModel, frames: Iterable[Tensor], writer: VideoWriter, batch_size: int
) -> list[dict[str, Any]]:
    """Track, draw and write each frame's detections; return the frames' JSON records."""
    tracker = IoUTracker(min_score=DRAW_MIN_SCORE)
    records = []
    for index, (frame, detections) in enumerate(video_detections(model, frames, batch_size)):
        detections = dataclasses.replace(detections, track_ids=tracker.update(detections))
        writer.write(draw_result(frame, detections, model.class_names))
        records.append(frame_record(index, detections, model.class_names))
    return records


def frame_record(index: int, detections: Detections, class_names: list[str]) -> dict[str, Any]:
    """One frame's entry in a clip's JSON: ``{"frame", "detections": [...]}``, each detection
    with ``track_id``, ``category_id`` (the contiguous label), ``class_name``, ``score``,
    ``bbox`` (``[x, y, w, h]`` pixels) and, with masks, ``segmentation`` (COCO RLE)."""
    coco = detections.to_coco(index, list(range(len(class_names))))
    track_ids = detections.track_ids.tolist()
    entries = []
    for track_id, record in zip(track_ids, coco):
        record.pop("image_id")
        name = class_names[record["category_id"]]
        entries.append({"track_id": track_id, "class_name": name, **record})
    return {"frame": index, "detections": entries}


def _clip_outputs(clip: Path, out: Path) -> tuple[Path, Path]:
    """Where ``clip``'s annotated video and JSON go."""
    return out / f"{clip.stem}.mp4", out / f"{clip.stem}.json"


def _check_clip_outputs(clips: list[Path], out: Path) -> None:
    """Refuse clips that would share output files, or whose output would replace them."""
    owners: dict[Path, Path] = {}
    for clip in clips:
        video_path, _ = _clip_outputs(clip, out)
        if video_path.resolve() == clip.resolve():
            raise ConfigError(f"{clip}: its annotated video would replace it; choose another --out")
        if video_path in owners:
            raise ConfigError(
                f"{owners[video_path]} and {clip} would both write {video_path}; "
                "predict them in separate calls or rename one"
            )
        owners[video_path] = clip
