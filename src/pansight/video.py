"""Video in and out: frames from a video file or a folder of frame images, annotated video out.

Video files (``.mp4``, ``.avi``, ``.mkv``, ``.webm``, ``.mov``, ...) are decoded with PyAV, which
ships its own FFmpeg. A folder of frames holds one image per frame, taken in the natural order
of their names (``frame2.png`` before ``frame10.png``). Frames come out as ``(3, H, W)`` float
RGB in ``[0, 1]``, every frame of a source the same size.

Output is H.264 in an MP4 container (MPEG-4 Part 2 where the FFmpeg build has no H.264 encoder),
and every file this module writes appears only when complete: it is written under a temporary
name in its folder and renamed at the end, and the temporary file is removed on failure.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import torch
import torch.nn.functional as F
from torch import Tensor

from pansight.data.images import IMAGE_SUFFIXES, image_from_array, read_image
from pansight.errors import DataError

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv")
DEFAULT_FPS = 25.0
"""Frame rate of an output video when its source does not say (a folder of frames)."""
H264_CRF = "18"
"""libx264 constant-rate factor: visually near lossless, small files."""
MPEG4_BITS_PER_PIXEL = 0.5
"""Bit rate of the MPEG-4 fallback encoder, per pixel and frame."""


@dataclass
class FrameSource:
    """The frames of one clip, read lazily.

    Attributes:
        path: the video file or folder of frames.
        frames: iterator of ``(3, H, W)`` float RGB frames in ``[0, 1]``; raises
            :class:`DataError` (naming ``path``) when a frame cannot be decoded, when the file
            ends before the frames its header announces, or when a frame's size differs from
            the first frame's.
        fps: frames per second, or ``None`` when the source does not say (a folder).
        num_frames: the number of frames, or ``None`` when the container does not say.
    """

    path: Path
    frames: Iterator[Tensor]
    fps: float | None
    num_frames: int | None


def is_video_file(path: Path) -> bool:
    """Whether ``path`` names a video file by its suffix."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def open_frames(path: str | Path) -> FrameSource:
    """The frames of a video file or of a folder of frame images.

    Raises:
        DataError: naming ``path``: it does not exist, cannot be opened as a video, has no video
            stream, or (a folder) holds no image.
    """
    path = Path(path)
    if path.is_dir():
        return read_frame_folder(path)
    if not path.is_file():
        raise DataError(f"{path}: no such video file or folder of frames")
    return read_video(path)


def read_video(path: str | Path) -> FrameSource:
    """The frames of a video file, decoded as they are consumed.

    Raises:
        DataError: naming ``path``: unreadable or not a video, no video stream; while iterating,
            a decoding error, a file that ends early (truncated) or that holds no frame.
    """
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        raise DataError(f"{path}: cannot open video (corrupt or not a video?): {error}") from None
    if not container.streams.video:
        container.close()
        raise DataError(f"{path}: holds no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    num_frames = stream.frames or None
    frames = _same_size(_decode(container, stream, path, num_frames), path)
    return FrameSource(path, frames, float(rate) if rate else None, num_frames)


def _decode(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    path: Path,
    num_frames: int | None,
) -> Iterator[Tensor]:
    """Decode every frame of ``stream``, checking that no packet announced is missing."""
    packets = decoded = 0
    try:
        for packet in container.demux(stream):
            packets += packet.size > 0
            for frame in packet.decode():
                decoded += 1
                yield image_from_array(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, OSError) as error:
        raise DataError(
            f"{path}: decoding failed after {decoded} frames (corrupt or truncated?): {error}"
        ) from None
    finally:
        container.close()
    if num_frames is not None and packets < num_frames:
        raise DataError(
            f"{path}: ends after {packets} of the {num_frames} frames its header announces "
            "(truncated?)"
        )
    if decoded == 0:
        raise DataError(f"{path}: holds no frame")


def read_frame_folder(folder: str | Path) -> FrameSource:
    """The images directly inside ``folder`` as frames, in the natural order of their names.

    Raises:
        DataError: naming ``folder``: it holds no image; while iterating, a frame that cannot be
            read or whose size differs from the first frame's.
    """
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataError(f"{folder}: holds no frame images ({', '.join(IMAGE_SUFFIXES)})")
    files.sort(key=lambda file: natural_key(file.name))
    frames = _same_size((read_image(file) for file in files), folder)
    return FrameSource(folder, frames, None, len(files))


def natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort key putting ``frame2`` before ``frame10``: digit runs compare as numbers."""
    parts = re.split(r"(\d+)", name.lower())
    return [(0, int(part)) if part.isdigit() else (1, part) for part in parts if part]


def _same_size(frames: Iterator[Tensor], path: Path) -> Iterator[Tensor]:
    """``frames`` unchanged, refusing a frame whose size differs from the first one's."""
    first_size = None
    for index, frame in enumerate(frames):
        size = tuple(frame.shape[-2:])
        first_size = first_size or size
        if size != first_size:
            raise DataError(
                f"{path}: frame {index} is {size[0]}x{size[1]} but frame 0 is "
                f"{first_size[0]}x{first_size[1]}; a clip's frames must share one size"
            )
        yield frame


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder to write to; renamed to ``path`` on a clean exit.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    temporary = _temporary_beside(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json_atomically(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path``, which appears only once complete."""
    with atomic_file(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=1))


class VideoWriter:
    """Write pictures as the frames of an MP4 video; use it as a context manager.

    The file appears at ``path`` only when the ``with`` block ends without an exception; until
    then the frames go to a temporary file in the same folder, removed on failure. Frames of odd
    height or width are padded by one pixel (repeating the edge) since 4:2:0 video needs even
    sizes.

    >>> with VideoWriter("out.mp4", fps=25) as writer:
    ...     for picture in pictures:   # (3, H, W) uint8, or float in [0, 1]
    ...         writer.write(picture)
    """

    def __init__(self, path: str | Path, fps: float = DEFAULT_FPS) -> None:
        if fps <= 0:
            raise ValueError(f"fps={fps} must be positive")
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.num_frames = 0
        self._stream: av.video.stream.VideoStream | None = None

    def __enter__(self) -> VideoWriter:
        self._temporary = _temporary_beside(self.path)
        try:
            self._container = av.open(
                str(self._temporary), "w", format="mp4", options={"movflags": "+faststart"}
            )
        except BaseException:
            self._temporary.unlink(missing_ok=True)
            raise
        return self

    def write(self, picture: Tensor) -> None:
        """Append one ``(3, H, W)`` frame (uint8, or float in ``[0, 1]``), the same size as the
        first."""
        frame = _even_sized(_to_uint8(picture))
        height, width = frame.shape[-2:]
        if self._stream is None:
            self._stream = self._add_stream(height, width)
        if (height, width) != (self._stream.height, self._stream.width):
            raise ValueError(
                f"{self.path}: frame {self.num_frames} is {height}x{width} but the video is "
                f"{self._stream.height}x{self._stream.width}"
            )
        array = frame.permute(1, 2, 0).contiguous().numpy()
        self._mux(self._stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        self.num_frames += 1

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            try:
                if error is None:
                    self._flush()
            finally:
                self._container.close()
            if error is None:
                os.replace(self._temporary, self.path)
        finally:
            self._temporary.unlink(missing_ok=True)

    def _add_stream(self, height: int, width: int) -> av.video.stream.VideoStream:
        codec = video_codec()
        stream = self._container.add_stream(codec, rate=self.fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": H264_CRF}
        else:
            stream.bit_rate = int(MPEG4_BITS_PER_PIXEL * height * width * float(self.fps))
        return stream

    def _flush(self) -> None:
        """Drain the encoder (the container's trailer is written when it closes)."""
        if self._stream is None:
            raise ValueError(f"{self.path}: a video needs at least one frame")
        self._mux(self._stream.encode(None))

    def _mux(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            self._container.mux(packet)


def video_codec() -> str:
    """``libx264`` where this FFmpeg build can encode H.264, else ``mpeg4``."""
    try:
        av.codec.Codec("libx264", "w")
    except (av.codec.codec.UnknownCodecError, av.FFmpegError):
        return "mpeg4"
    return "libx264"


def _to_uint8(picture: Tensor) -> Tensor:
    if picture.dim() != 3 or picture.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) picture, got shape {tuple(picture.shape)}")
    if picture.dtype == torch.uint8:
        return picture.cpu()
    return picture.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


def _even_sized(picture: Tensor) -> Tensor:
    """``(3, H, W)`` padded by one row / column (repeating the edge) where ``H`` / ``W`` is odd."""
    pad_bottom, pad_right = picture.shape[-2] % 2, picture.shape[-1] % 2
    if not pad_bottom and not pad_right:
        return picture
    padded = F.pad(picture[None].float(), (0, pad_right, 0, pad_bottom), mode="replicate")
    return padded[0].to(torch.uint8)


def _temporary_beside(path: Path) -> Path:
    """A new, empty file with a hidden temporary name in ``path``'s folder (created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return temporary
