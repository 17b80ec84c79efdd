"""YOLACT's mask composition: the prototypes and coefficients it exposes rebuild its masks; the
picture of them; ``predict --show-prototypes`` through the command line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pansight.cli import main
from pansight.config import TrainConfig
from pansight.data.images import write_image
from pansight.data.shapes import THING_CLASSES, ShapesDataset
from pansight.engine.checkpoint import model_payload, save_checkpoint
from pansight.models.yolact.head import crop_to_boxes
from pansight.models.yolact.model import MaskComposition
from pansight.models.zoo import build_model
from pansight.structures import Detections
from pansight.viz_prototypes import (
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
    TILE_SIDE,
    draw_mask_composition,
)

TINY = {"input_size": "96", "fpn_channels": "32", "proto_channels": "32"}
NAMES = list(THING_CLASSES)


def tiny_yolact(**overrides: str):
    torch.manual_seed(0)
    return build_model("yolact_r18", NAMES, TINY | overrides).eval()


def scenes(sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    world = ShapesDataset(split="val", mode="multi", num_images=len(sizes), image_size=64)
    return [
        F.interpolate(world[i][0][None], size, mode="bilinear")[0] for i, size in enumerate(sizes)
    ]


def save_tiny_checkpoint(model, name: str, path) -> None:
    payload = model_payload(
        model, model_name=name, train_config=TrainConfig(), data_set=None, metrics={}
    )
    save_checkpoint(path, payload)


def test_prototypes_and_coefficients_rebuild_the_predicted_masks():
    model = tiny_yolact(detections_per_img="20")
    images = scenes([(70, 50), (64, 64)])
    detections, compositions = model.predict_with_prototypes(images)
    plain = model.predict(images)
    for image, found, composition, expected in zip(images, detections, compositions, plain):
        count = len(found)
        assert count == 20 and composition.prototypes.shape == (32, 24, 24)
        assert composition.coefficients.shape == (count, 32) and composition.boxes.shape == (
            count,
            4,
        )
        assert torch.equal(found.masks, expected.masks) and torch.equal(found.boxes, expected.boxes)
        combined = torch.einsum("dk,khw->dhw", composition.coefficients, composition.prototypes)
        cropped = crop_to_boxes(torch.sigmoid(combined), composition.boxes)
        torch.testing.assert_close(composition.mask_probabilities(), cropped)
        upsampled = F.interpolate(cropped[None], image.shape[-2:], mode="bilinear")[0]
        assert torch.equal(upsampled > model.config.mask_threshold, found.masks)
        height, width = image.shape[-2:]
        xs, ys = composition.boxes[:, 0::2] * width, composition.boxes[:, 1::2] * height
        low = torch.stack([xs.min(1).values, ys.min(1).values], 1).clamp(min=0)
        high = torch.stack([xs.max(1).values.clamp(max=width), ys.max(1).values.clamp(max=height)])
        torch.testing.assert_close(found.boxes, torch.cat([low, high.t()], 1).trunc())


def composition_of(coefficients: list[list[float]]) -> tuple[Detections, MaskComposition]:
    """Detections on a 40 x 60 image whose masks are made of 4 prototypes (quadrants)."""
    prototypes = torch.zeros(4, 8, 8)
    for index, (rows, cols) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        prototypes[index, rows : rows + 4, cols : cols + 4] = 1
    count = len(coefficients)
    boxes = torch.tensor([[0.1, 0.1, 0.6, 0.9]]).repeat(count, 1)
    masks = torch.zeros(count, 40, 60, dtype=torch.bool)
    masks[:, 4:36, 6:36] = True
    detections = Detections(
        boxes * torch.tensor([60, 40, 60, 40]),
        torch.linspace(0.9, 0.5, count),
        torch.zeros(count, dtype=torch.int64),
        masks,
    )
    return detections, MaskComposition(prototypes, torch.tensor(coefficients), boxes)


def color_present(picture: torch.Tensor, color: tuple[int, int, int]) -> bool:
    return bool((picture == torch.tensor(color)[:, None, None]).all(dim=0).any())


def test_picture_shows_positive_and_negative_coefficients_and_grows_per_detection():
    image = torch.full((3, 40, 60), 0.5)
    positive = composition_of([[1.0, 0.5, 0.2, 0.1]])
    one = draw_mask_composition(image, *positive, NAMES)
    assert one.dtype == torch.uint8 and one.shape[0] == 3
    assert one.shape[2] >= 4 * TILE_SIDE and one.shape[1] >= 2 * TILE_SIDE
    assert color_present(one, POSITIVE_COLOR) and not color_present(one, NEGATIVE_COLOR)
    mixed = composition_of([[1.0, -0.5, 0.2, 0.1], [0.3, 0.3, -1.0, 0.0], [0.1] * 4])
    three = draw_mask_composition(image, *mixed, NAMES)
    assert color_present(three, NEGATIVE_COLOR)
    assert three.shape[1] > one.shape[1] + 2 * (TILE_SIDE * 40 // 60)
    capped = draw_mask_composition(image, *mixed, NAMES, max_detections=1)
    assert capped.shape[1] == one.shape[1]
    empty = composition_of([])
    assert draw_mask_composition(image, *empty, NAMES).shape[1] < one.shape[1]


def test_predict_show_prototypes_writes_a_picture_per_image(tmp_path):
    save_tiny_checkpoint(tiny_yolact(), "yolact_r18", tmp_path / "model.pt")
    for index, image in enumerate(scenes([(48, 64), (64, 64)])):
        write_image(image, tmp_path / "images" / f"scene{index}.png")
    out = tmp_path / "pred"
    argv = ["predict", str(tmp_path / "model.pt"), str(tmp_path / "images"), "--out", str(out)]
    assert main([*argv, "--show-prototypes"]) == 0
    for index in range(2):
        with Image.open(out / f"{index:05d}_scene{index}_prototypes.png") as picture:
            width, height = picture.size
        # 8 prototype tiles per row, four rows, then at most 8 detection rows
        assert 8 * TILE_SIDE < width < 12 * TILE_SIDE
        assert 4 * TILE_SIDE < height < 20 * TILE_SIDE
        assert (out / f"{index:05d}_scene{index}.png").exists()


@pytest.mark.parametrize("name", ["classifier_r18", "fcn8s_r18"])
def test_show_prototypes_needs_a_yolact_model(tmp_path, capsys, name):
    save_tiny_checkpoint(build_model(name, ["a", "b"]), name, tmp_path / "model.pt")
    write_image(torch.rand(3, 16, 16), tmp_path / "x.png")
    argv = ["predict", str(tmp_path / "model.pt"), str(tmp_path / "x.png"), "--show-prototypes"]
    assert main([*argv, "--out", str(tmp_path / "pred")]) == 2
    assert "--show-prototypes needs a YOLACT model" in capsys.readouterr().err
    assert not (tmp_path / "pred" / "results.json").exists()
