"""Classification data sets: a folder of images per class, and scikit-learn's digits.

Both return ``(image, target)`` with ``image`` a ``(3, H, W)`` float RGB tensor in ``[0, 1]`` and
``target`` a :class:`~pansight.structures.Target` whose ``label`` is the class index into
``class_names``. Splits are stratified: each class gives ``round(n * val_fraction)`` of its ``n``
images to ``val`` (chosen by ``seed``) and the rest to ``train``, so the same arguments always
give the same split and the two splits are disjoint and cover every image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from pansight.data.images import IMAGE_SUFFIXES, read_image
from pansight.errors import ConfigError, DataError
from pansight.structures import Target

SPLITS = ("train", "val", "all")


def stratified_split(
    labels: list[int] | np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into ``(train, val)`` so every class keeps its share.

    Args:
        labels: ``(N,)`` class index of every sample.
        val_fraction: share of each class that goes to ``val``, in ``[0, 1)``.
        seed: seed of the shuffle inside each class.

    Returns:
        ``(train_indices, val_indices)``, each sorted ascending.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1)")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        num_val = int(round(len(members) * val_fraction))
        val.append(members[:num_val])
        train.append(members[num_val:])
    empty = np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(train or [empty])), np.sort(np.concatenate(val or [empty]))


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ConfigError(f"split={split!r} is unknown; choose one of {', '.join(allowed)}")


class ImageFolderDataset(Dataset):
    """Images sorted into one sub-folder per class: ``root/<class name>/<image>``.

    Class names are the sorted sub-folder names and labels their positions. If ``root`` holds
    ``train/`` and ``val/`` folders (each laid out as above), those are the splits and
    ``val_fraction``/``seed`` are unused; otherwise the images are split by
    :func:`stratified_split`. ``split="all"`` gives every image. Images are read lazily, so a
    corrupt file raises :class:`DataError` naming it when it is indexed.

    Attributes:
        root: the folder.
        class_names: sorted class folder names.
        samples: ``(path, label)`` of every image in this split.
        image_ids: id of every image in this split (its position in the sorted listing of all
            images, so ids of different splits never collide).
    """

    semantic_class_names = None
    thing_flags = None

    def __init__(
        self, root: str | Path, split: str = "train", val_fraction: float = 0.2, seed: int = 0
    ) -> None:
        _check_split(split, SPLITS)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: image folder not found")
        if (self.root / "train").is_dir() and (self.root / "val").is_dir():
            self.class_names = _class_folders(self.root / "train")
            train = _list_images(self.root / "train", self.class_names)
            val = _list_images(self.root / "val", self.class_names)
            all_samples = train + val
            split_ids = {"train": range(len(train)), "val": range(len(train), len(all_samples))}
        else:
            self.class_names = _class_folders(self.root)
            all_samples = _list_images(self.root, self.class_names)
            labels = [label for _, label in all_samples]
            train_ids, val_ids = stratified_split(labels, val_fraction, seed)
            split_ids = {"train": train_ids.tolist(), "val": val_ids.tolist()}
        split_ids["all"] = range(len(all_samples))
        self.image_ids = list(split_ids[split])
        self.samples = [all_samples[i] for i in self.image_ids]
        self.category_ids = list(range(len(self.class_names)))

    @property
    def labels(self) -> list[int]:
        """Class index of every image in this split."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        path, label = self.samples[index]
        image = read_image(path)
        size = (image.shape[1], image.shape[2])
        return image, Target(image_id=self.image_ids[index], size=size, label=label)


def _class_folders(folder: Path) -> list[str]:
    """Sorted names of the sub-folders of ``folder``; DataError if there are none."""
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{folder}: no class folders (expected {folder}/<class name>/<image>)")
    return names


def _list_images(folder: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    """``(path, label)`` of the images of every class folder under ``folder``, sorted by path.

    A class folder missing from ``folder`` is allowed (no images of that class in this split);
    a class folder with no images, or a folder of an unknown class, is a DataError.
    """
    present = _class_folders(folder)
    unknown = sorted(set(present) - set(class_names))
    if unknown:
        raise DataError(f"{folder}: class folders {unknown} are not among {class_names}")
    samples = []
    for name in present:
        images = sorted(
            p
            for p in (folder / name).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not images:
            raise DataError(
                f"{folder / name}: class folder has no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        samples += [(path, class_names.index(name)) for path in images]
    return samples


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits (1,797 images of 8x8 gray pixels, 10 classes).

    The data ships inside scikit-learn (no download). Gray values ``0..16`` become RGB floats in
    ``[0, 1]`` upscaled bilinearly to ``image_size`` pixels. Image ids are positions in
    ``sklearn.datasets.load_digits()``.

    Attributes:
        class_names: ``"0"`` .. ``"9"``.
        image_ids: ``(N,)`` id of every image in this split.
        labels: ``(N,)`` int64 class of every image in this split.
        images: ``(N, 1, image_size, image_size)`` gray images in ``[0, 1]``.
    """

    semantic_class_names = None
    thing_flags = None

    def __init__(
        self, split: str = "train", val_fraction: float = 0.2, seed: int = 0, image_size: int = 32
    ) -> None:
        # scikit-learn is optional: only the digits data set needs it
        from sklearn.datasets import load_digits

        _check_split(split, ("train", "val"))
        if image_size < 1:
            raise ConfigError(f"image_size={image_size} must be >= 1")
        digits = load_digits()
        train_ids, val_ids = stratified_split(digits.target, val_fraction, seed)
        ids = train_ids if split == "train" else val_ids
        gray = torch.from_numpy(digits.images[ids]).float().div(16.0).unsqueeze(1)
        self.images = F.interpolate(
            gray, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
        self.image_ids = torch.from_numpy(ids)
        self.labels = torch.from_numpy(digits.target[ids]).long()
        self.class_names = [str(digit) for digit in range(10)]
        self.category_ids = list(range(10))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image = self.images[index].repeat(3, 1, 1)
        size = (image.shape[1], image.shape[2])
        target = Target(
            image_id=int(self.image_ids[index]), size=size, label=int(self.labels[index])
        )
        return image, target
