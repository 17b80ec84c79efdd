"""Semantic-segmentation data: folders of PNG label masks, and the semantic view of richer data.

A folder holds ``classes.txt`` (line i names label i), the images under ``images/<split>/`` and
one single-channel PNG per image under ``labels/<split>/`` (same name stem), whose pixels hold
labels ``0..K-1`` or 255 (ignored); ``<split>`` is ``train`` or ``val``.
:class:`LabelFolderDataset` reads such a folder; :class:`SemanticView` shows a data set with
richer targets as a semantic-only one.

See docs/data.md for the layout in full and the PNG kinds accepted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from pansight.data.images import IMAGE_SUFFIXES, read_image
from pansight.errors import ConfigError, DataError
from pansight.structures import IGNORE_LABEL, Target

SPLITS = ("train", "val")
SINGLE_CHANNEL_MODES = ("1", "L", "P", "I", "I;16")
"""PIL modes of PNGs whose pixel values are labels (bilevel, gray, palette, 16/32-bit gray)."""


def read_label_png(path: str | Path, num_classes: int, ignore_label: int = IGNORE_LABEL) -> Tensor:
    """``(H, W)`` int64 labels of a single-channel label PNG.

    Raises:
        DataError: naming the file, if it is missing, corrupt, has color channels, or holds a
            value that is neither a label ``0..num_classes-1`` nor ``ignore_label``.
    """
    try:
        with Image.open(path) as png:
            png.load()
            mode = png.mode
            values = np.asarray(png).astype(np.int64)
    except FileNotFoundError:
        raise DataError(f"{path}: label PNG not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(
            f"{path}: cannot decode label PNG (corrupt or truncated?): {error}"
        ) from None
    if mode not in SINGLE_CHANNEL_MODES:
        raise DataError(
            f"{path}: label PNG has mode {mode!r}; label masks must be single-channel "
            "(gray or palette) PNGs holding one label per pixel"
        )
    bad = (values >= num_classes) & (values != ignore_label)
    if bad.any():
        raise DataError(
            f"{path}: label value {int(values[bad].max())} exceeds the class count "
            f"({num_classes} classes: labels 0..{num_classes - 1}, {ignore_label} = ignore)"
        )
    return torch.from_numpy(values)


def write_label_png(labels: Tensor, path: str | Path) -> None:
    """Write ``(H, W)`` integer labels as a gray PNG: 8-bit up to 255, else 16-bit.

    Raises:
        ValueError: a label is negative or above 65535.
    """
    values = labels.cpu().numpy()
    if values.size and (values.min() < 0 or values.max() > np.iinfo(np.uint16).max):
        raise ValueError("label PNGs hold values 0..65535")
    dtype = np.uint8 if values.size == 0 or values.max() <= 255 else np.uint16
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(dtype)).save(path, format="PNG")


def read_class_names(path: Path) -> list[str]:
    """The non-empty, stripped lines of a ``classes.txt``; DataError naming it otherwise."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: class list not found (one class name per line)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read class list: {error}") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise DataError(f"{path}: class list is empty (one class name per line)")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: class names repeat")
    return names


class LabelFolderDataset(Dataset):
    """Images and their PNG label masks in a folder (layout in docs/data.md).

    Items are ``(image, target)``: ``(3, H, W)`` float in ``[0, 1]`` and a
    :class:`~pansight.structures.Target` with ``semantic`` ``(H, W)`` int64 (``IGNORE_LABEL``
    pixels ignored). Files are read when an item is indexed, so a bad label PNG raises
    :class:`DataError` naming it then.

    Attributes:
        root: the folder.
        class_names, semantic_class_names: the lines of ``classes.txt``.
        category_ids: ``0..K-1``.
        thing_flags: ``None`` (label masks do not say which classes are countable).
        samples: ``(image path, label path)`` of every image of the split, sorted by name.
    """

    thing_flags = None

    def __init__(self, root: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise ConfigError(f"split={split!r} is unknown; choose one of {', '.join(SPLITS)}")
        self.root = Path(root)
        self.class_names = read_class_names(self.root / "classes.txt")
        self.semantic_class_names = list(self.class_names)
        self.category_ids = list(range(len(self.class_names)))
        self.samples = _pair_files(self.root / "images" / split, self.root / "labels" / split)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        labels = read_label_png(label_path, len(self.class_names))
        size = (int(image.shape[1]), int(image.shape[2]))
        if tuple(labels.shape) != size:
            raise DataError(
                f"{label_path}: label PNG is {labels.shape[0]}x{labels.shape[1]} but "
                f"{image_path.name} is {size[0]}x{size[1]} (height x width)"
            )
        return image, Target(image_id=index, size=size, semantic=labels)


def _pair_files(image_dir: Path, label_dir: Path) -> list[tuple[Path, Path]]:
    """``(image, label PNG)`` pairs by name stem; DataError for a folder or a label missing."""
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found (see pansight.data.label_folders)")
    images = sorted(
        path
        for path in image_dir.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    )
    if not images:
        raise DataError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    pairs = []
    for image in images:
        label = label_dir / f"{image.stem}.png"
        if not label.is_file():
            raise DataError(f"{label}: label PNG of {image.name} not found")
        pairs.append((image, label))
    return pairs


class SemanticView(Dataset):
    """A data set with semantic targets seen as a semantic-only data set.

    Its ``class_names`` and ``category_ids`` are the wrapped data set's semantic label space
    (``semantic_class_names`` and ``semantic_category_ids``, things then stuff), which is what a
    semantic model is trained on; items are passed through unchanged.
    """

    def __init__(self, dataset: Dataset) -> None:
        if dataset.semantic_class_names is None:
            raise ConfigError(f"{type(dataset).__name__} has no semantic targets")
        self.dataset = dataset
        self.class_names = list(dataset.semantic_class_names)
        self.semantic_class_names = list(dataset.semantic_class_names)
        default_ids = range(len(self.class_names))
        self.category_ids = list(getattr(dataset, "semantic_category_ids", default_ids))
        self.thing_flags = dataset.thing_flags

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        return self.dataset[index]
