"""Video through a model, frame by frame: the :class:`StreamingPredictor` protocol (a model that
carries a state from one frame to the next, as YolactEdge does) and :func:`video_detections`,
which streams frames through such a model or batches them through any other."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from pansight.errors import ConfigError
from pansight.structures import Detections, on_cpu


@runtime_checkable
class StreamingPredictor(Protocol):
    """A predictor with a per-frame step that carries a state between frames (an eager
    YolactEdge, or its exported predictor)."""

    class_names: list[str]

    def predict_video_frame(
        self, image: Tensor, state: Any = None, keyframe: bool | None = None
    ) -> tuple[Detections, Any]:
        """Detections for one ``(3, h, w)`` frame in ``[0, 1]`` and the state after it;
        ``keyframe``: ``None`` lets the predictor choose, ``True``/``False`` forces it."""
        ...


def stream_detections(
    streamer: StreamingPredictor, frames: Iterable[Tensor], keyframe_interval: int | None = None
) -> Iterator[Detections]:
    """Detections of each ``(3, h, w)`` frame by ``streamer``, its state carried from frame to
    frame; a keyframe every ``keyframe_interval`` frames (``None``: the streamer's own choice)
    besides those it forces itself."""
    state = None
    for index, frame in enumerate(frames):
        keyframe = None if keyframe_interval is None else index % keyframe_interval == 0
        detections, state = streamer.predict_video_frame(frame, state, keyframe)
        yield detections


def video_detections(
    model: Any,
    frames: Iterable[Tensor],
    batch_size: int = 8,
    keyframe_interval: int | None = None,
) -> Iterator[tuple[Tensor, Detections]]:
    """Each ``(3, H, W)`` frame with its detections (on the CPU), in order.

    A :class:`StreamingPredictor` carries its state from frame to frame, with a keyframe every
    ``keyframe_interval`` frames (``None``: its configured interval; ``1``: every frame) besides
    those it forces itself (first frame, size change, scene cut); any other model (anything
    with ``predict(images)``) sees ``batch_size`` independent frames at a time.

    Raises:
        ConfigError: ``keyframe_interval`` below 1 (before any frame is read).
    """
    if keyframe_interval is not None and keyframe_interval < 1:
        raise ConfigError(f"keyframe_interval={keyframe_interval} must be at least 1")
    if isinstance(model, StreamingPredictor):
        frames, streamed = itertools.tee(frames)
        for frame, detections in zip(frames, stream_detections(model, streamed, keyframe_interval)):
            yield frame, on_cpu(detections)
        return
    frames = iter(frames)
    while chunk := list(islice(frames, batch_size)):
        for frame, detections in zip(chunk, model.predict(chunk)):
            yield frame, on_cpu(detections)
