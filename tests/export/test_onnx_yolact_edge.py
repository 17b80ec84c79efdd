"""ONNX export of YolactEdge: one graph whose ``keyframe`` input picks the keyframe or the
flow-warped path; onnxruntime matches the eager model on single images (keyframes), on frame
sequences carrying the keyframe state (batch 1 and 2), in the forced-keyframe rules, through the
video path, and from the command line."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx_parity import assert_same_detections

import pansight
from pansight.cli import main
from pansight.config import TrainConfig
from pansight.data.images import write_image
from pansight.data.shapes_video import render_clip
from pansight.engine.checkpoint import model_payload, save_checkpoint
from pansight.errors import ConfigError
from pansight.export import YolactEdgeOnnxPredictor, export_onnx, load_onnx
from pansight.export.yolact_edge import STATE_INPUTS, STATE_OUTPUTS
from pansight.models.streaming import video_detections
from pansight.models.zoo import build_model

CLASSES = ["circle", "square", "triangle", "star"]
TINY = {
    "input_size": 64,
    "fpn_channels": 16,
    "proto_channels": 16,
    "num_prototypes": 8,
    "flow_channels": 8,
    "detections_per_img": 20,
    "keyframe_interval": 3,
}
IMAGE_SIZES = [(40, 50), (70, 33), (23, 90)]
FRAME_SIZE = (48, 56)
STATE_FIELDS = ("c3_lateral", "reduced_c3", "p4", "p5")


def tiny_edge(**overrides):
    """A tiny random YolactEdge whose flows move ``p4`` by half a pixel on average, half of its
    samples partly beyond the border (the initial flows are nearly zero), so the warp's
    interpolation and zero padding matter."""
    torch.manual_seed(0)
    model = build_model("yolact_edge_r18", CLASSES, {**TINY, **overrides}).eval()
    if model.config.with_flow:
        with torch.no_grad():
            for prediction in (model.flow_net.pred2, model.flow_net.pred3):
                prediction.conv.weight.mul_(5.0)
    return model


def images():
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, h, w, generator=generator) for h, w in IMAGE_SIZES]


def clip(num_frames=7, size=FRAME_SIZE):
    """Frames of one scene: a random picture drifting right a pixel per frame."""
    generator = torch.Generator().manual_seed(2)
    picture = torch.rand(3, size[0], size[1] + num_frames, generator=generator)
    return [picture[:, :, shift : shift + size[1]] for shift in range(num_frames)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``(eager model, {dynamic: predictor})``."""
    model = tiny_edge()
    folder = tmp_path_factory.mktemp("yolact_edge")
    predictors = {
        dynamic: load_onnx(export_onnx(model, folder / f"{dynamic}.onnx", dynamic=dynamic), 1)
        for dynamic in (False, True)
    }
    return model, predictors


def assert_same_outputs(eager, ours):
    for name in ("box_deltas", "class_logits", "mask_coefficients", "prototypes", "priors"):
        torch.testing.assert_close(getattr(ours, name), getattr(eager, name), atol=1e-3, rtol=0)


def test_one_file_holds_both_paths_under_a_keyframe_switch(exported):
    _, predictors = exported
    predictor = predictors[True]
    assert type(predictor) is YolactEdgeOnnxPredictor and predictor.has_flow
    assert type(pansight.load(predictor.path)) is YolactEdgeOnnxPredictor
    graph = onnx.load(predictor.path).graph
    assert [node.op_type for node in graph.node] == ["If"]
    names = [graph_input.name for graph_input in graph.input]
    assert names == ["images", "keyframe", *STATE_INPUTS]
    assert [output.name for output in graph.output][-4:] == list(STATE_OUTPUTS)
    branches = {attribute.name: attribute.g for attribute in graph.node[0].attribute}
    assert "GridSample" in {node.op_type for node in branches["else_branch"].node}
    assert "GridSample" not in {node.op_type for node in branches["then_branch"].node}


@pytest.mark.parametrize("dynamic", [False, True])
def test_single_images_take_the_keyframe_path(exported, dynamic):
    model, predictors = exported
    eager_results = model.predict(images())
    assert all(len(result.scores) == 20 for result in eager_results), "a weak test otherwise"
    assert all(result.masks.any() for result in eager_results)
    assert_same_detections(eager_results, predictors[dynamic].predict(images()))


def run_sequence(step, frames, batch_size):
    """``step(batch, state, keyframe)`` over ``frames`` (each repeated ``batch_size`` times),
    a keyframe every third frame: each frame's outputs and state."""
    model_state, results = None, []
    for index, frame in enumerate(frames):
        batch_frames = [frame.flip(-1) if copy else frame for copy in range(batch_size)]
        outputs, model_state = step(batch_frames, model_state, index % 3 == 0)
        results.append((outputs, model_state))
    return results


@pytest.mark.parametrize("batch_size", [1, 2])
def test_frame_sequences_carry_the_keyframe_state(exported, batch_size):
    model, predictors = exported
    predictor = predictors[batch_size > 1]

    def eager_step(frames, state, keyframe):
        batch, _ = model.preprocess(frames)
        with torch.no_grad():
            return model.forward_frame(batch, state, keyframe)

    def onnx_step(frames, state, keyframe):
        return predictor.forward_frame(predictor.preprocess(frames)[0], state, keyframe)

    frames = clip()
    eager_run = run_sequence(eager_step, frames, batch_size)
    onnx_run = run_sequence(onnx_step, frames, batch_size)
    steps = [state.frames_since_keyframe for _, state in onnx_run]
    assert steps == [0, 1, 2, 0, 1, 2, 0]
    for (eager, eager_state), (ours, our_state) in zip(eager_run, onnx_run):
        assert_same_outputs(eager, ours)
        assert our_state.frame_index == eager_state.frame_index
        assert our_state.frame_sizes == eager_state.frame_sizes
        torch.testing.assert_close(our_state.keyframe.histograms, eager_state.keyframe.histograms)
        for field in STATE_FIELDS:
            expected = getattr(eager_state.keyframe, field)
            if expected is not None:  # the eager model reduces the lateral on the next frame
                torch.testing.assert_close(
                    getattr(our_state.keyframe, field), expected, atol=1e-4, rtol=0
                )
    # the warped path is not the keyframe path on the same frame
    batch, _ = predictor.preprocess(frames[1:2] * batch_size)
    full, _ = predictor.forward_frame(batch, None)
    assert (full.class_logits - onnx_run[1][0].class_logits).abs().max() > 1e-2


def test_a_fixed_batch_graph_streams_its_own_batch_size_only(exported):
    _, predictors = exported
    batch, _ = predictors[False].preprocess(clip(2))
    with pytest.raises(ConfigError, match="streams 1 frame.*--dynamic"):
        predictors[False].forward_frame(batch)


def test_detections_of_warped_frames_match_eager(exported):
    model, predictors = exported
    predictor = predictors[False]
    eager_state = onnx_state = None
    for index, frame in enumerate(clip()):
        keyframe = index % 3 == 0
        eager, eager_state = model.predict_video_frame(frame, eager_state, keyframe)
        ours, onnx_state = predictor.predict_video_frame(frame, onnx_state, keyframe)
        assert onnx_state.last_was_keyframe == keyframe
        assert len(eager.scores) == 20
        assert_same_detections([eager], [ours])


def test_the_predictor_forces_keyframes_as_the_eager_model(exported):
    model, predictors = exported
    predictor = predictors[False]
    frames = clip(3)
    _, state = predictor.predict_video_frame(frames[0])
    _, state = predictor.predict_video_frame(frames[1], state)
    assert not state.last_was_keyframe
    resized = torch.nn.functional.interpolate(frames[2][None], size=(30, 40))[0]
    _, after_resize = predictor.predict_video_frame(resized, state, keyframe=False)
    assert after_resize.last_was_keyframe and after_resize.frame_sizes == ((30, 40),)
    _, after_cut = predictor.predict_video_frame(torch.zeros(3, *FRAME_SIZE), state, False)
    assert after_cut.last_was_keyframe, "a black frame is a scene cut"


def test_video_path_runs_the_onnx_predictor_like_the_eager_model(exported):
    model, predictors = exported
    frames = clip()
    eager = [detections for _, detections in video_detections(model, frames)]
    ours = [detections for _, detections in video_detections(predictors[True], frames)]
    assert_same_detections(eager, ours)
    assert_same_detections(eager, predictors[True].predict_video(frames))


def test_no_detections(exported, tmp_path):
    model, _ = exported
    frames = clip(2)
    batches = [model.preprocess([frame])[0] for frame in frames]
    with torch.no_grad():
        keyframe, state = model.forward_frame(batches[0])
        warped, _ = model.forward_frame(batches[1], state)
    best = max(
        float(outputs.class_logits.softmax(dim=-1)[..., 1:].max()) for outputs in (keyframe, warped)
    )
    strict = tiny_edge(score_thresh=best + 1e-3)
    predictor = load_onnx(export_onnx(strict, tmp_path / "strict.onnx"), 1)
    eager = strict.predict_video(frames)
    assert [len(result.scores) for result in eager] == [0, 0]
    ours = predictor.predict_video(frames)
    assert_same_detections(eager, ours)
    assert ours[1].masks.shape == (0, *FRAME_SIZE)


def test_without_the_flow_module_every_frame_is_a_keyframe(tmp_path):
    model = tiny_edge(with_flow=False, with_spa=False)
    predictor = load_onnx(export_onnx(model, tmp_path / "still.onnx"), 1)
    assert type(predictor) is YolactEdgeOnnxPredictor and not predictor.has_flow
    frames = clip(2)
    assert_same_detections(model.predict_video(frames), predictor.predict_video(frames))
    _, state = predictor.predict_video_frame(frames[0])
    _, state = predictor.predict_video_frame(frames[1], state, keyframe=False)
    assert state.last_was_keyframe


def test_cli_exports_and_predicts_a_clip_like_the_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    model = tiny_edge()
    payload = model_payload(
        model, model_name="yolact_edge_r18", train_config=TrainConfig(), data_set=None, metrics={}
    )
    save_checkpoint(tmp_path / "model.pt", payload)
    assert main(["export", str(tmp_path / "model.pt"), "--format", "onnx"]) == 0
    assert f"wrote {tmp_path / 'model.onnx'}" in capsys.readouterr().out
    for index, (frame, _) in enumerate(render_clip(0, num_frames=4, image_size=48)):
        write_image(frame, tmp_path / "walk" / f"frame{index}.png")
    records = {}
    for source in ("model.pt", "model.onnx"):
        out = tmp_path / source.replace(".", "_")
        argv = ["predict", str(tmp_path / source), str(tmp_path / "walk"), "--out", str(out)]
        assert main([*argv, "--video"]) == 0
        records[source] = json.loads((out / "walk.json").read_text())["frames"]
    assert len(records["model.onnx"]) == 4
    for eager, ours in zip(records["model.pt"], records["model.onnx"], strict=True):
        assert len(ours["detections"]) == len(eager["detections"]) > 0
        for key in ("score", "bbox"):
            np.testing.assert_allclose(
                [d[key] for d in ours["detections"]],
                [d[key] for d in eager["detections"]],
                atol=1e-3,
            )
        assert [d["category_id"] for d in ours["detections"]] == [
            d["category_id"] for d in eager["detections"]
        ]
