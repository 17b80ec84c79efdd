"""Panoptic FPN on the synthetic world at 64 px with a tiny ResNet-18 FPN."""

import dataclasses

import pytest
import torch

import pansight
from pansight.api import make_train_config, model_label_space
from pansight.config import TrainConfig
from pansight.data.shapes import ShapesDataset
from pansight.engine.checkpoint import model_payload, save_checkpoint
from pansight.errors import ConfigError, DataError
from pansight.models import zoo
from pansight.models.panoptic.model import PanopticFPN, PanopticFPNOutputs
from pansight.structures import IGNORE_LABEL, PanopticMap, Target

DATA = ShapesDataset(split="train", mode="multi", num_images=4, image_size=64)
FLAGS = tuple(DATA.thing_flags)
NUM_STUFF = FLAGS.count(False)
GRASS = DATA.semantic_class_names.index("grass")
PANOPTIC_ZOO = [
    pytest.param(name, marks=() if name.endswith("r18") else pytest.mark.slow)
    for name, entry in zoo.MODELS.items()
    if entry.task == "panoptic"
]
TINY = {
    "thing_flags": FLAGS,
    "min_size": 64,
    "max_size": 64,
    "fpn_channels": 32,
    "semantic_channels": 32,
    "representation_size": 64,
    "mask_head_channels": 32,
    "rpn_post_nms_top_n_train": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 64,
}
INSTANCE_LOSSES = {"rpn_objectness", "rpn_box", "cls", "box", "mask"}


def build(seed: int = 0, name: str = "panoptic_fpn_r18", **overrides) -> PanopticFPN:
    torch.manual_seed(seed)
    return zoo.build_model(name, DATA.semantic_class_names, TINY | overrides)


def samples(count: int = 2):
    images, targets = zip(*[DATA[index] for index in range(count)])
    return list(images), list(targets)


def without_things(target: Target) -> Target:
    """The target of an image with stuff only (the things' pixels become grass)."""
    is_thing = torch.tensor(FLAGS)[target.semantic]
    semantic = torch.where(is_thing, GRASS, target.semantic)
    return Target(image_id=target.image_id, size=target.size, semantic=semantic)


def test_train_step_gives_finite_losses_and_gradients_in_every_branch():
    model = build().train()
    images, targets = samples()
    targets[1] = without_things(targets[1])
    batch, input_targets = model.preprocess(images, targets)
    outputs = model(batch, input_targets)
    assert isinstance(outputs, PanopticFPNOutputs)
    assert outputs.semantic_logits.shape == (2, NUM_STUFF + 1, 64, 64)
    losses = model.loss(outputs, input_targets)
    assert set(losses) == INSTANCE_LOSSES | {"semantic"}
    assert all(loss.dim() == 0 and torch.isfinite(loss) for loss in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads)
    assert model.semantic_head.levels["p5"][0].weight.grad.abs().sum() > 0
    assert model.rcnn.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0


def test_images_without_things_train():
    model = build().train()
    images, targets = samples()
    batch, input_targets = model.preprocess(images, [without_things(t) for t in targets])
    losses = model.loss(model(batch, input_targets), input_targets)
    assert all(torch.isfinite(loss) for loss in losses.values())
    sum(losses.values()).backward()


def test_semantic_targets_map_stuff_things_ignored_and_padding():
    model = build()
    # classes: circle, square, triangle, star, ring (things 0..4), sky, grass, road, water
    semantic = torch.tensor([[0, 5, 8], [4, 6, IGNORE_LABEL]])
    classes = model.semantic_targets([Target(0, (2, 3), semantic=semantic)], (3, 4))
    ignored = IGNORE_LABEL
    assert classes.tolist() == [[[4, 0, 3, ignored], [4, 1, ignored, ignored], [ignored] * 4]]


def test_semantic_targets_reject_missing_maps_and_unknown_labels():
    model = build()
    with pytest.raises(DataError, match="image 3: Panoptic FPN needs a semantic target"):
        model.semantic_targets([Target(3, (2, 2))], (2, 2))
    with pytest.raises(DataError, match="semantic labels must lie in 0..8"):
        model.semantic_targets([Target(4, (1, 1), semantic=torch.tensor([[9]]))], (1, 1))


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="thing_flags has 0 flags"):
        build(thing_flags=())
    with pytest.raises(ConfigError, match="at least one of them true"):
        build(thing_flags=(False,) * len(FLAGS))
    with pytest.raises(ConfigError, match="needs the mask branch"):
        build(with_masks=False)
    with pytest.raises(ConfigError, match="semantic_channels=48"):
        build(semantic_channels=48)


def check_panoptic_map(panoptic: PanopticMap, size: tuple[int, int]) -> None:
    assert panoptic.ids.shape == size and panoptic.ids.dtype == torch.int64
    present = set(panoptic.ids.unique().tolist()) - {0}
    assert present == {segment.id for segment in panoptic.segments}
    for segment in panoptic.segments:
        assert segment.area == int((panoptic.ids == segment.id).sum())
        assert segment.is_thing == FLAGS[segment.label]


def test_predict_gives_valid_panoptic_maps_in_original_pixels():
    model = build(instance_score_threshold=0.0, stuff_min_area_fraction=0.0)
    images, _ = samples()
    images = [images[0][:, :48, :], images[1][:, :, :40]]
    results = model.predict(images)
    assert [type(result) for result in results] == [PanopticMap, PanopticMap]
    for result, size in zip(results, [(48, 64), (64, 40)]):
        check_panoptic_map(result, size)
    segments = [segment for result in results for segment in result.segments]
    assert any(segment.is_thing for segment in segments)
    assert any(not segment.is_thing for segment in segments)


@pytest.mark.parametrize("name", PANOPTIC_ZOO)
def test_checkpoint_round_trip_through_the_zoo(name, tmp_path):
    model = build(name=name).eval()
    payload = model_payload(
        model, model_name=name, train_config=TrainConfig(), data_set=DATA, metrics={}
    )
    save_checkpoint(tmp_path / "model.pt", payload)
    loaded = pansight.load(tmp_path / "model.pt")
    assert type(loaded) is PanopticFPN and loaded.config == model.config
    assert loaded.class_names == DATA.semantic_class_names and not loaded.training
    images, _ = samples()
    batch, _ = model.preprocess(images)
    expected, actual = model(batch), loaded(batch)
    for field in dataclasses.fields(expected):
        torch.testing.assert_close(
            getattr(actual, field.name), getattr(expected, field.name), rtol=0, atol=0
        )


def test_semantic_loss_falls_when_overfitting_one_batch():
    model = build().train()
    images, targets = samples()
    batch, input_targets = model.preprocess(images, targets)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    semantic_losses = []
    for _ in range(15):
        outputs = model(batch, input_targets)
        losses = model.loss(outputs, input_targets)
        semantic_losses.append(losses["semantic"].item())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert semantic_losses[-1] < 0.3 * semantic_losses[0]
    classes = model.semantic_targets(input_targets, (64, 64))
    predicted = outputs.semantic_logits.argmax(1)
    assert (predicted == classes).float().mean() > 0.9


def test_panoptic_training_uses_the_semantic_label_space_and_rcnn_recipe():
    config, _ = make_train_config("panoptic", {})
    assert config.model == "panoptic_fpn_r18" and config.data.mode == "multi"
    assert config.optimizer == "adamw" and config.amp == "auto"
    class_names, fields = model_label_space(DATA, "panoptic")
    assert class_names == DATA.semantic_class_names and fields == {"thing_flags": FLAGS}
    assert model_label_space(DATA, "instance") == (DATA.class_names, {})
