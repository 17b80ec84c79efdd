"""PNG label-mask folders, label PNG reading and writing, and semantic targets from every source."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from pansight.config import DataConfig
from pansight.data.factory import build_dataset
from pansight.data.folders import DigitsDataset
from pansight.data.images import write_image
from pansight.data.label_folders import (
    LabelFolderDataset,
    SemanticView,
    read_label_png,
    write_label_png,
)
from pansight.data.shapes import ALL_CLASSES, COCO_CATEGORY_IDS, ShapesDataset
from pansight.data.shapes_coco import write_coco
from pansight.errors import ConfigError, DataError
from pansight.structures import IGNORE_LABEL

CLASSES = ["background", "cat", "dog"]


def make_folder(root, split="train", count=3, size=(12, 16)):
    """``count`` images with label PNGs of values 0..2 and an ignored border column."""
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n\n")
    labels = []
    for index in range(count):
        label = torch.randint(0, 3, size, generator=torch.Generator().manual_seed(index))
        label[:, 0] = IGNORE_LABEL
        write_image(torch.rand(3, *size), root / "images" / split / f"im{index}.jpg")
        write_label_png(label, root / "labels" / split / f"im{index}.png")
        labels.append(label)
    return labels


def test_folder_items_carry_the_label_maps(tmp_path):
    labels = make_folder(tmp_path)
    dataset = LabelFolderDataset(tmp_path, "train")
    assert dataset.class_names == CLASSES == dataset.semantic_class_names
    assert dataset.category_ids == [0, 1, 2] and dataset.thing_flags is None
    assert len(dataset) == 3
    image, target = dataset[1]
    assert image.shape == (3, 12, 16) and target.size == (12, 16)
    assert torch.equal(target.semantic, labels[1])
    assert target.semantic.dtype == torch.int64


def test_label_png_round_trip_in_8_and_16_bits(tmp_path):
    small = torch.tensor([[0, 3], [255, 1]])
    write_label_png(small, tmp_path / "small.png")
    assert Image.open(tmp_path / "small.png").mode == "L"
    assert torch.equal(read_label_png(tmp_path / "small.png", num_classes=4), small)
    large = torch.tensor([[0, 300], [1000, 2]])
    write_label_png(large, tmp_path / "large.png")
    assert torch.equal(read_label_png(tmp_path / "large.png", num_classes=1001), large)
    with pytest.raises(ValueError, match="0..65535"):
        write_label_png(torch.tensor([[-1]]), tmp_path / "negative.png")


def test_palette_png_indices_are_labels(tmp_path):
    png = Image.fromarray(np.array([[0, 1], [2, 255]], dtype=np.uint8), mode="P")
    png.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * (253 * 3))
    png.save(tmp_path / "voc.png")
    labels = read_label_png(tmp_path / "voc.png", num_classes=3)
    assert labels.tolist() == [[0, 1], [2, 255]]


def test_a_value_beyond_the_class_count_names_the_file(tmp_path):
    make_folder(tmp_path, count=2)
    bad = tmp_path / "labels" / "train" / "im1.png"
    write_label_png(torch.tensor([[0, 7], [1, 2]]).repeat(6, 8), bad)
    dataset = LabelFolderDataset(tmp_path, "train")
    dataset[0]
    with pytest.raises(DataError, match=re.escape(str(bad)) + ".*value 7 exceeds the class count"):
        dataset[1]


def test_color_label_pngs_are_refused(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="rgb.png: label PNG has mode 'RGB'"):
        read_label_png(tmp_path / "rgb.png", num_classes=3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    with pytest.raises(DataError, match="broken.png: cannot decode label PNG"):
        read_label_png(tmp_path / "broken.png", num_classes=3)
    with pytest.raises(DataError, match="missing.png: label PNG not found"):
        read_label_png(tmp_path / "missing.png", num_classes=3)


def test_folder_problems_are_named(tmp_path):
    with pytest.raises(DataError, match="classes.txt: class list not found"):
        LabelFolderDataset(tmp_path)
    make_folder(tmp_path, count=2)
    (tmp_path / "labels" / "train" / "im0.png").unlink()
    with pytest.raises(DataError, match="im0.png: label PNG of im0.jpg not found"):
        LabelFolderDataset(tmp_path, "train")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "images" / "val"))):
        LabelFolderDataset(tmp_path, "val")
    with pytest.raises(ConfigError, match="split='test'"):
        LabelFolderDataset(tmp_path, "test")


def test_label_and_image_of_different_sizes_are_named(tmp_path):
    make_folder(tmp_path, count=1)
    write_label_png(torch.zeros(5, 5, dtype=torch.int64), tmp_path / "labels" / "train" / "im0.png")
    with pytest.raises(DataError, match="im0.png: label PNG is 5x5 but im0.jpg is 12x16"):
        LabelFolderDataset(tmp_path, "train")[0]


def test_factory_builds_label_folders_for_the_semantic_task_only(tmp_path):
    make_folder(tmp_path, split="val", count=2)
    config = DataConfig(name="labels", root=str(tmp_path))
    dataset = build_dataset(config, "val", "semantic")
    assert isinstance(dataset, LabelFolderDataset) and len(dataset) == 2
    with pytest.raises(ConfigError, match="cannot serve task='classify'"):
        build_dataset(config, "val", "classify")


def test_synthetic_world_serves_its_semantic_label_space():
    dataset = build_dataset(DataConfig(mode="multi", num_val=2), "val", "semantic")
    assert isinstance(dataset, SemanticView)
    assert dataset.class_names == list(ALL_CLASSES) == dataset.semantic_class_names
    assert dataset.category_ids == list(range(len(ALL_CLASSES)))
    image, target = dataset[0]
    world_image, world_target = ShapesDataset("val", "multi", 2)[0]
    assert torch.equal(image, world_image) and torch.equal(target.semantic, world_target.semantic)
    assert set(target.semantic.unique().tolist()) <= set(range(len(ALL_CLASSES)))


def test_coco_panoptic_serves_things_and_stuff(tmp_path):
    world = ShapesDataset("val", "multi", num_images=2, image_size=48)
    write_coco(world, tmp_path, "val")
    dataset = build_dataset(DataConfig(name="coco", root=str(tmp_path)), "val", "semantic")
    assert dataset.class_names == list(ALL_CLASSES)
    assert dataset.category_ids == list(COCO_CATEGORY_IDS)
    for index in range(2):
        assert torch.equal(dataset[index][1].semantic, world[index][1].semantic)


def test_a_data_set_without_semantic_targets_has_no_semantic_view():
    with pytest.raises(ConfigError, match="DigitsDataset has no semantic targets"):
        SemanticView(DigitsDataset("val"))
