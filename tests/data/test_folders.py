import re

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pansight.data.folders import DigitsDataset, ImageFolderDataset, stratified_split
from pansight.data.images import write_image
from pansight.errors import ConfigError, DataError

# Written in unsorted order to check that labels follow the sorted folder names.
CLASS_SIZES = {"zebra": 10, "ant": 5, "moth": 5}


def make_folder(root, class_sizes=CLASS_SIZES):
    for name, count in class_sizes.items():
        for i in range(count):
            write_image(torch.full((3, 6, 8), i / 10), root / name / f"{i:02d}.png")
    return root


def test_stratified_split_keeps_each_class_share():
    labels = [0] * 10 + [1] * 5 + [2] * 4
    train, val = stratified_split(labels, val_fraction=0.2, seed=3)
    val_labels = np.asarray(labels)[val]
    assert [int((val_labels == c).sum()) for c in range(3)] == [2, 1, 1]
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))


def test_stratified_split_rejects_bad_fraction():
    with pytest.raises(ConfigError, match="val_fraction"):
        stratified_split([0, 1], val_fraction=1.0, seed=0)


def test_folder_classes_are_sorted_and_labels_match_folders(tmp_path):
    make_folder(tmp_path)
    dataset = ImageFolderDataset(tmp_path, split="all")
    assert dataset.class_names == ["ant", "moth", "zebra"]
    assert dataset.category_ids == [0, 1, 2]
    assert dataset.semantic_class_names is None and dataset.thing_flags is None
    assert len(dataset) == 20
    for (path, label), expected_name in zip(dataset.samples, ["ant"] * 5):
        assert path.parent.name == expected_name and label == 0
    image, target = dataset[19]
    assert image.shape == (3, 6, 8) and target.size == (6, 8)
    assert target.label == 2 and dataset.samples[19][0].parent.name == "zebra"


def test_folder_split_is_stratified_disjoint_and_deterministic(tmp_path):
    make_folder(tmp_path)
    train = ImageFolderDataset(tmp_path, "train", val_fraction=0.2, seed=1)
    val = ImageFolderDataset(tmp_path, "val", val_fraction=0.2, seed=1)
    assert sorted(val.labels) == [0, 1, 2, 2]
    assert set(train.image_ids).isdisjoint(val.image_ids)
    assert sorted(train.image_ids + val.image_ids) == list(range(20))
    assert ImageFolderDataset(tmp_path, "val", val_fraction=0.2, seed=1).samples == val.samples
    other_seeds = [ImageFolderDataset(tmp_path, "val", seed=s).samples for s in range(2, 6)]
    assert any(samples != val.samples for samples in other_seeds)
    assert val[0][1].image_id == val.image_ids[0]


def test_folder_uses_given_train_and_val_folders(tmp_path):
    make_folder(tmp_path / "train", {"b": 3, "a": 2})
    make_folder(tmp_path / "val", {"a": 1})
    train = ImageFolderDataset(tmp_path, "train", val_fraction=0.5)
    val = ImageFolderDataset(tmp_path, "val", val_fraction=0.5)
    assert train.class_names == val.class_names == ["a", "b"]
    assert len(train) == 5 and train.labels == [0, 0, 1, 1, 1]
    assert len(val) == 1 and val.samples[0][0].parent.parent.name == "val"
    assert val.image_ids == [5]


def test_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        ImageFolderDataset(missing)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "loose.png").write_bytes(b"")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "flat")) + ".*no class folders"):
        ImageFolderDataset(tmp_path / "flat")
    make_folder(tmp_path / "gap", {"cat": 2})
    (tmp_path / "gap" / "dog").mkdir()
    (tmp_path / "gap" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "gap" / "dog"))):
        ImageFolderDataset(tmp_path / "gap")
    with pytest.raises(ConfigError, match="split"):
        ImageFolderDataset(tmp_path / "gap", split="test")


def test_folder_corrupt_image_raises_when_read(tmp_path):
    make_folder(tmp_path, {"cat": 1})
    corrupt = tmp_path / "cat" / "zz_broken.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    dataset = ImageFolderDataset(tmp_path, split="all")
    dataset[0]
    with pytest.raises(DataError, match=re.escape(str(corrupt))):
        dataset[1]


def test_digits_splits_cover_all_1797_images_disjointly():
    train, val = DigitsDataset("train"), DigitsDataset("val")
    assert len(train) + len(val) == 1797
    ids = torch.cat([train.image_ids, val.image_ids])
    assert torch.equal(ids.sort().values, torch.arange(1797))
    assert train.class_names == [str(d) for d in range(10)]
    assert train.category_ids == list(range(10)) and train.semantic_class_names is None
    counts = torch.bincount(torch.cat([train.labels, val.labels]), minlength=10)
    assert torch.equal(torch.bincount(val.labels, minlength=10), (counts * 0.2).round().long())
    images = torch.stack([train[i][0] for i in range(5)])
    assert images.shape == (5, 3, 32, 32)
    assert train.images.min() >= 0 and train.images.max() <= 1 and train.images.max() > 0.9


def test_digits_pixels_and_labels_match_scikit_learn():
    digits = load_digits()
    dataset = DigitsDataset("val", seed=4, image_size=8)
    image, target = dataset[3]
    expected = torch.from_numpy(digits.images[target.image_id]).float() / 16
    assert torch.allclose(image, expected.expand(3, 8, 8))
    assert target.label == digits.target[target.image_id] and target.size == (8, 8)
    assert torch.equal(DigitsDataset("val", seed=4, image_size=8).image_ids, dataset.image_ids)
