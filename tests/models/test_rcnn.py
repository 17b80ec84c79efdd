"""Training of our Faster/Mask R-CNN. Parity with torchvision (preprocessing, imported weights,
results) is in test_rcnn_import.py."""

import dataclasses

import pytest
import torch
from torchvision.ops import box_iou

import pansight
from pansight.config import TrainConfig
from pansight.data.shapes import ShapesDataset
from pansight.engine.checkpoint import model_payload, save_checkpoint
from pansight.models import zoo
from pansight.models.rcnn.model import FasterRCNN, MaskRCNN, RCNNConfig
from pansight.structures import Detections, Target

CLASS_NAMES = [f"class{i}" for i in range(5)]


def _training_samples():
    data = ShapesDataset(split="train", mode="multi", num_images=4, image_size=96)
    images, targets = zip(*[data[i] for i in range(3)])
    images, targets = list(images), list(targets)
    # image 1: no objects; image 2: an extra zero-area box and a crowd region
    targets[1] = Target(image_id=1, size=targets[1].size, masks=None)
    extra_box = torch.tensor([[10.0, 10.0, 10.0, 30.0], [0.0, 0.0, 40.0, 40.0]])
    count = len(targets[2].labels)
    targets[2] = Target(
        image_id=2,
        size=targets[2].size,
        boxes=torch.cat([targets[2].boxes, extra_box]),
        labels=torch.cat([targets[2].labels, torch.tensor([0, 1])]),
        masks=torch.cat([targets[2].masks, torch.zeros((2, 96, 96), dtype=torch.bool)]),
        iscrowd=torch.tensor([False] * count + [False, True]),
    )
    return images, targets


@pytest.mark.parametrize("model_cls", [MaskRCNN, FasterRCNN])
def test_training_step_is_finite(model_cls):
    torch.manual_seed(0)
    config = RCNNConfig(
        backbone="resnet18",
        with_masks=model_cls is MaskRCNN,
        min_size=128,
        max_size=128,
        fpn_channels=32,
        representation_size=64,
        rpn_post_nms_top_n_train=200,
        box_batch_size_per_image=64,
    )
    model = model_cls(config, CLASS_NAMES).train()
    images, targets = _training_samples()
    batch, input_targets = model.preprocess(images, targets)
    outputs = model(batch, input_targets)
    losses = model.loss(outputs, input_targets)
    expected = {"rpn_objectness", "rpn_box", "cls", "box"} | (
        {"mask"} if config.with_masks else set()
    )
    assert set(losses) == expected
    assert all(torch.isfinite(value) for value in losses.values())
    assert (outputs.training_targets.roi_labels > 0).any()
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.box_predictor.cls_score.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        results = model.postprocess(model(batch), batch)
    assert type(model(batch)) is type(outputs)
    assert len(results) == 3 and results[0].boxes.shape[1] == 4


TINY_RCNN = {
    "min_size": "64",
    "max_size": "96",
    "fpn_channels": "32",
    "representation_size": "64",
    "mask_head_channels": "16",
    "rpn_post_nms_top_n_train": "200",
    "box_batch_size_per_image": "64",
}
RCNN_ZOO = [
    pytest.param(name, marks=() if name.endswith("r18_fpn") else pytest.mark.slow)
    for name, entry in zoo.MODELS.items()
    if entry.config_cls is RCNNConfig
]


def _tiny(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return zoo.build_model(name, CLASS_NAMES, TINY_RCNN)


@pytest.mark.parametrize("name", RCNN_ZOO)
def test_zoo_entry_trains_with_degenerate_targets(name):
    model = _tiny(name).train()
    images, targets = _training_samples()
    batch, input_targets = model.preprocess(images, targets)
    losses = model.loss(model(batch, input_targets), input_targets)
    assert all(torch.isfinite(value) for value in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads)


@pytest.mark.parametrize("name", RCNN_ZOO)
def test_zoo_entry_predicts_in_original_pixels_and_round_trips(name, tmp_path):
    model = _tiny(name).eval()
    model.config = dataclasses.replace(model.config, score_thresh=0.0)
    images = [torch.rand(3, 50, 90), torch.rand(3, 70, 40)]
    results = model.predict(images)
    for result, image in zip(results, images):
        height, width = image.shape[-2:]
        assert isinstance(result, Detections) and len(result.boxes) > 0
        assert result.boxes[:, 0::2].max() <= width and result.boxes[:, 1::2].max() <= height
        if model.task == "instance":
            assert result.masks.dtype == torch.bool
            assert result.masks.shape == (len(result.boxes), height, width)
        else:
            assert result.masks is None
    payload = model_payload(
        model, model_name=name, train_config=TrainConfig(), data_set=None, metrics={}
    )
    save_checkpoint(tmp_path / "model.pt", payload)
    loaded = pansight.load(tmp_path / "model.pt")
    loaded.config = model.config
    for ours, theirs in zip(results, loaded.predict(images)):
        torch.testing.assert_close(theirs.boxes, ours.boxes, rtol=0, atol=0)
        torch.testing.assert_close(theirs.scores, ours.scores, rtol=0, atol=0)


@pytest.mark.training
@pytest.mark.parametrize(
    "name", ["mask_rcnn_r18_fpn", pytest.param("faster_rcnn_r18_fpn", marks=pytest.mark.slow)]
)
def test_overfits_two_images(name, seed):
    """After a short training on two scenes the model finds their objects (eval mode)."""
    data = ShapesDataset(
        split="train", mode="multi", num_images=2, image_size=96, max_objects=2, seed=seed
    )
    images, targets = map(list, zip(*[data[i] for i in range(2)]))
    model = _tiny(name, seed).train()
    batch, input_targets = model.preprocess(images, targets)
    steps = 150
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(steps):
        total = sum(model.loss(model(batch, input_targets), input_targets).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    results = model.eval().predict(images)
    for result, target in zip(results, targets):
        confident = result.scores > 0.5
        ious = box_iou(target.boxes, result.boxes[confident])
        assert ious.shape[1] > 0 and (ious.max(1).values > 0.7).all()
        best = ious.argmax(1)
        assert torch.equal(result.labels[confident][best], target.labels)
        if result.masks is not None:
            masks = result.masks[confident][best]
            overlap = (masks & target.masks).flatten(1).sum(1)
            union = (masks | target.masks).flatten(1).sum(1)
            assert (overlap / union > 0.6).all()
