"""YolactEdge's training stages on frame pairs (flow: feature distance, video: YOLACT's losses
on transferred features), what each stage leaves fixed, staged training through ``train`` with
``init``, and scene cuts forcing keyframes."""

from __future__ import annotations

import pytest
import torch

from pansight import api
from pansight.data.shapes_video import (
    ShapesFramePairs,
    ShapesVideoDataset,
    ShapesVideoFrames,
    render_clip,
)
from pansight.engine.checkpoint import load_checkpoint, save_checkpoint
from pansight.errors import CheckpointError, ConfigError
from pansight.models import zoo
from pansight.models.registry import training_view
from pansight.models.yolact.edge.model import YolactEdge
from pansight.models.yolact.edge.training import (
    FeatureTransfer,
    FlowStage,
    FramePairBatch,
    VideoStage,
    feature_distance,
)

TINY = {"input_size": "64", "fpn_channels": "16", "proto_channels": "16", "flow_channels": "8"}
CLASS_NAMES = list(ShapesFramePairs.class_names)


def build(stage: str, seed: int = 0) -> YolactEdge:
    torch.manual_seed(seed)
    return zoo.build_model("yolact_edge_r18", CLASS_NAMES, TINY | {"train_stage": stage})


def pair_batch(stage, count: int = 2):
    pairs = ShapesFramePairs(num_pairs=count, image_size=64)
    images, targets = zip(*(pairs[index] for index in range(count)))
    return stage.preprocess(list(images), list(targets))


def body_statistics(model: YolactEdge) -> list[torch.Tensor]:
    return [buffer.clone() for name, buffer in model.body.named_buffers() if "running" in name]


def test_frame_pairs_hold_a_keyframe_and_a_later_frame_of_one_clip():
    pairs = ShapesFramePairs(num_pairs=6, max_offset=4, image_size=48)
    pair, target = pairs[5]
    clip = render_clip(5, num_frames=3, image_size=48)  # offset 1 + 5 % 4 = 2
    assert pair.shape == (2, 3, 48, 48)
    assert torch.equal(pair[0], clip[0][0]) and torch.equal(pair[1], clip[2][0])
    assert torch.equal(target.masks, clip[2][1].masks)


def test_video_frames_are_the_frames_of_whole_clips_in_order():
    clips = ShapesVideoDataset(num_clips=2, num_frames=3, image_size=48)
    frames = ShapesVideoFrames(clips)
    assert len(frames) == 6
    assert torch.equal(frames[4][0], clips[1][1][0])
    with pytest.raises(IndexError):
        frames[6]


def test_flow_stage_trains_only_the_flow_module_on_the_feature_distance():
    model = build("flow").train()
    stage = training_view(model)
    assert isinstance(stage, FlowStage) and stage.model is model
    statistics = body_statistics(model)
    batch, targets = pair_batch(stage)
    assert isinstance(batch, FramePairBatch) and len(batch) == 2
    outputs = stage(batch, targets)
    assert isinstance(outputs, FeatureTransfer)
    losses = stage.loss(outputs, targets)
    assert list(losses) == ["feature"] and torch.isfinite(losses["feature"])
    losses["feature"].backward()
    for name, parameter in model.named_parameters():
        trains = name.split(".")[0] in ("flow_reduce", "flow_net", "spa")
        assert parameter.requires_grad == trains, name
        assert trains or parameter.grad is None, name
    for module in (model.flow_reduce, model.flow_net.pred3, model.flow_net.pred2, model.spa):
        assert all(p.grad is not None for p in module.parameters())
    for before, after in zip(statistics, body_statistics(model)):
        assert torch.equal(before, after)


def test_flow_stage_learns_to_transfer_features():
    """A few steps on one batch of pairs lower the feature distance."""
    model = build("flow").train()
    stage = training_view(model)
    batch, targets = pair_batch(stage)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(25):
        loss = feature_distance(stage(batch, targets))
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(feature_distance(stage(batch, targets)).detach()) < 0.7 * first


def test_video_stage_trains_all_but_the_resnet_with_yolacts_losses():
    model = build("video").train()
    stage = training_view(model)
    assert isinstance(stage, VideoStage)
    statistics = body_statistics(model)
    batch, targets = pair_batch(stage)
    losses = stage.loss(stage(batch, targets), targets)
    assert {"box", "cls", "mask"} <= set(losses)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.body.parameters())
    assert all(p.grad is not None for p in model.flow_net.pred2.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    for before, after in zip(statistics, body_statistics(model)):
        assert torch.equal(before, after)


def test_mixed_images_and_pairs_are_refused():
    stage = training_view(build("flow"))
    pair, _ = ShapesFramePairs(num_pairs=1, image_size=48)[0]
    with pytest.raises(Exception, match=r"\(2, 3, H, W\)"):
        stage.preprocess([pair, pair[0]])


def test_stage_needs_a_known_name_and_the_flow_module():
    with pytest.raises(ConfigError, match="train_stage"):
        build("motion")
    with pytest.raises(ConfigError, match="with_flow"):
        zoo.build_model(
            "yolact_edge_r18",
            CLASS_NAMES,
            TINY | {"train_stage": "flow", "with_flow": "false", "with_spa": "false"},
        )


def test_staged_training_starts_from_the_image_stage_weights(tmp_path):
    common = {
        "model": "yolact_edge_r18",
        "batch_size": 2,
        "max_iters": 2,
        "amp": False,
        "data__num_train": 4,
        **{f"model__{key}": value for key, value in TINY.items()},
    }
    image_run = api.train(
        "instance", out=str(tmp_path / "image"), data__mode="multi", data__num_val=2, **common
    )
    flow_run = api.train(
        "instance",
        out=str(tmp_path / "flow"),
        data="shapes_video",
        data__num_val=10,
        init=str(image_run.out / "model.pt"),
        model__train_stage="flow",
        **common,
    )
    image_state, flow_state = image_run.model.state_dict(), flow_run.model.state_dict()
    changed = {key for key, value in image_state.items() if not torch.equal(value, flow_state[key])}
    assert all(key.startswith(("flow_reduce", "flow_net", "spa")) for key in changed), changed
    assert {
        "flow_reduce.0.weight",
        "flow_net.pred3.conv.weight",
        "spa.refine_convs.0.0.weight",
    } <= changed
    assert "mask_AP" in flow_run.metrics


def test_init_from_a_yolact_checkpoint_starts_all_but_the_flow_modules(tmp_path, capsys):
    run = api.train(
        "instance",
        model="yolact_r18",
        out=str(tmp_path / "yolact"),
        batch_size=2,
        max_iters=1,
        amp=False,
        data__mode="multi",
        data__num_train=2,
        data__num_val=2,
        model__input_size="64",
    )
    edge = zoo.build_model("yolact_edge_r18", run.model.class_names, {"input_size": 64})
    account = api.load_initial_weights(edge, "yolact_edge_r18", run.out / "model.pt")
    assert "starting afresh: flow_net, flow_reduce, spa" in account
    assert "(yolact_r18)" in account
    for key, value in run.model.state_dict().items():
        assert torch.equal(edge.state_dict()[key], value), key
    payload = load_checkpoint(run.out / "model.pt")
    save_checkpoint(tmp_path / "other.pt", payload | {"state_dict": {"w": torch.zeros(2)}})
    with pytest.raises(CheckpointError, match="other.pt: no weight of the checkpoint fits"):
        api.load_initial_weights(edge, "yolact_edge_r18", tmp_path / "other.pt")


def test_scene_cut_forces_a_keyframe():
    """Frames of one clip continue the stream; a frame of another clip starts a keyframe;
    ``scene_cut_threshold=0`` turns the check off."""
    clip, other = render_clip(0, num_frames=3, image_size=64), render_clip(7, image_size=64)
    for threshold, cut in ((0.2, True), (0.0, False)):
        torch.manual_seed(0)
        model = zoo.build_model(
            "yolact_edge_r18", CLASS_NAMES, TINY | {"scene_cut_threshold": str(threshold)}
        ).eval()
        state = None
        for image, _ in clip:
            _, state = model.predict_video_frame(image, state)
        assert state.frames_since_keyframe == 2
        _, state = model.predict_video_frame(other[0][0], state)
        assert state.last_was_keyframe == cut


def test_non_keyframes_reuse_the_reduced_keyframe_lateral():
    model = build("image").eval()
    (first, _), (second, _) = render_clip(3, num_frames=2, image_size=64)
    _, state = model.predict_video_frame(first)
    assert state.keyframe.reduced_c3 is None
    calls = []
    model.flow_reduce.register_forward_hook(lambda *_: calls.append(1))
    fresh, after = model.predict_video_frame(second, state, keyframe=False)
    assert len(calls) == 2 and after.keyframe.reduced_c3 is not None
    cached, _ = model.predict_video_frame(second, after, keyframe=False)
    assert len(calls) == 3
    torch.testing.assert_close(cached.scores, fresh.scores)
    torch.testing.assert_close(cached.boxes, fresh.boxes)
