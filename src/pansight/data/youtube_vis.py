"""YouTube-VIS video instance segmentation files: a reader of clips and a writer.

:class:`YouTubeVIS` checks a YouTube-VIS JSON when it is built and decodes frames and masks when
a clip is read; anything unusable raises :class:`~pansight.errors.DataError` naming the file and
the video, annotation or key at fault. :func:`write_youtube_vis` writes clips in this format. As
in :mod:`pansight.data.coco`, labels are the positions of the categories in id order.

See docs/data.md for the JSON layout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import box_convert

from pansight.data.coco import instance_annotations, mask_boxes
from pansight.data.coco_format import (
    check_box,
    check_category,
    check_segmentation,
    decode_segmentation,
    is_int,
    load_json,
    parse_categories,
    require_keys,
    require_list,
)
from pansight.data.images import read_image, write_image
from pansight.data.shapes import COCO_CATEGORY_IDS, THING_CLASSES
from pansight.errors import DataError
from pansight.structures import Target

VIDEO_KEYS = ("id", "height", "width", "length", "file_names")
ANNOTATION_KEYS = ("id", "video_id", "category_id", "segmentations")
PER_FRAME_KEYS = ("segmentations", "bboxes", "areas")
FRAME_DIR = "JPEGImages"
ANNOTATION_FILE = "instances.json"

Clip = list[tuple[Tensor, Target]]
"""One video: per frame a ``(3, H, W)`` float image in ``[0, 1]`` and its target."""


class YouTubeVIS(Dataset):
    """A YouTube-VIS instances file and its frames; one item per video.

    Items are clips like :class:`~pansight.data.shapes_video.ShapesVideoDataset`'s: per frame
    ``(image, target)``, the image ``(3, H, W)`` float in ``[0, 1]``, the target holding the
    objects seen in that frame (those whose segmentation there is not ``null``), in annotation
    order: ``boxes`` ``(N, 4)`` xyxy (the file's box, else the mask's pixel extent), ``labels``
    ``(N,)``, ``masks`` ``(N, H, W)`` bool, ``iscrowd`` ``(N,)`` bool and ``track_ids`` ``(N,)``
    int64, the position of the object's annotation among its video's annotations. Frames are
    numbered through the data set: frame ``t`` of the ``v``-th video has ``image_id`` equal to
    the frame count of the videos before it plus ``t``.

    Attributes:
        class_names: category names in id order; ``category_ids``: their ids.
        semantic_class_names, thing_flags: ``None`` (no semantic targets).
    """

    semantic_class_names = None
    thing_flags = None

    def __init__(self, annotation_file: str | Path, image_dir: str | Path) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        data = load_json(self.annotation_file, ("videos", "annotations", "categories"))
        categories = parse_categories(self.annotation_file, data["categories"], ("id", "name"))
        self.class_names = [category["name"] for category in categories]
        self.category_ids = [category["id"] for category in categories]
        self._label_of = {category_id: i for i, category_id in enumerate(self.category_ids)}
        self._videos = parse_videos(self.annotation_file, data["videos"])
        lengths = [video["length"] for video in self._videos]
        self._first_frames = list(accumulate(lengths[:-1], initial=0))
        annotations = require_list(self.annotation_file, data, "annotations")
        self._annotations_of = self._group_annotations(annotations)

    def __len__(self) -> int:
        return len(self._videos)

    def __getitem__(self, index: int) -> Clip:
        if not 0 <= index < len(self._videos):
            raise IndexError(f"index {index} is out of range for {len(self._videos)} videos")
        video = self._videos[index]
        annotations = self._annotations_of[video["id"]]
        first = self._first_frames[index]
        return [
            (self._read_frame(video, t), self._frame_target(video, annotations, t, first + t))
            for t in range(video["length"])
        ]

    def _read_frame(self, video: dict[str, Any], t: int) -> Tensor:
        """Frame ``t`` of ``video`` as ``(3, H, W)``, which must have the video's size."""
        where = f"frame {t} of video {video['id']} in {self.annotation_file}"
        path = self.image_dir / video["file_names"][t]
        try:
            image = read_image(path)
        except DataError as error:
            raise DataError(f"{error} ({where})") from None
        if tuple(image.shape[1:]) != (video["height"], video["width"]):
            raise DataError(
                f"{path}: frame is {image.shape[1]}x{image.shape[2]} but {where} is "
                f"{video['height']}x{video['width']} (height x width)"
            )
        return image

    def _frame_target(
        self, video: dict[str, Any], annotations: list[dict[str, Any]], t: int, image_id: int
    ) -> Target:
        """The target of frame ``t``: the annotations whose segmentation there is not null."""
        height, width = video["height"], video["width"]
        seen = [k for k, a in enumerate(annotations) if a["segmentations"][t] is not None]
        masks = np.zeros((len(seen), height, width), dtype=bool)
        for i, k in enumerate(seen):
            masks[i] = decode_segmentation(annotations[k]["segmentations"][t], height, width)
        mask_tensor = torch.from_numpy(masks)
        labels = [self._label_of[annotations[k]["category_id"]] for k in seen]
        crowd = [bool(annotations[k].get("iscrowd", 0)) for k in seen]
        return Target(
            image_id=image_id,
            size=(height, width),
            boxes=_frame_boxes([annotations[k] for k in seen], t, mask_tensor),
            labels=torch.tensor(labels, dtype=torch.int64),
            masks=mask_tensor,
            iscrowd=torch.tensor(crowd, dtype=torch.bool),
            track_ids=torch.tensor(seen, dtype=torch.int64),
        )

    def _group_annotations(self, annotations: list[Any]) -> dict[int, list[dict[str, Any]]]:
        """Check every annotation and group them by video id, in file order."""
        path = self.annotation_file
        videos = {video["id"]: video for video in self._videos}
        grouped: dict[int, list[dict[str, Any]]] = {video_id: [] for video_id in videos}
        for position, annotation in enumerate(annotations):
            require_keys(path, annotation, ANNOTATION_KEYS, f"annotations[{position}]")
            where = f"{path}: annotation {annotation['id']}"
            if annotation["video_id"] not in videos:
                raise DataError(f"{where}: video_id {annotation['video_id']} is not in 'videos'")
            check_category(where, annotation["category_id"], self._label_of)
            check_per_frame_fields(where, annotation, videos[annotation["video_id"]])
            grouped[annotation["video_id"]].append(annotation)
        return grouped


def parse_videos(path: Path, records: Any) -> list[dict[str, Any]]:
    """The video records: unique ids, positive sizes, one file name per frame."""
    if not isinstance(records, list) or not records:
        raise DataError(f"{path}: the video list 'videos' is empty (or not a list)")
    seen = set()
    for position, video in enumerate(records):
        require_keys(path, video, VIDEO_KEYS, f"videos[{position}]")
        if not is_int(video["id"]) or video["id"] in seen:
            raise DataError(f"{path}: video id {video['id']!r} is invalid or repeated")
        where = f"{path}: video {video['id']}"
        if not all(is_int(video[key]) and video[key] > 0 for key in ("height", "width", "length")):
            raise DataError(f"{where}: height, width and length must be positive integers")
        names = video["file_names"]
        if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
            raise DataError(f"{where}: 'file_names' must be a list of frame file names")
        if len(names) != video["length"]:
            raise DataError(
                f"{where}: {len(names)} file_names for a video of length {video['length']}"
            )
        seen.add(video["id"])
    return records


def check_per_frame_fields(where: str, annotation: dict[str, Any], video: dict[str, Any]) -> None:
    """Per-frame lists of the video's length; segmentations of the video's size; boxes."""
    length, size = video["length"], (video["height"], video["width"])
    for key in PER_FRAME_KEYS:
        values = annotation.get(key)
        if key in annotation and not (isinstance(values, list) and len(values) == length):
            raise DataError(f"{where}: '{key}' must be a list with one entry per frame ({length})")
    for t, segmentation in enumerate(annotation["segmentations"]):
        if segmentation is not None:
            check_segmentation(f"{where}, frame {t}", segmentation, size)
    for t, box in enumerate(annotation.get("bboxes") or []):
        if box is not None:
            check_box(f"{where}, frame {t}", box)


def write_youtube_vis(
    clips: Iterable[Clip],
    root: str | Path,
    split: str,
    class_names: Sequence[str] = THING_CLASSES,
    category_ids: Sequence[int] = COCO_CATEGORY_IDS[: len(THING_CLASSES)],
) -> Path:
    """Write clips (a :class:`ShapesVideoDataset` or any lists of ``(image, target)``) as
    YouTube-VIS; returns the JSON's path.

    Files under ``root/<split>/``:
        - ``JPEGImages/<video id:05d>/<frame:05d>.png`` (lossless, despite the folder's name);
        - ``instances.json``: videos ``1, 2, ...`` in clip order; one annotation per track id of
          a clip, in increasing track id order, with compressed RLE masks, ``xywh`` boxes and
          areas (``null`` where the track is not seen). Reading it back gives the same frames,
          masks, boxes and labels, and track ids renumbered ``0..M-1`` in the same order.

    Targets need ``masks`` and ``track_ids``; every frame of a clip has the same size. The
    default categories are the world's things with their COCO file ids (``1, 3, 5, 7, 9``).

    Raises:
        DataError: naming the clip and frame, if a target lacks masks or track ids, a frame's
            size differs from the clip's first, or a track changes label within a clip.
    """
    split_dir = Path(root) / split
    videos: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for video_id, clip in enumerate(clips, start=1):
        videos.append(_write_frames(clip, split_dir / FRAME_DIR, video_id))
        targets = [target for _, target in clip]
        annotations += track_annotations(targets, video_id, category_ids, len(annotations) + 1)
    categories = [{"id": cid, "name": name} for cid, name in zip(category_ids, class_names)]
    path = split_dir / ANNOTATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"videos": videos, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(payload))
    return path


def track_annotations(
    targets: Sequence[Target], video_id: int, category_ids: Sequence[int], first_id: int
) -> list[dict[str, Any]]:
    """YouTube-VIS ``annotations`` of the tracks of one clip's targets, with ids ``first_id...``.

    One record per track id, in increasing order; category and crowd flag come from the track's
    first frame.
    """
    per_frame = [
        _records_by_track(target, video_id, category_ids, t) for t, target in enumerate(targets)
    ]
    track_ids = sorted({track_id for frame in per_frame for track_id in frame})
    annotations = []
    for number, track_id in enumerate(track_ids):
        records = [frame.get(track_id) for frame in per_frame]
        first = next(record for record in records if record is not None)
        if len({record["category_id"] for record in records if record is not None}) > 1:
            raise DataError(f"clip {video_id}: track {track_id} changes label between frames")
        annotations.append(
            {
                "id": first_id + number,
                "video_id": video_id,
                "category_id": first["category_id"],
                "iscrowd": first["iscrowd"],
                "segmentations": _per_frame(records, "segmentation"),
                "bboxes": _per_frame(records, "bbox"),
                "areas": _per_frame(records, "area"),
            }
        )
    return annotations


def _records_by_track(
    target: Target, video_id: int, category_ids: Sequence[int], t: int
) -> dict[int, dict[str, Any]]:
    """COCO instance records of one frame's objects, keyed by track id."""
    if target.masks is None or target.track_ids is None:
        raise DataError(f"clip {video_id}, frame {t}: YouTube-VIS needs masks and track_ids")
    records = instance_annotations(target, category_ids, first_id=0)
    return dict(zip(target.track_ids.tolist(), records))


def _write_frames(clip: Clip, frame_dir: Path, video_id: int) -> dict[str, Any]:
    """Write the clip's frames as PNG files; its ``videos`` record."""
    if not clip:
        raise DataError(f"clip {video_id} has no frames")
    height, width = clip[0][1].size
    file_names = []
    for t, (image, target) in enumerate(clip):
        if target.size != (height, width):
            raise DataError(
                f"clip {video_id}, frame {t}: size {target.size} differs from the first frame's "
                f"{(height, width)}"
            )
        file_name = f"{video_id:05d}/{t:05d}.png"
        write_image(image, frame_dir / file_name)
        file_names.append(file_name)
    return {
        "id": video_id,
        "height": height,
        "width": width,
        "length": len(clip),
        "file_names": file_names,
    }


def _frame_boxes(annotations: list[dict[str, Any]], t: int, masks: Tensor) -> Tensor:
    """``(N, 4)`` xyxy boxes of frame ``t``: the file's ``xywh`` box where it gives one, else the
    mask's pixel extent."""
    boxes = mask_boxes(masks)
    for i, annotation in enumerate(annotations):
        per_frame = annotation.get("bboxes")
        if per_frame is not None and per_frame[t] is not None:
            box = torch.tensor(per_frame[t], dtype=torch.float32)
            boxes[i] = box_convert(box, "xywh", "xyxy")
    return boxes


def _per_frame(records: list[dict[str, Any] | None], key: str) -> list[Any]:
    """``record[key]`` of every frame's record, ``None`` where the track is not seen."""
    return [None if record is None else record[key] for record in records]
