"""Video in and out: MP4 round trips, folders of frames, corrupt files named with nothing left
behind, and ``pansight predict`` on a clip end to end."""

from __future__ import annotations

import json
import os

import av
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from pansight.cli import main
from pansight.config import TrainConfig
from pansight.data.images import write_image
from pansight.data.shapes import THING_CLASSES
from pansight.data.shapes_video import render_clip
from pansight.engine.checkpoint import model_payload, save_checkpoint
from pansight.errors import DataError
from pansight.models.zoo import build_model
from pansight.video import (
    VideoWriter,
    natural_key,
    open_frames,
    read_frame_folder,
    read_video,
    write_json_atomically,
)
from pansight.viz import MIN_DRAW_SIDE

NUM_FRAMES = 6
TINY_YOLACT = {"input_size": "96", "fpn_channels": "32", "proto_channels": "32"}


@pytest.fixture(scope="module")
def frames() -> list[torch.Tensor]:
    return [image for image, _ in render_clip(0, num_frames=NUM_FRAMES, image_size=64)]


@pytest.fixture(scope="module")
def clip_file(frames, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    with VideoWriter(path, fps=12) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def test_written_video_reads_back(clip_file, frames):
    source = read_video(clip_file)
    assert source.fps == 12 and source.num_frames == NUM_FRAMES
    decoded = list(source.frames)
    assert len(decoded) == NUM_FRAMES
    for original, copy in zip(frames, decoded):
        assert copy.shape == (3, 64, 64) and copy.dtype == torch.float32
        # lossy 4:2:0 coding: close on average, chroma bleeds at sharp edges
        assert (copy - original).abs().mean() < 0.04
    assert sorted(os.listdir(clip_file.parent)) == ["clip.mp4"]  # no temporary left


def test_odd_sizes_are_padded_to_even(tmp_path):
    picture = torch.zeros(3, 33, 31, dtype=torch.uint8)
    picture[0] = 200
    with VideoWriter(tmp_path / "odd.mp4") as writer:
        writer.write(picture)
        writer.write(picture)
    (first, _) = list(read_video(tmp_path / "odd.mp4").frames)
    assert first.shape == (3, 34, 32)
    assert (first[0] * 255 - 200).abs().max() < 8 and first[1:].max() < 8 / 255


def test_a_failed_write_leaves_nothing(tmp_path, frames):
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "out.mp4") as writer:
        writer.write(frames[0])
        raise RuntimeError("stopped")
    with pytest.raises(ValueError, match="at least one frame"), VideoWriter(tmp_path / "x.mp4"):
        pass
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "out.mp4") as writer:
        writer.write(frames[0])
        write_json_atomically(tmp_path / "out.json", {"complete": False})
        raise RuntimeError("stopped")
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_folder_of_frames_in_natural_order(tmp_path, frames):
    names = ["f1.png", "f2.png", "f10.png", "f3.png", "F4.png", "f20.png"]
    for frame, name in zip(frames, names):
        write_image(frame, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a frame")
    source = open_frames(tmp_path)
    assert source.num_frames == NUM_FRAMES and source.fps is None
    order = sorted(names, key=natural_key)
    assert order == ["f1.png", "f2.png", "f3.png", "F4.png", "f10.png", "f20.png"]
    expected = [frames[names.index(name)] for name in order]
    for copy, original in zip(source.frames, expected, strict=True):
        torch.testing.assert_close(copy, original, atol=1 / 255, rtol=0)


def test_folder_frames_must_share_a_size(tmp_path, frames):
    write_image(frames[0], tmp_path / "0.png")
    write_image(frames[1][:, :32], tmp_path / "1.png")
    with pytest.raises(DataError, match=r"frame 1 is 32x64 but frame 0 is 64x64"):
        list(read_frame_folder(tmp_path).frames)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: holds no frame images"):
        open_frames(tmp_path / "empty")


def corrupt_copies(clip_file, folder):
    """Random bytes, the clip cut inside a frame and between two frames, and an empty file."""
    data = clip_file.read_bytes()
    with av.open(str(clip_file)) as container:
        starts = [packet.pos for packet in container.demux(video=0) if packet.size]
    rng = np.random.default_rng(0)
    copies = {
        "noise.mp4": rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "cut_in_a_frame.mp4": data[: len(data) * 2 // 3],
        "cut_between_frames.mp4": data[: starts[3]],
        "empty.mp4": b"",
    }
    for name, content in copies.items():
        (folder / name).write_bytes(content)
    return [folder / name for name in copies]


def test_corrupt_videos_raise_data_error_naming_them(clip_file, tmp_path):
    problems = [
        "cannot open video",
        "decoding failed after",
        "ends after 3 of the 6 frames",
        "cannot open video",
    ]
    for path, problem in zip(corrupt_copies(clip_file, tmp_path), problems, strict=True):
        with pytest.raises(DataError, match=f"{path.name}: {problem}"):
            list(read_video(path).frames)


def tiny_checkpoint(name: str, path) -> None:
    torch.manual_seed(0)
    overrides = TINY_YOLACT | ({"flow_channels": "16"} if "edge" in name else {})
    model = build_model(name, list(THING_CLASSES), overrides).eval()
    payload = model_payload(
        model, model_name=name, train_config=TrainConfig(), data_set=None, metrics={}
    )
    save_checkpoint(path, payload)


@pytest.fixture(scope="module")
def edge_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("edge") / "model.pt"
    tiny_checkpoint("yolact_edge_r18", path)
    return path


def test_predict_a_clip_with_yolact_edge(edge_checkpoint, clip_file, tmp_path):
    from pansight.api import load

    out = tmp_path / "pred"
    assert main(["predict", str(edge_checkpoint), str(clip_file), "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["clip.json", "clip.mp4"]
    results = json.loads((out / "clip.json").read_text())
    assert results["task"] == "instance" and results["fps"] == 12
    assert [record["frame"] for record in results["frames"]] == list(range(NUM_FRAMES))
    # the streaming path (keyframe, then flow-warped frames) made these detections
    expected = load(edge_checkpoint).predict_video(list(read_video(clip_file).frames))
    for record, detections in zip(results["frames"], expected, strict=True):
        scores = [detection["score"] for detection in record["detections"]]
        np.testing.assert_allclose(scores, detections.scores.numpy(), rtol=1e-5)
    detection = results["frames"][-1]["detections"][0]
    assert detection["class_name"] == THING_CLASSES[detection["category_id"]]
    assert isinstance(detection["track_id"], int) and len(detection["bbox"]) == 4
    mask = mask_utils.decode(detection["segmentation"])
    assert mask.shape == (64, 64)
    tracked = {d["track_id"] for f in results["frames"] for d in f["detections"]} - {-1}
    assert tracked and min(tracked) >= 0
    annotated = list(read_video(out / "clip.mp4").frames)
    assert len(annotated) == NUM_FRAMES and annotated[0].shape == (3, MIN_DRAW_SIDE, MIN_DRAW_SIDE)


def test_predict_a_folder_of_frames_with_yolact(frames, tmp_path):
    tiny_checkpoint("yolact_r18", tmp_path / "model.pt")
    for index, frame in enumerate(frames[:3]):
        write_image(frame, tmp_path / "walk" / f"frame{index}.png")
    out = tmp_path / "pred"
    argv = ["predict", str(tmp_path / "model.pt"), str(tmp_path / "walk"), "--out", str(out)]
    assert main([*argv, "--video", "--fps", "5", "--batch-size", "2"]) == 0
    results = json.loads((out / "walk.json").read_text())
    assert results["fps"] == 5 and len(results["frames"]) == 3
    assert read_video(out / "walk.mp4").num_frames == 3


def test_predict_on_corrupt_videos_names_them_and_writes_nothing(
    edge_checkpoint, clip_file, tmp_path, capsys
):
    out = tmp_path / "pred"
    for path in corrupt_copies(clip_file, tmp_path):
        assert main(["predict", str(edge_checkpoint), str(path), "--out", str(out)]) == 2
        last_line = capsys.readouterr().err.strip().splitlines()[-1]
        assert last_line.startswith("error: ") and path.name in last_line
        assert not out.exists() or os.listdir(out) == []


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--show-prototypes"], "applies to images"),
        (["--fps", "0"], "must be positive"),
        (["--out", "{folder}"], "would replace it"),
    ],
)
def test_predict_video_refuses_bad_options(edge_checkpoint, clip_file, extra, message, capsys):
    extra = [arg.format(folder=clip_file.parent) for arg in extra]
    assert main(["predict", str(edge_checkpoint), str(clip_file), *extra]) == 2
    assert message in capsys.readouterr().err
