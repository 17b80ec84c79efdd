"""YolactEdge: flow warping against hand-computed shifts; with zero flow the non-keyframe path
reproduces the keyframe path; keyframe scheduling and the forced-keyframe rules; the training
hook; state dicts with exactly the keys and shapes of the original's two released layouts load
strictly and run, and a missing, unexpected or misshaped weight is named.

The key lists in ``data/`` are the layouts of the original's released files (key, shape).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from checkpoint_layouts import random_state_dict, reference_keys
from torch import nn

from pansight.config import to_dict
from pansight.data.shapes import THING_CLASSES, ShapesDataset
from pansight.errors import CheckpointError, ConfigError
from pansight.models import zoo
from pansight.models.foreign import import_foreign_weights
from pansight.models.yolact.edge.flow import FlowEstimate, transfer, warp
from pansight.models.yolact.edge.model import StreamState, YolactEdge, YolactEdgeConfig
from pansight.models.yolact.edge.original_import import (
    YOUTUBE_VIS_CLASSES,
    EdgeLayout,
    import_original_yolact_edge,
    original_edge_layout,
    original_edge_to_pansight_key,
    pansight_to_original_edge_key,
)
from pansight.models.yolact.edge.training import transfer_features
from pansight.structures import Detections

DATA = Path(__file__).parent / "data"
LAYOUTS = {
    "vid": DATA / "yolact_edge_vid_resnet50_checkpoint_keys.tsv",
    "youtubevis": DATA / "yolact_edge_youtubevis_resnet50_checkpoint_keys.tsv",
}
CLASS_NAMES = ["circle", "square"]
TINY = {"input_size": "64", "fpn_channels": "16", "proto_channels": "16", "flow_channels": "8"}
SMALL_INPUT = {"input_size": "64"}


def build(seed: int = 0, **overrides: str) -> YolactEdge:
    torch.manual_seed(seed)
    return zoo.build_model("yolact_edge_r18", CLASS_NAMES, TINY | overrides).eval()


def frame(seed: int, size: tuple[int, int] = (48, 56)) -> torch.Tensor:
    return torch.rand(3, *size, generator=torch.Generator().manual_seed(seed))


def count_calls(module: nn.Module) -> list[int]:
    """A one-element list counting ``module``'s forward calls."""
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def zero_flow(model: YolactEdge) -> None:
    """Make every flow prediction the identity transfer: flow 0, scale 1, bias 0."""
    for prediction in (model.flow_net.pred1, model.flow_net.pred2, model.flow_net.pred3):
        for conv in (prediction.conv, prediction.scale, prediction.bias):
            nn.init.zeros_(conv.weight)
        nn.init.ones_(prediction.scale.bias)
        nn.init.zeros_(prediction.bias.bias)


# -- warping -------------------------------------------------------------------------------------


def test_warp_moves_features_by_the_flow_in_pixels():
    features = torch.arange(20.0).view(1, 1, 4, 5)
    flow = torch.zeros(1, 2, 4, 5)
    torch.testing.assert_close(warp(features, flow), features)
    # one pixel in x on a 5-wide map is a flow of 16 * 1 / (5 - 1) = 4: read the right neighbor
    flow[:, 0] = 4.0
    expected = torch.zeros(1, 1, 4, 5)
    expected[..., :4] = features[..., 1:]
    torch.testing.assert_close(warp(features, flow), expected)
    # half a pixel in y on a 4-high map (16 * 0.5 / 3): the mean of a row and the one below,
    # half of the last row (zeros beyond the map)
    flow = torch.zeros(1, 2, 4, 5)
    flow[:, 1] = 8.0 / 3.0
    expected = torch.zeros(1, 1, 4, 5)
    expected[..., :3, :] = (features[..., :3, :] + features[..., 1:, :]) / 2
    expected[..., 3, :] = features[..., 3, :] / 2
    torch.testing.assert_close(warp(features, flow), expected)


def test_transfer_scales_and_shifts_the_warped_features():
    features = torch.arange(12.0).view(1, 2, 2, 3)
    estimate = FlowEstimate(
        torch.zeros(1, 2, 2, 3), torch.full((1, 2, 2, 3), 2.0), torch.ones(1, 2, 2, 3)
    )
    torch.testing.assert_close(transfer(features, estimate), 2 * features + 1)


# -- non-keyframe path ---------------------------------------------------------------------------


def test_zero_flow_without_spa_gives_the_keyframe_pyramid():
    model = build(with_spa="false")
    zero_flow(model)
    batch, _ = model.preprocess([frame(1), frame(2)])
    with torch.no_grad():
        top_down, keyframe = model.keyframe_top_down(batch)
        transferred, flows = model.transferred_top_down(batch, keyframe)
        assert all(not estimate.flow.any() for estimate in flows.values())
        expected, levels = model.fpn.smooth(top_down), model.fpn.smooth(transferred)
        for name in ("p3", "p4", "p5", "p6", "p7"):
            torch.testing.assert_close(levels[name], expected[name], rtol=1e-5, atol=1e-5)
        key_outputs, state = model.forward_frame(batch)
        outputs, state = model.forward_frame(batch, state, keyframe=False)
    assert not state.last_was_keyframe
    for field, value in vars(key_outputs).items():
        torch.testing.assert_close(getattr(outputs, field), value, rtol=1e-4, atol=1e-5)


def test_spa_refines_the_transferred_p4_and_p5_only():
    model = build()
    zero_flow(model)
    batch, _ = model.preprocess([frame(1)])
    with torch.no_grad():
        top_down, keyframe = model.keyframe_top_down(batch)
        transferred, _ = model.transferred_top_down(batch, keyframe)
    torch.testing.assert_close(transferred["p3"], top_down["p3"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(transferred["p4"], top_down["p4"], atol=1e-3)
    assert not torch.allclose(transferred["p5"], top_down["p5"], atol=1e-3)


def test_non_keyframe_runs_the_backbone_only_up_to_c3():
    model = build()
    layer2, layer3, layer4 = (count_calls(getattr(model.body, f"layer{n}")) for n in (2, 3, 4))
    state = None
    for keyframe in (True, False, False):
        _, state = model.predict_video_frame(frame(3), state, keyframe)
    assert (layer2[0], layer3[0], layer4[0]) == (3, 1, 1)


def test_transfer_features_trains_the_flow_module_not_the_backbone():
    model = build().train()
    keyframe_batch, _ = model.preprocess([frame(4), frame(5)])
    frame_batch, _ = model.preprocess([frame(6), frame(7)])
    pair = transfer_features(model, keyframe_batch, frame_batch)
    assert set(pair.reference) == set(pair.transferred) == {"p3", "p4", "p5"}
    for name in ("p3", "p4", "p5"):
        assert pair.transferred[name].shape == pair.reference[name].shape
        assert pair.flows[name].flow.shape == (2, 2, *pair.reference[name].shape[-2:])
    assert not pair.reference["p4"].requires_grad
    loss = sum(((pair.transferred[n] - pair.reference[n]) ** 2).mean() for n in ("p4", "p5"))
    loss.backward()
    assert model.flow_net.pred2.conv.weight.grad.abs().sum() > 0
    assert model.flow_reduce[0].weight.grad.abs().sum() > 0
    assert model.spa.refine_convs[1][0].weight.grad.abs().sum() > 0
    assert model.body.conv1.weight.grad is None and model.fpn.lat_layers[2].weight.grad is None


# -- keyframe scheduling -------------------------------------------------------------------------


def test_keyframe_every_interval_frames_unless_the_caller_chooses():
    model = build(keyframe_interval="3")
    layer4 = count_calls(model.body.layer4)
    state, schedule = None, []
    for index in range(7):
        _, state = model.predict_video_frame(frame(index), state)
        schedule.append(state.last_was_keyframe)
        assert state.frame_index == index
    assert schedule == [True, False, False, True, False, False, True]
    assert layer4[0] == 3
    _, state = model.predict_video_frame(frame(8), state, keyframe=True)
    assert state.last_was_keyframe
    _, state = model.predict_video_frame(frame(9), state, keyframe=False)
    _, state = model.predict_video_frame(frame(10), state, keyframe=False)
    _, state = model.predict_video_frame(frame(11), state, keyframe=False)
    assert state.frames_since_keyframe == 3


def test_keyframe_is_forced_without_state_on_a_new_frame_size_or_without_flow():
    model = build()
    _, state = model.predict_video_frame(frame(1), None, keyframe=False)
    assert isinstance(state, StreamState) and state.last_was_keyframe
    assert state.frame_sizes == ((48, 56),)
    _, state = model.predict_video_frame(frame(2), state, keyframe=False)
    assert state.frames_since_keyframe == 1
    keyframe = state.keyframe
    _, state = model.predict_video_frame(frame(3, (40, 56)), state, keyframe=False)
    assert state.last_was_keyframe and state.frame_sizes == ((40, 56),)
    assert state.keyframe is not keyframe and state.frame_index == 2
    batch, _ = model.preprocess([frame(4, (40, 56)), frame(5, (40, 56))])
    with torch.no_grad():
        _, state = model.forward_frame(batch, state, keyframe=False)
    assert state.last_was_keyframe and len(state.frame_sizes) == 2
    still = build(with_flow="false", with_spa="false")
    assert not hasattr(still, "flow_net") and not hasattr(still, "spa")
    _, state = still.predict_video_frame(frame(1), None)
    _, state = still.predict_video_frame(frame(2), state, keyframe=False)
    assert state.last_was_keyframe and state.frame_index == 1


def test_video_and_image_predictions_agree_on_keyframes():
    model = build(keyframe_interval="2")
    frames = [frame(1), frame(2), frame(3)]
    video = model.predict_video(frames)
    images = model.predict(frames)
    assert len(video) == 3 and all(isinstance(result, Detections) for result in video)
    for index in (0, 2):
        torch.testing.assert_close(video[index].scores, images[index].scores)
        assert torch.equal(video[index].masks, images[index].masks)


def test_training_images_are_keyframes_with_yolacts_losses():
    torch.manual_seed(0)
    model = zoo.build_model("yolact_edge_r18", list(THING_CLASSES), TINY).train()
    data = ShapesDataset(mode="multi", num_images=2, image_size=64, seed=3)
    images, targets = zip(*(data[index] for index in range(2)))
    batch, input_targets = model.preprocess(list(images), list(targets))
    losses = model.loss(model(batch), input_targets)
    assert set(losses) == {"box", "cls", "mask", "semantic"}
    assert all(torch.isfinite(loss) and loss > 0 for loss in losses.values())
    sum(losses.values()).backward()
    assert model.head.mask_layer.weight.grad.abs().sum() > 0
    assert model.flow_net.pred2.conv.weight.grad is None


def test_bad_video_settings_raise_config_error():
    with pytest.raises(ConfigError, match="keyframe_interval=0"):
        YolactEdgeConfig(keyframe_interval=0)
    with pytest.raises(ConfigError, match="with_spa=true needs with_flow=true"):
        YolactEdgeConfig(with_flow=False)


def test_checkpoint_payload_rebuilds_the_model():
    model = build()
    payload = {
        "model_name": "yolact_edge_r18",
        "model_config": to_dict(model.config),
        "class_names": CLASS_NAMES,
        "state_dict": model.state_dict(),
    }
    loaded = zoo.model_from_checkpoint(payload).eval()
    assert type(loaded) is YolactEdge and loaded.config == model.config
    batch, _ = model.preprocess([frame(1)])
    with torch.no_grad():
        first, state = model.forward_frame(batch)
        second, _ = model.forward_frame(batch, state, keyframe=False)
        loaded_first, loaded_state = loaded.forward_frame(batch)
        loaded_second, _ = loaded.forward_frame(batch, loaded_state, keyframe=False)
    torch.testing.assert_close(loaded_first.class_logits, first.class_logits, rtol=0, atol=0)
    torch.testing.assert_close(loaded_second.class_logits, second.class_logits, rtol=0, atol=0)


# -- original checkpoints ------------------------------------------------------------------------


def header_num_classes(path: Path) -> int:
    """``num_classes`` (with the background) named on the file's ``#`` header line."""
    return int(re.search(r"num_classes=(\d+)", path.read_text().splitlines()[0])[1])


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def layout(request):
    keys = reference_keys(LAYOUTS[request.param])
    return request.param, keys, random_state_dict(keys), header_num_classes(LAYOUTS[request.param])


def build_for(layout: EdgeLayout) -> YolactEdge:
    names = [f"c{index}" for index in range(layout.num_classes)]
    return zoo.build_model("yolact_edge_r50", names, layout.overrides() | SMALL_INPUT)


def test_reference_layouts_are_read_as_expected(layout):
    name, keys, state_dict, num_classes = layout
    video = name == "vid"
    assert keys["flow_net.pred2.conv.weight" if video else "semantic_seg_conv.weight"]
    assert original_edge_layout(state_dict) == EdgeLayout(
        "resnet50", num_classes - 1, video, video, 64
    )


def test_strict_load_and_eval_on_a_keyframe_and_a_non_keyframe(layout):
    name, keys, state_dict, num_classes = layout
    model = import_foreign_weights(state_dict, overrides=SMALL_INPUT)
    assert model.class_names == list(YOUTUBE_VIS_CLASSES) and model.num_classes == num_classes - 1
    own = model.state_dict()
    assert len(own) == len(keys)
    for key, value in state_dict.items():
        assert torch.equal(own[original_edge_to_pansight_key(key)], value), key
    state = None
    for index, keyframe in enumerate((True, False)):
        result, state = model.predict_video_frame(frame(index, (60, 90)), state, keyframe)
        assert isinstance(result, Detections) and result.masks.shape[1:] == (60, 90)
    assert state.frames_since_keyframe == (1 if name == "vid" else 0)


def test_key_names_map_both_ways(layout):
    _, keys, _, _ = layout
    for key in keys:
        assert pansight_to_original_edge_key(original_edge_to_pansight_key(key)) == key
    assert (
        original_edge_to_pansight_key("fpn_phase_2.pred_layers.1.bias") == "fpn.pred_layers.1.bias"
    )
    assert original_edge_to_pansight_key("flow_net_pre_convs.convs.0.0.weight") == (
        "flow_reduce.0.weight"
    )


def test_missing_key_is_named(layout):
    name, _, state_dict, _ = layout
    model = build_for(original_edge_layout(state_dict))
    missing = (
        "flow_net.pred2.scale.bias" if name == "vid" else "fpn_phase_2.downsample_layers.1.bias"
    )
    broken = {key: value for key, value in state_dict.items() if key != missing}
    with pytest.raises(CheckpointError, match=f"no weight '{re.escape(missing)}'"):
        import_original_yolact_edge(model, broken)


def test_misshaped_and_unexpected_keys_are_named(layout):
    name, _, state_dict, _ = layout
    model = build_for(original_edge_layout(state_dict))
    broken = dict(state_dict)
    if name == "vid":  # a transposed conv's weight layout (in, out, k, k)
        broken["flow_net.upfeat3.weight"] = torch.zeros(256, 128, 3, 3)
        with pytest.raises(CheckpointError, match=r"'flow_net\.upfeat3\.weight' has shape"):
            import_original_yolact_edge(model, broken)
    broken = dict(state_dict) | {"flow_net_pre_convs.convs.1.0.weight": torch.zeros(64, 64, 3, 3)}
    with pytest.raises(CheckpointError, match=r"'flow_net_pre_convs\.convs\.1\.0\.weight' has no"):
        import_original_yolact_edge(model, broken)
    broken = dict(state_dict) | {"fpn.lat_layers.0.weight": torch.zeros(256, 2048, 1, 1)}
    with pytest.raises(CheckpointError, match=r"'fpn\.lat_layers\.0\.weight' has no place"):
        import_original_yolact_edge(model, broken)


def test_video_weights_do_not_fit_a_model_without_flow():
    state_dict = random_state_dict(reference_keys(LAYOUTS["vid"]))
    still = EdgeLayout("resnet50", 40, False, False, 64)
    with pytest.raises(CheckpointError, match=r"'spa\.refine_convs\.0\.0\.weight' has no place"):
        import_original_yolact_edge(build_for(still), state_dict)


def test_a_yolact_file_is_not_a_yolact_edge_file(tmp_path):
    path = tmp_path / "yolact.pth"
    torch.save({"fpn.lat_layers.0.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not an original YolactEdge state dict"):
        original_edge_layout(torch.load(path))
    with pytest.raises(CheckpointError, match="not a state dict pansight imports"):
        import_foreign_weights(path)
    with pytest.raises(CheckpointError, match="not found"):
        import_foreign_weights(tmp_path / "missing.pth")
