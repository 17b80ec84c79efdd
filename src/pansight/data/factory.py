"""The one place a :class:`~pansight.config.DataConfig` becomes a data set.

:func:`build_dataset` builds the split of the data set a config names (``shapes``, ``digits``,
``folder``, ``coco``, ``labels``, ``shapes_video`` or ``youtube_vis``) for a task;
:func:`build_clips` gives whole clips for video evaluation. For ``semantic``, a data set with
richer targets is seen through :class:`~pansight.data.label_folders.SemanticView`: its classes
are the semantic label space.

See docs/data.md for each kind's layout and the tasks it serves.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from pansight.config import TASKS, DataConfig
from pansight.data.coco import CocoInstances, CocoPanoptic
from pansight.data.folders import DigitsDataset, ImageFolderDataset
from pansight.data.label_folders import LabelFolderDataset, SemanticView
from pansight.data.shapes import ShapesDataset
from pansight.data.shapes_video import ShapesFramePairs, ShapesVideoDataset, ShapesVideoFrames
from pansight.data.transforms import SeededAugment, train_augment
from pansight.data.youtube_vis import YouTubeVIS
from pansight.errors import ConfigError, DataError

DATASET_TASKS = {
    "shapes": TASKS,
    "digits": ("classify",),
    "folder": ("classify",),
    "coco": ("detect", "instance", "semantic", "panoptic"),
    "labels": ("semantic",),
    "shapes_video": ("instance",),
    "youtube_vis": (),
}
VAL_CLIP_FRAMES = 10
"""Frames per validation clip of ``shapes_video``."""
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
    if not DATASET_TASKS[data.name]:
        raise ConfigError(
            f"data.name={data.name!r} holds video clips for video evaluation only "
            "(pansight eval CHECKPOINT --video)"
        )
    if task not in DATASET_TASKS[data.name]:
        raise ConfigError(
            f"data.name={data.name!r} cannot serve task={task!r}; "
            f"it serves {', '.join(DATASET_TASKS[data.name])}"
        )
    if data.name == "shapes":
        return _shapes(data, split, task)
    if data.name == "shapes_video":
        return _shapes_video(data, split)
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

    Digits are not mirrored (a mirrored digit is not that digit); frame pairs are not augmented.
    """
    if not data.augment or data.name == "shapes_video":
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
    num_images = data.num_train if split == "train" else data.num_val
    dataset = ShapesDataset(
        split=split,
        mode=data.mode,
        num_images=num_images,
        image_size=data.image_size,
        seed=data.seed,
    )
    return SemanticView(dataset) if task == "semantic" else dataset


def _shapes_video(data: DataConfig, split: str) -> Dataset:
    """``num_train`` frame pairs for training; ``num_val`` frames of whole clips to validate."""
    if split == "train":
        return ShapesFramePairs(split, data.num_train, image_size=data.image_size, seed=data.seed)
    return ShapesVideoFrames(build_clips(data, split))


def build_clips(data: DataConfig, split: str) -> Dataset:
    """Whole video clips (items: lists of ``(image, target)`` frames with ``track_ids``) for
    video evaluation: ``shapes_video`` (``num_val // VAL_CLIP_FRAMES`` clips of
    ``VAL_CLIP_FRAMES`` frames for ``val``, likewise ``num_train`` for ``train``) or
    ``youtube_vis`` (``root/<split>/instances.json`` with frames under
    ``root/<split>/JPEGImages/``, as :func:`~pansight.data.youtube_vis.write_youtube_vis`
    writes them)."""
    if data.name == "shapes_video":
        count = data.num_train if split == "train" else data.num_val
        return ShapesVideoDataset(
            split,
            num_clips=max(1, count // VAL_CLIP_FRAMES),
            num_frames=VAL_CLIP_FRAMES,
            image_size=data.image_size,
            seed=data.seed,
        )
    if data.name == "youtube_vis":
        root = _root(data) / split
        return YouTubeVIS(_existing(root / "instances.json"), _existing(root / "JPEGImages"))
    raise ConfigError(
        f"data.name={data.name!r} holds no video clips; use shapes_video or youtube_vis"
    )


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
        annotation_file = _existing(root / "annotations" / f"panoptic_{split}.json")
        png_dir = _existing(root / "annotations" / f"panoptic_{split}")
        dataset = CocoPanoptic(annotation_file, png_dir, image_dir)
        return SemanticView(dataset) if task == "semantic" else dataset
    return CocoInstances(_existing(root / "annotations" / f"instances_{split}.json"), image_dir)


def _existing(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: not found (see pansight.data.factory for the coco layout)")
    return path
