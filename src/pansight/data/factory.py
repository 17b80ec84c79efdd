"""The one place a :class:`~pansight.config.DataConfig` becomes a data set.

- ``shapes``: the synthetic world (:mod:`pansight.data.shapes`); every task
  (classify and localize need ``mode=single``).
- ``digits``: scikit-learn's handwritten digits; classify.
- ``folder``: ``root/<class>/<image>`` or ``root/{train,val}/<class>/<image>``; classify.
- ``coco``: ``root/annotations/*.json`` with images in ``root/images/<split>/``; detect,
  instance, semantic, panoptic.
- ``labels``: PNG label masks (:mod:`pansight.data.label_folders`); semantic.

For ``semantic``, a data set with richer targets is seen through
:class:`~pansight.data.label_folders.SemanticView`: its classes are the semantic label space.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from pansight.config import TASKS, DataConfig
from pansight.data.folders import DigitsDataset, ImageFolderDataset
from pansight.data.label_folders import LabelFolderDataset, SemanticView
from pansight.data.transforms import SeededAugment, train_augment
from pansight.errors import ConfigError, DataError

DATASET_TASKS = {
    "shapes": TASKS,
    "digits": ("classify",),
    "folder": ("classify",),
    "coco": ("detect", "instance", "semantic", "panoptic"),
    "labels": ("semantic",),
}
SINGLE_OBJECT_TASKS = ("classify", "localize")


def build_dataset(data: DataConfig, split: str, task: str) -> Dataset:
    """The ``split`` (``train`` or ``val``) of the data set ``data`` describes, for ``task``.

    Raises:
        ConfigError: an unknown data set name or split, a task the data set cannot serve, a
            ``shapes`` mode that does not fit the task, or a missing ``data.root``.
        DataError: the files under ``data.root`` are missing or unusable.
    """
    if data.name not in DATASET_TASKS:
        raise ConfigError(
            f"data.name={data.name!r} is unknown; choose one of {', '.join(DATASET_TASKS)}"
        )
    if split not in ("train", "val"):
        raise ConfigError(f"split={split!r} is unknown; choose train or val")
    if task not in DATASET_TASKS[data.name]:
        raise ConfigError(
            f"data.name={data.name!r} cannot serve task={task!r}; "
            f"it serves {', '.join(DATASET_TASKS[data.name])}"
        )
    if data.name == "shapes":
        return _shapes(data, split, task)
    if data.name == "digits":
        return DigitsDataset(split, val_fraction=data.val_fraction, seed=data.seed)
    root = _root(data)
    if data.name == "folder":
        return ImageFolderDataset(root, split, val_fraction=data.val_fraction, seed=data.seed)
    if data.name == "labels":
        return LabelFolderDataset(root, split)
    return _coco(root, split, task)


def wrap_for_training(dataset: Dataset, task: str, data: DataConfig, seed: int) -> Dataset:
    """``dataset`` with seeded training augmentation if ``data.augment``, else ``dataset``.

    Digits are not mirrored (a mirrored digit is not that digit).
    """
    if not data.augment:
        return dataset
    transform = train_augment(task, horizontal_flip=data.name != "digits")
    return SeededAugment(dataset, transform, seed, task)


def _shapes(data: DataConfig, split: str, task: str) -> Dataset:
    """The synthetic world; classification and localization need ``mode=single``."""
    if task in SINGLE_OBJECT_TASKS and data.mode != "single":
        raise ConfigError(
            f"data.mode={data.mode!r} does not fit task={task!r}, which needs one object per "
            "image; set data.mode=single"
        )
    from pansight.data.shapes import ShapesDataset

    num_images = data.num_train if split == "train" else data.num_val
    dataset = ShapesDataset(
        split=split,
        mode=data.mode,
        num_images=num_images,
        image_size=data.image_size,
        seed=data.seed,
    )
    return SemanticView(dataset) if task == "semantic" else dataset


def _root(data: DataConfig) -> Path:
    if not data.root:
        raise ConfigError(f"data.name={data.name!r} needs data.root=PATH (it is empty)")
    root = Path(data.root)
    if not root.is_dir():
        raise DataError(f"{root}: data.root folder not found")
    return root


def _coco(root: Path, split: str, task: str) -> Dataset:
    """COCO files as written by ``pansight data write``.

    Layout: ``root/annotations/instances_<split>.json`` (detect, instance) or
    ``root/annotations/panoptic_<split>.json`` with PNGs in ``root/annotations/panoptic_<split>/``
    (semantic, panoptic), and images in ``root/images/<split>/``.
    """
    image_dir = _existing(root / "images" / split)
    if task in ("semantic", "panoptic"):
        from pansight.data.coco import CocoPanoptic

        annotation_file = _existing(root / "annotations" / f"panoptic_{split}.json")
        png_dir = _existing(root / "annotations" / f"panoptic_{split}")
        dataset = CocoPanoptic(annotation_file, png_dir, image_dir)
        return SemanticView(dataset) if task == "semantic" else dataset
    from pansight.data.coco import CocoInstances

    return CocoInstances(_existing(root / "annotations" / f"instances_{split}.json"), image_dir)


def _existing(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: not found (see pansight.data.factory for the coco layout)")
    return path
