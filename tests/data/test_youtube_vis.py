import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from pansight.data.shapes import THING_CLASSES
from pansight.data.shapes_video import ShapesVideoDataset, render_clip
from pansight.data.youtube_vis import YouTubeVIS, write_youtube_vis
from pansight.errors import DataError
from pansight.structures import Target

NUM_FRAMES = 4


def edited(target: Target, drop: set[int], crowd: set[int]) -> Target:
    """``target`` without the objects of the track ids ``drop``, those of ``crowd`` crowd."""
    keep = torch.tensor([i not in drop for i in target.track_ids.tolist()], dtype=torch.bool)
    iscrowd = torch.tensor([i in crowd for i in target.track_ids.tolist()], dtype=torch.bool)
    return replace(
        target,
        boxes=target.boxes[keep],
        labels=target.labels[keep],
        masks=target.masks[keep],
        iscrowd=iscrowd[keep],
        track_ids=target.track_ids[keep],
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Four rendered clips and one edited to have a first track never seen, a track missing
    from one frame and a crowd track, written as YouTube-VIS; the clips themselves."""
    root = tmp_path_factory.mktemp("youtube_vis")
    dataset = ShapesVideoDataset("val", num_clips=4, num_frames=NUM_FRAMES, image_size=32, seed=1)
    clips = [dataset[i] for i in range(len(dataset))]
    gappy = [
        (image, edited(target, {0, 2} if t == 1 else {0}, crowd={3}))
        for t, (image, target) in enumerate(dataset[3])
    ]
    clips.append(gappy)
    path = write_youtube_vis(clips, root, "val")
    return root, path, clips


def read_back(written) -> YouTubeVIS:
    root, path, _ = written
    return YouTubeVIS(path, root / "val" / "JPEGImages")


def test_round_trip(written):
    _, path, clips = written
    assert path.name == "instances.json"
    dataset = read_back(written)
    assert dataset.class_names == list(THING_CLASSES)
    assert dataset.category_ids == [1, 3, 5, 7, 9]
    assert len(dataset) == len(clips)
    for index, expected_clip in enumerate(clips):
        clip = dataset[index]
        assert len(clip) == NUM_FRAMES
        ids = sorted({i for _, target in expected_clip for i in target.track_ids.tolist()})
        renumbered = {track_id: rank for rank, track_id in enumerate(ids)}
        for t, ((image, target), (expected_image, expected)) in enumerate(zip(clip, expected_clip)):
            assert torch.equal(image, expected_image)
            assert target.image_id == index * NUM_FRAMES + t and target.size == expected.size
            assert torch.equal(target.masks, expected.masks)
            assert torch.equal(target.labels, expected.labels)
            assert torch.equal(target.boxes, expected.boxes)
            assert torch.equal(target.iscrowd, expected.iscrowd)
            expected_ids = [renumbered[i] for i in expected.track_ids.tolist()]
            assert target.track_ids.tolist() == expected_ids


def test_rendered_clip_track_ids_come_back_unchanged(written):
    dataset = read_back(written)
    _, _, clips = written
    for (_, target), (_, expected) in zip(dataset[2], clips[2]):
        assert torch.equal(target.track_ids, expected.track_ids)


def test_gappy_clip_is_written_with_nulls(written):
    _, path, clips = written
    data = json.loads(path.read_text())
    last_video = data["videos"][-1]
    annotations = [a for a in data["annotations"] if a["video_id"] == last_video["id"]]
    assert len(annotations) == 3
    assert [a["iscrowd"] for a in annotations] == [0, 0, 1]
    assert annotations[1]["segmentations"][1] is None and annotations[1]["bboxes"][1] is None
    assert annotations[0]["segmentations"][1] is not None
    frame = clips[-1][2][1]
    for annotation, mask in zip(annotations, frame.masks):
        segmentation = annotation["segmentations"][2]
        assert np.array_equal(mask_utils.decode(segmentation).astype(bool), mask.numpy())
        assert annotation["areas"][2] == int(mask.sum())
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))


TINY_MASK = np.zeros((4, 6), dtype=bool)
TINY_MASK[1:3, 2:5] = True
TINY_RUNS = [9, 2, 2, 2, 2, 2, 5]
"""Uncompressed RLE of ``TINY_MASK``: column-major runs, starting with background."""


def annotation_with(**fields) -> dict:
    """The tiny data set's annotation (seen in frame 0 only), with ``fields`` changed."""
    base = {
        "id": 1,
        "video_id": 7,
        "category_id": 20,
        "segmentations": [{"size": [4, 6], "counts": TINY_RUNS}, None],
    }
    return base | fields


def tiny_file(tmp_path, annotation: dict | None = None, **video) -> tuple:
    """A one-video, two-frame 4x6 data set (categories 20, 10); its JSON path and frame folder."""
    frame_dir = tmp_path / "frames"
    (frame_dir / "v").mkdir(parents=True, exist_ok=True)
    for t in range(2):
        Image.fromarray(np.full((4, 6, 3), 50 * t, dtype=np.uint8)).save(frame_dir / f"v/{t}.png")
    record = {"id": 7, "height": 4, "width": 6, "length": 2, "file_names": ["v/0.png", "v/1.png"]}
    data = {
        "videos": [record | video],
        "categories": [{"id": 20, "name": "b"}, {"id": 10, "name": "a"}],
        "annotations": [annotation or annotation_with()],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, frame_dir


def test_uncompressed_rle_without_boxes_reads_boxes_from_masks(tmp_path):
    path, frames = tiny_file(tmp_path)
    dataset = YouTubeVIS(path, frames)
    assert dataset.class_names == ["a", "b"] and dataset.category_ids == [10, 20]
    (image, first), (_, second) = dataset[0]
    assert image.shape == (3, 4, 6)
    assert first.labels.tolist() == [1] and first.track_ids.tolist() == [0]
    assert np.array_equal(first.masks[0].numpy(), TINY_MASK)
    assert first.boxes.tolist() == [[2.0, 1.0, 5.0, 3.0]]
    assert len(second.labels) == 0 and second.masks.shape == (0, 4, 6)


def test_boxes_given_in_the_file_are_used(tmp_path):
    path, frames = tiny_file(tmp_path, annotation_with(bboxes=[[1.5, 0.5, 4, 3], None]))
    (_, first), _ = YouTubeVIS(path, frames)[0]
    assert first.boxes.tolist() == [[1.5, 0.5, 5.5, 3.5]]


@pytest.mark.parametrize(
    ("annotation", "video", "message"),
    [
        (annotation_with(category_id=3), {}, "unknown category_id 3"),
        (annotation_with(video_id=8), {}, "video_id 8 is not in 'videos'"),
        (
            annotation_with(segmentations=[{"size": [6, 4], "counts": TINY_RUNS}, None]),
            {},
            r"RLE size \[6, 4\] is not the image's \[4, 6\]",
        ),
        (annotation_with(segmentations=[None]), {}, "one entry per frame"),
        (annotation_with(bboxes=[[0, 0, -1, 2], None]), {}, "negative width"),
        (annotation_with(), {"length": 3}, "2 file_names for a video of length 3"),
        (annotation_with(), {"height": 0}, "must be positive"),
    ],
)
def test_malformed_annotations_name_the_file(tmp_path, annotation, video, message):
    path, frames = tiny_file(tmp_path, annotation, **video)
    with pytest.raises(DataError, match=message) as error:
        YouTubeVIS(path, frames)
    assert str(path) in str(error.value)


def test_invalid_json_and_missing_keys(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON"):
        YouTubeVIS(path, tmp_path)
    path.write_text(json.dumps({"videos": [], "annotations": []}))
    with pytest.raises(DataError, match="missing required key 'categories'"):
        YouTubeVIS(path, tmp_path)


def test_missing_and_wrongly_sized_frames_name_the_frame(tmp_path):
    path, frames = tiny_file(tmp_path)
    (frames / "v" / "1.png").unlink()
    with pytest.raises(DataError, match="not found.*frame 1 of video 7") as error:
        YouTubeVIS(path, frames)[0]
    assert str(path) in str(error.value)
    Image.fromarray(np.zeros((5, 6, 3), dtype=np.uint8)).save(frames / "v" / "1.png")
    with pytest.raises(DataError, match="frame is 5x6 but frame 1 of video 7"):
        YouTubeVIS(path, frames)[0]


def test_writer_needs_track_ids(tmp_path):
    image, target = render_clip(0, num_frames=1, image_size=32)[0]
    with pytest.raises(DataError, match="clip 1, frame 0: YouTube-VIS needs masks and track_ids"):
        write_youtube_vis([[(image, replace(target, track_ids=None))]], tmp_path, "val")
