"""Drawing results and ground truth: sizes, colors and where pixels change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pansight.structures import (
    IGNORE_LABEL,
    Classification,
    Detections,
    Localization,
    PanopticMap,
    Segment,
    SemanticMap,
    Target,
)
from pansight.viz import (
    MIN_DRAW_SIDE,
    class_color,
    draw_result,
    draw_target,
    image_grid,
    palette,
    save_png,
)

NAMES = ["circle", "square", "triangle"]
GRAY = 0.4


def gray_image(height: int = 64, width: int = 64) -> torch.Tensor:
    return torch.full((3, height, width), GRAY)


def enlarged_gray(picture: torch.Tensor) -> torch.Tensor:
    return torch.full_like(picture, round(GRAY * 255))


def scores(label: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(label), len(NAMES)).float()


def test_palette_is_fixed_and_distinct():
    many = palette(40)
    assert palette(5) == many[:5] and len(set(many)) == 40
    assert class_color(7) == many[7]
    assert all(0 <= channel <= 255 for color in many for channel in color)


def test_small_images_are_enlarged_by_a_whole_factor():
    picture = draw_result(gray_image(64, 48), Classification(0, 0.9, scores(0)), NAMES)
    factor = -(-MIN_DRAW_SIDE // 48)
    assert picture.dtype == torch.uint8 and picture.shape == (3, 64 * factor, 48 * factor)
    large = draw_result(gray_image(200, 300), Classification(0, 0.9, scores(0)), NAMES)
    assert large.shape == (3, 200, 300)


def test_classification_caption_sits_in_the_top_left_corner():
    picture = draw_result(gray_image(), Classification(1, 0.75, scores(1)), NAMES)
    changed = (picture != enlarged_gray(picture)).any(dim=0)
    rows, cols = changed.nonzero(as_tuple=True)
    assert rows.min() == 0 and cols.min() == 0
    assert rows.max() < 40 and cols.max() < picture.shape[-1] // 2
    assert tuple(picture[:, 0, 0].tolist()) == class_color(1)


def test_localization_box_is_drawn_where_the_box_is():
    box = torch.tensor([20.0, 30.0, 40.0, 50.0])  # original pixels; drawn 3x larger
    picture = draw_result(gray_image(), Localization(2, 0.8, box, scores(2)), NAMES)
    assert picture.shape == (3, 192, 192)
    assert tuple(picture[:, 120, 60].tolist()) == class_color(2)  # left edge, x = 3 * 20
    assert tuple(picture[:, 120, 120].tolist()) == class_color(2)  # right edge, x = 3 * 40
    background = enlarged_gray(picture)
    assert torch.equal(picture[:, 100:140, 70:110], background[:, 100:140, 70:110])
    assert torch.equal(picture[:, 160:, :], background[:, 160:, :])


def test_detection_masks_get_one_color_per_instance():
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 5:15, 5:15] = True
    masks[1, 40:60, 40:60] = True
    boxes = torch.tensor([[5.0, 5.0, 15.0, 15.0], [40.0, 40.0, 60.0, 60.0]])
    detections = Detections(boxes, torch.tensor([0.9, 0.8]), torch.tensor([1, 1]), masks)
    picture = draw_result(gray_image(), detections, NAMES)
    inside_first, inside_second = picture[:, 30, 30], picture[:, 150, 150]
    gray = enlarged_gray(picture)[:, 0, 0]
    assert not torch.equal(inside_first, gray) and not torch.equal(inside_second, gray)
    assert not torch.equal(inside_first, inside_second)
    assert torch.equal(picture[:, 100, 100], gray)


def test_low_scoring_detections_are_left_out_of_pictures():
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 5:15, 5:15] = True
    masks[1, 40:60, 40:60] = True
    boxes = torch.tensor([[5.0, 5.0, 15.0, 15.0], [40.0, 40.0, 60.0, 60.0]])
    detections = Detections(boxes, torch.tensor([0.9, 0.1]), torch.tensor([1, 2]), masks)
    kept = detections.above(0.3)
    assert kept.labels.tolist() == [1] and torch.equal(kept.masks, masks[:1])
    picture = draw_result(gray_image(), detections, NAMES)
    gray = enlarged_gray(picture)[:, 0, 0]
    assert not torch.equal(picture[:, 30, 30], gray)
    assert torch.equal(picture[:, 150, 150], gray)
    everything = draw_result(gray_image(), detections, NAMES, min_score=0.0)
    assert not torch.equal(everything[:, 150, 150], gray)


def test_semantic_map_is_blended_with_class_colors_and_gets_a_legend():
    labels = torch.zeros(64, 64, dtype=torch.int64)
    labels[:, 32:] = 2
    labels[:8, :8] = IGNORE_LABEL
    picture = draw_result(torch.zeros(3, 64, 64), SemanticMap(labels), NAMES)
    assert picture.shape[1] > 192 and picture.shape[2] == 192
    assert picture[:, 100, 20].tolist() == [round(c / 2) for c in class_color(0)]
    assert picture[:, 100, 150].tolist() == [round(c / 2) for c in class_color(2)]
    assert picture[:, 5, 5].tolist() == [0, 0, 0]
    legend = picture[:, 192:, :]
    legend_colors = {tuple(pixel) for pixel in legend.flatten(1).T.tolist()}
    assert class_color(0) in legend_colors and class_color(2) in legend_colors
    assert class_color(1) not in legend_colors


def test_panoptic_things_of_one_class_get_different_colors():
    ids = torch.zeros(64, 64, dtype=torch.int64)
    ids[:, :20], ids[:, 20:40], ids[:, 40:] = 1, 2, 3
    segments = [
        Segment(id=1, label=0, is_thing=True, area=1280),
        Segment(id=2, label=0, is_thing=True, area=1280),
        Segment(id=3, label=2, is_thing=False, area=1536),
    ]
    picture = draw_result(torch.zeros(3, 64, 64), PanopticMap(ids, segments), NAMES)
    first, second, stuff = picture[:, 50, 10], picture[:, 50, 90], picture[:, 50, 170]
    assert not torch.equal(first, second)
    assert first.tolist() == [round(c / 2) for c in class_color(0)]
    assert stuff.tolist() == [round(c / 2) for c in class_color(2)]


def test_draw_target_draws_the_requested_ground_truth():
    semantic = torch.ones(64, 64, dtype=torch.int64)
    target = Target(
        image_id=0,
        size=(64, 64),
        label=1,
        box=torch.tensor([10.0, 10.0, 30.0, 30.0]),
        boxes=torch.tensor([[10.0, 10.0, 30.0, 30.0]]),
        labels=torch.tensor([1]),
        semantic=semantic,
    )
    image = gray_image()
    drawn = draw_target(image, target, NAMES, task="semantic")
    assert torch.equal(drawn, draw_result(image, SemanticMap(semantic), NAMES))
    boxed = draw_target(image, target, NAMES)  # boxes present, no masks: drawn as detections
    assert tuple(boxed[:, 60, 30].tolist()) == class_color(0)
    with pytest.raises(ValueError, match="no ground truth for task 'panoptic'"):
        draw_target(image, target, NAMES, task="panoptic")


def test_mask_of_another_size_is_refused():
    detections = Detections(
        torch.zeros(1, 4), torch.ones(1), torch.zeros(1, dtype=torch.int64), torch.ones(1, 8, 8) > 0
    )
    with pytest.raises(ValueError, match="Detections.masks has size"):
        draw_result(gray_image(), detections, NAMES)


def test_image_grid_pads_pictures_to_one_size():
    small = torch.zeros(3, 10, 20, dtype=torch.uint8)
    tall = torch.ones(3, 30, 10)
    grid = image_grid([small, tall], ncol=2)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 30 + 8, 2 * 20 + 3 * 4)
    assert grid[:, 4:14, 4:24].eq(0).all() and grid[:, 14:34, 4:24].eq(255).all()
    assert grid[:, 4:34, 28:38].eq(255).all()


def test_save_png_round_trips(tmp_path):
    picture = torch.randint(0, 256, (3, 12, 17), dtype=torch.uint8)
    save_png(picture, tmp_path / "sub" / "picture.png")
    read_back = np.asarray(Image.open(tmp_path / "sub" / "picture.png"))
    assert np.array_equal(read_back, picture.permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match="uint8"):
        save_png(picture.float(), tmp_path / "bad.png")
