"""Video evaluation: a model that predicts the ground truth scores 1; YolactEdge streams clips
with the keyframe interval asked for; track ids come from the tracker."""

from __future__ import annotations

import json

import pytest
import torch

from pansight import api
from pansight.cli import main
from pansight.config import DataConfig
from pansight.data.factory import build_dataset
from pansight.data.shapes_video import ShapesVideoDataset
from pansight.data.youtube_vis import write_youtube_vis
from pansight.engine.video_evaluator import clip_detections, evaluate_video
from pansight.errors import ConfigError
from pansight.models import zoo
from pansight.structures import Detections

CLIPS = ShapesVideoDataset("val", num_clips=3, num_frames=4, image_size=48)


class Oracle:
    """Predicts each frame's ground truth (looked up by the frame's pixels)."""

    num_classes = len(CLIPS.class_names)

    def __init__(self) -> None:
        self.truth = [(image, target) for clip in CLIPS for image, target in clip]

    def predict(self, images):
        results = []
        for image in images:
            target = next(t for frame, t in self.truth if torch.equal(frame, image))
            scores = torch.ones(len(target.labels))
            results.append(Detections(target.boxes, scores, target.labels, target.masks))
        return results


def test_ground_truth_predictions_score_one_with_tracks_that_follow_the_things():
    clips = [CLIPS[index] for index in range(len(CLIPS))]
    metrics = evaluate_video(Oracle(), clips, progress=False)
    assert metrics["mask_AP"] == 1.0 and metrics["mask_AP50"] == 1.0
    detections = clip_detections(Oracle(), [image for image, _ in clips[0]])
    first_ids = {int(i) for i in detections[0].track_ids}
    assert len(first_ids) == len(clips[0][0][1].labels)
    assert {int(i) for i in detections[1].track_ids} <= first_ids | {max(first_ids) + 1}


def test_yolact_edge_streams_with_the_interval_asked_for():
    torch.manual_seed(0)
    tiny = {"input_size": "64", "fpn_channels": "16", "proto_channels": "16", "flow_channels": "8"}
    model = zoo.build_model("yolact_edge_r18", list(CLIPS.class_names), tiny).eval()
    full_passes = []
    model.body.layer4.register_forward_hook(lambda *_: full_passes.append(1))
    frames = [image for image, _ in CLIPS[0]]
    clip_detections(model, frames, keyframe_interval=1)
    assert len(full_passes) == 4
    clip_detections(model, frames, keyframe_interval=3)
    assert len(full_passes) == 4 + 2
    with pytest.raises(ConfigError, match="keyframe_interval=0"):
        clip_detections(model, frames, keyframe_interval=0)
    metrics = evaluate_video(model, [CLIPS[0]], keyframe_interval=2, progress=False)
    assert set(metrics) == {"mask_AP", "mask_AP50", "mask_AP75"}
    assert all(0.0 <= value <= 1.0 for value in metrics.values())


def test_cli_video_eval_of_a_checkpoint_on_youtube_vis_files(tmp_path, capsys):
    """A YouTube-VIS folder written from the synthetic clips evaluates through the command
    line; a clip data set refuses image training."""
    run = api.train(
        "instance",
        model="yolact_edge_r18",
        out=str(tmp_path / "run"),
        batch_size=2,
        max_iters=1,
        amp=False,
        data__num_train=2,
        data__num_val=2,
        model__input_size="64",
    )
    write_youtube_vis(CLIPS, tmp_path / "vis", "val")
    out = tmp_path / "metrics.json"
    code = main(
        [
            "eval",
            str(run.out / "model.pt"),
            "data=youtube_vis",
            f"data.root={tmp_path / 'vis'}",
            "--video",
            "--keyframe-interval",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert set(json.loads(out.read_text())) == {"mask_AP", "mask_AP50", "mask_AP75"}
    with pytest.raises(ConfigError, match="video evaluation only"):
        build_dataset(DataConfig(name="youtube_vis", root=str(tmp_path / "vis")), "val", "instance")
