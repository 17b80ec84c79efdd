import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from pansight.config import DataConfig
from pansight.data.factory import build_dataset, wrap_for_training
from pansight.data.folders import DigitsDataset, ImageFolderDataset
from pansight.data.images import write_image
from pansight.data.transforms import SeededAugment
from pansight.errors import ConfigError, DataError


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="shapes, digits, folder, coco"):
        build_dataset(DataConfig(name="imagenet"), "train", "classify")


def test_task_the_data_set_cannot_serve_is_named():
    with pytest.raises(ConfigError, match="task='detect'"):
        build_dataset(DataConfig(name="digits"), "train", "detect")
    with pytest.raises(ConfigError, match="task='classify'"):
        build_dataset(DataConfig(name="coco", root="x"), "train", "classify")
    with pytest.raises(ConfigError, match="split='test'"):
        build_dataset(DataConfig(name="digits"), "test", "classify")


def test_missing_root_is_named(tmp_path):
    with pytest.raises(ConfigError, match="data.root"):
        build_dataset(DataConfig(name="folder"), "train", "classify")
    missing = tmp_path / "absent"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        build_dataset(DataConfig(name="folder", root=str(missing)), "train", "classify")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "images" / "val"))):
        build_dataset(DataConfig(name="coco", root=str(tmp_path)), "val", "detect")


def test_digits_and_folder(tmp_path):
    digits = build_dataset(DataConfig(name="digits", val_fraction=0.5, seed=2), "val", "classify")
    assert isinstance(digits, DigitsDataset) and len(digits) in (898, 899, 900)
    for name in ("x", "y"):
        for i in range(5):
            write_image(torch.rand(3, 4, 4), tmp_path / name / f"{i}.png")
    config = DataConfig(name="folder", root=str(tmp_path), val_fraction=0.4)
    folder = build_dataset(config, "train", "classify")
    assert isinstance(folder, ImageFolderDataset)
    assert folder.class_names == ["x", "y"] and len(folder) == 6


def test_wrap_for_training_follows_augment():
    digits = DigitsDataset("val")
    plain = wrap_for_training(digits, "classify", DataConfig(name="digits", augment=False), 0)
    assert plain is digits
    wrapped = wrap_for_training(digits, "classify", DataConfig(name="digits"), seed=9)
    assert isinstance(wrapped, SeededAugment) and wrapped.seed == 9
    assert wrapped.class_names == digits.class_names
    assert "RandomHorizontalFlip" not in repr(wrapped.transform)
    image, target = wrapped[0]
    assert image.shape == (3, 32, 32) and target.label == digits[0][1].label


def test_shapes_needs_single_mode_for_classify_and_localize():
    with pytest.raises(ConfigError, match="data.mode=single"):
        build_dataset(DataConfig(name="shapes", mode="multi"), "train", "localize")


def test_shapes_sizes_follow_the_split():
    pytest.importorskip("pansight.data.shapes")
    from pansight.data.shapes import ShapesDataset

    config = DataConfig(name="shapes", num_train=6, num_val=3, image_size=32, seed=1)
    train = build_dataset(config, "train", "classify")
    val = build_dataset(config, "val", "classify")
    assert isinstance(train, ShapesDataset) and len(train) == 6 and len(val) == 3
    image, target = train[0]
    assert image.shape == (3, 32, 32) and target.label is not None


def write_coco(root, split):
    """One 8x8 image with one square object, as instances and panoptic files."""
    write_image(torch.rand(3, 8, 8), root / "images" / split / "0.png")
    image = {"id": 1, "file_name": "0.png", "height": 8, "width": 8}
    instances = {
        "images": [image],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [2, 2, 4, 4],
                "area": 16,
                "iscrowd": 0,
                "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]],
            }
        ],
        "categories": [{"id": 1, "name": "square"}],
    }
    annotations = root / "annotations"
    annotations.mkdir()
    (annotations / f"instances_{split}.json").write_text(json.dumps(instances))
    ids = np.full((8, 8), 2, dtype=np.uint8)
    ids[2:6, 2:6] = 1
    png = np.stack([ids, np.zeros_like(ids), np.zeros_like(ids)], axis=-1)
    (annotations / f"panoptic_{split}").mkdir()
    Image.fromarray(png).save(annotations / f"panoptic_{split}" / "0.png")
    segments = [
        {"id": 1, "category_id": 1, "area": 16, "bbox": [2, 2, 4, 4], "iscrowd": 0},
        {"id": 2, "category_id": 2, "area": 48, "bbox": [0, 0, 8, 8], "iscrowd": 0},
    ]
    panoptic = {
        "images": [image],
        "annotations": [{"image_id": 1, "file_name": "0.png", "segments_info": segments}],
        "categories": [
            {"id": 1, "name": "square", "isthing": 1},
            {"id": 2, "name": "sky", "isthing": 0},
        ],
    }
    (annotations / f"panoptic_{split}.json").write_text(json.dumps(panoptic))


def test_coco_reads_instances_and_panoptic_files(tmp_path):
    pytest.importorskip("pansight.data.coco")
    from pansight.data.coco import CocoInstances, CocoPanoptic

    write_coco(tmp_path, "val")
    config = DataConfig(name="coco", root=str(tmp_path))
    instances = build_dataset(config, "val", "instance")
    assert isinstance(instances, CocoInstances) and len(instances) == 1
    panoptic = build_dataset(config, "val", "panoptic")
    assert isinstance(panoptic, CocoPanoptic) and len(panoptic) == 1
    write_image(torch.rand(3, 8, 8), tmp_path / "images" / "train" / "0.png")
    with pytest.raises(DataError, match="instances_train.json"):
        build_dataset(config, "train", "detect")
