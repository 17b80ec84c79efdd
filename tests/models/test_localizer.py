"""Localizer: box decoding, losses, mapping boxes back to the original image, accuracy goal."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import generalized_box_iou_loss

from pansight.errors import ConfigError, DataError
from pansight.models.classification.localizer import (
    GridBoxHead,
    Localizer,
    LocalizerConfig,
    LocalizerOutputs,
)
from pansight.structures import ImageBatch, Target

CLASS_NAMES = ["a", "b", "c"]


def tiny_localizer() -> Localizer:
    torch.manual_seed(0)
    return Localizer(LocalizerConfig(input_size=32), CLASS_NAMES)


def test_grid_head_averages_cell_boxes_by_objectness():
    head = GridBoxHead(in_channels=8, channels=4)
    torch.nn.init.zeros_(head.objectness.weight)
    torch.nn.init.zeros_(head.cell_boxes.weight)
    torch.nn.init.zeros_(head.objectness.bias)
    torch.nn.init.zeros_(head.cell_boxes.bias)
    # Equal objectness and centered offsets: the mean of the 2x2 cell centers is the frame center;
    # sigmoid(0) = 0.5 makes every width and height half the frame.
    boxes = head(torch.rand(3, 8, 2, 2))
    torch.testing.assert_close(boxes, torch.full((3, 4), 0.5))


def test_grid_head_follows_the_most_object_like_cell():
    head = GridBoxHead(in_channels=1, channels=1)
    head.tower = torch.nn.Identity()
    head.objectness.weight.data.fill_(100.0)
    head.objectness.bias.data.zero_()
    torch.nn.init.zeros_(head.cell_boxes.weight)
    torch.nn.init.zeros_(head.cell_boxes.bias)
    features = torch.zeros(1, 1, 4, 4)
    features[0, 0, 3, 1] = 1.0  # row 3, column 1 of a 4x4 grid: center (1.5 / 4, 3.5 / 4)
    torch.testing.assert_close(head(features), torch.tensor([[0.375, 0.875, 0.5, 0.5]]))


def test_forward_gives_logits_and_valid_input_frame_boxes():
    model = tiny_localizer().eval()
    batch, _ = model.preprocess([torch.rand(3, 40, 60), torch.rand(3, 32, 32)])
    outputs = model(batch)
    assert outputs.logits.shape == (2, 3) and outputs.boxes.shape == (2, 4)
    width, height = (
        outputs.boxes[:, 2] - outputs.boxes[:, 0],
        outputs.boxes[:, 3] - outputs.boxes[:, 1],
    )
    assert (width >= 0).all() and (height >= 0).all()
    centers = (outputs.boxes[:, :2] + outputs.boxes[:, 2:]) / 2
    assert ((centers >= 0) & (centers <= 32)).all()


def test_postprocess_maps_boxes_to_original_pixels_and_clips_them():
    model = tiny_localizer()
    batch = ImageBatch(torch.zeros(2, 3, 32, 32), [(32, 32)] * 2, [(48, 80), (32, 32)])
    boxes = torch.tensor([[8.0, 8.0, 16.0, 24.0], [-4.0, 10.0, 40.0, 20.0]])
    logits = torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    results = model.postprocess(LocalizerOutputs(logits, boxes), batch)
    torch.testing.assert_close(results[0].box, torch.tensor([20.0, 12.0, 40.0, 36.0]))
    torch.testing.assert_close(results[1].box, torch.tensor([0.0, 10.0, 32.0, 20.0]))
    assert [result.label for result in results] == [1, 0]
    assert results[0].score == pytest.approx(torch.e**3 / (torch.e**3 + 2))


def test_box_losses_vanish_for_a_perfect_box_and_match_giou_otherwise():
    model = tiny_localizer()
    target_box = torch.tensor([4.0, 8.0, 20.0, 24.0])
    targets = [Target(image_id=0, size=(32, 32), label=2, box=target_box)]
    logits = torch.tensor([[0.0, 0.0, 20.0]])
    perfect = model.loss(LocalizerOutputs(logits, target_box[None]), targets)
    assert set(perfect) == {"cls", "box_l1", "box_giou"}
    assert all(value.item() == pytest.approx(0.0, abs=1e-6) for value in perfect.values())
    shifted_box = torch.tensor([[8.0, 8.0, 24.0, 24.0]])
    shifted = model.loss(LocalizerOutputs(logits, shifted_box), targets)
    # Overlap 12 x 16 = 192, union 2 * 256 - 192 = 320 = the enclosing box: GIoU = IoU = 0.6.
    assert shifted["box_giou"].item() == pytest.approx(2.0 * (1 - 0.6), abs=1e-5)
    reference = generalized_box_iou_loss(shifted_box / 32, target_box[None] / 32, reduction="mean")
    assert shifted["box_giou"].item() == pytest.approx(2.0 * reference.item(), abs=1e-6)
    # The center moves by 4 / 32 = 0.125 > beta: smooth-L1 = (0.125 - beta / 2) / 4 coordinates.
    assert shifted["box_l1"].item() == pytest.approx(5.0 * (0.125 - 0.025) / 4, abs=1e-6)


def test_loss_names_an_image_without_a_box():
    model = tiny_localizer()
    targets = [Target(image_id=5, size=(32, 32), label=0)]
    outputs = LocalizerOutputs(torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
    with pytest.raises(DataError, match="image 5: the target has no box"):
        model.loss(outputs, targets)


def test_config_rejects_negative_loss_weights():
    with pytest.raises(ConfigError, match="box_l1_weight and box_giou_weight must be >= 0"):
        LocalizerConfig(box_giou_weight=-1.0)
