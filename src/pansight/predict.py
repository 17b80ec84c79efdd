"""Run a checkpoint over image files: annotated pictures and JSON results (videos:
:mod:`pansight.predict_video`).

Images give one picture each and one ``results.json``.

Semantic models also write each image's raw class map as a label PNG and, on request, a grid of
its per-class score channels (the one-hot picture before the argmax). YOLACT models write, on
request, a picture of how each image's masks are assembled from prototypes and coefficients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from tqdm import tqdm

from pansight.api import load
from pansight.data.coco_panoptic import write_panoptic
from pansight.data.images import IMAGE_SUFFIXES, read_image
from pansight.data.label_folders import write_label_png
from pansight.errors import ConfigError, DataError
from pansight.models.base import PansightModel
from pansight.models.yolact.model import MaskComposition, Yolact
from pansight.structures import PanopticMap, Result, SemanticMap
from pansight.video import (
    write_json_atomically,
)
from pansight.viz import draw_result, image_grid, save_png
from pansight.viz_prototypes import draw_mask_composition

CHANNEL_TILE_SIDE = 96
"""Score-channel tiles smaller than this are enlarged (nearest neighbor) so captions fit."""


def find_images(inputs: list[Path]) -> list[Path]:
    """Image files named in ``inputs`` or found (recursively, sorted) in the folders named.

    Raises:
        DataError: an input does not exist, or no image was found at all.
    """
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    if not files:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return files


def predict_files(
    checkpoint: Path,
    inputs: list[Path],
    out: Path,
    batch_size: int = 8,
    channels: bool = False,
    prototypes: bool = False,
) -> list[Path]:
    """Predict every image, write ``out/<index>_<name>.png`` pictures and ``out/results.json``.

    Semantic models also write ``<index>_<name>_labels.png`` (the class map, one label per
    pixel) and, with ``channels``, ``<index>_<name>_channels.png`` (each class's score channel
    as a gray tile, white = probability 1). Panoptic models also write COCO panoptic
    predictions: ``<index>_<name>_panoptic.png`` (segment ids as colors) per image and
    ``panoptic.json`` (annotations with ``segments_info``, categories with ``isthing``; category
    id = label). YOLACT models, with ``prototypes``, also write
    ``<index>_<name>_prototypes.png`` (see :func:`pansight.viz_prototypes.draw_mask_composition`).

    Returns the files written besides the JSON. The JSON is written last and atomically, so a
    run that fails part-way never leaves a complete-looking results file.

    Raises:
        ConfigError: ``channels`` for a model that is not a semantic one, ``prototypes`` for
            one that is not a YOLACT.
    """
    files = find_images(inputs)
    model = load(checkpoint)
    check_picture_options(model, checkpoint, channels, prototypes)
    out.mkdir(parents=True, exist_ok=True)
    records, written, panoptic = [], [], []
    for start in tqdm(range(0, len(files), batch_size), desc="predict", unit="batch"):
        chunk = files[start : start + batch_size]
        images = [read_image(path) for path in chunk]
        results, compositions = _predict_chunk(model, images, channels, prototypes)
        outputs = zip(chunk, images, results, compositions)
        for index, (path, image, result, composition) in enumerate(outputs, start):
            picture = out / f"{_output_stem(path, index)}.png"
            save_png(draw_result(image, result, model.class_names), picture)
            written.append(picture)
            if isinstance(result, SemanticMap):
                written += write_semantic_files(result, model.class_names, out, path, index)
            if isinstance(result, PanopticMap):
                written.append(out / f"{_output_stem(path, index)}_panoptic.png")
                panoptic.append(write_panoptic(result, index, written[-1], category_ids(model)))
            if composition is not None:
                picture = out / f"{_output_stem(path, index)}_prototypes.png"
                save_png(
                    draw_mask_composition(image, result, composition, model.class_names), picture
                )
                written.append(picture)
            records.append(result_record(path, index, image.shape[-2:], result, model))
    if model.task == "panoptic":
        written.append(out / "panoptic.json")
        write_json_atomically(written[-1], panoptic_json(model, files, panoptic))
    write_json_atomically(out / "results.json", {"task": model.task, "images": records})
    return written


def category_ids(model: PansightModel) -> list[int]:
    """The category id of each label in prediction files: the label itself."""
    return list(range(model.num_classes))


def panoptic_json(
    model: PansightModel, files: list[Path], annotations: list[dict[str, Any]]
) -> dict[str, Any]:
    """A COCO panoptic predictions file: images, annotations and categories (``isthing`` from
    the model's ``thing_flags``)."""
    flags = model.config.thing_flags
    return {
        "images": [{"id": index, "file_name": path.name} for index, path in enumerate(files)],
        "annotations": annotations,
        "categories": [
            {"id": label, "name": name, "isthing": int(flags[label])}
            for label, name in enumerate(model.class_names)
        ],
    }


def check_picture_options(
    model: PansightModel, checkpoint: Path, channels: bool, prototypes: bool
) -> None:
    """Refuse picture options that ``model`` cannot serve.

    Raises:
        ConfigError: ``channels`` for a model that is not a semantic one, ``prototypes`` for
            one that is not a YOLACT.
    """
    if channels and model.task != "semantic":
        raise ConfigError(
            f"{checkpoint}: --channels needs a semantic model, not a {model.task} one"
        )
    if prototypes and not isinstance(model, Yolact):
        raise ConfigError(
            f"{checkpoint}: --show-prototypes needs a YOLACT model, not a "
            f"{type(model).__name__} ({model.task}) one"
        )


def _predict_chunk(
    model: PansightModel, images: list[Tensor], channels: bool, prototypes: bool
) -> tuple[list[Result], list[MaskComposition | None]]:
    """The results on ``images`` (with score channels for ``channels``) and, for
    ``prototypes``, their mask compositions (else one ``None`` per image)."""
    if prototypes:
        return model.predict_with_prototypes(images)
    results = predict_with_scores(model, images) if channels else model.predict(images)
    return results, [None] * len(results)


def result_record(
    path: Path, index: int, size: tuple[int, int], result: Result, model: PansightModel
) -> dict[str, Any]:
    """One image's entry in ``results.json``: COCO-style records plus class names.

    A :class:`SemanticMap` is recorded as its label PNG's name and each present class's
    pixel count.
    """
    if isinstance(result, SemanticMap):
        labels, counts = result.labels.unique(return_counts=True)
        pixels = {model.class_names[int(k)]: int(n) for k, n in zip(labels, counts)}
        semantic = {"labels_png": f"{_output_stem(path, index)}_labels.png", "pixels": pixels}
        return {
            "file": str(path),
            "height": int(size[0]),
            "width": int(size[1]),
            "result": semantic,
        }
    category_ids = list(range(model.num_classes))
    coco = result.to_coco(index, category_ids)
    for record in coco if isinstance(coco, list) else [coco]:
        record.pop("image_id", None)
        if "category_id" in record:
            record["class_name"] = model.class_names[record["category_id"]]
    return {"file": str(path), "height": int(size[0]), "width": int(size[1]), "result": coco}


def predict_with_scores(model: PansightModel, images: list[Tensor]) -> list[SemanticMap]:
    """A semantic model's results on ``images`` with their ``(K, H, W)`` class probabilities."""
    with torch.no_grad():
        batch, _ = model.preprocess([image.to(model.device) for image in images])
        return model.postprocess(model(batch), batch, with_scores=True)


def write_semantic_files(
    result: SemanticMap, class_names: list[str], out: Path, path: Path, index: int
) -> list[Path]:
    """Write the label PNG of ``result`` and, if it has scores, its score-channel grid."""
    stem = _output_stem(path, index)
    written = [out / f"{stem}_labels.png"]
    write_label_png(result.labels, written[0])
    if result.scores is not None:
        written.append(out / f"{stem}_channels.png")
        save_png(draw_score_channels(result.scores, class_names), written[1])
    return written


def draw_score_channels(scores: Tensor, class_names: list[str], ncol: int = 5) -> Tensor:
    """``(K, H, W)`` scores in ``[0, 1]`` as a grid of captioned gray tiles, ``ncol`` per row.

    Returns:
        ``(3, H', W')`` uint8 picture.
    """
    factor = max(1, -(-CHANNEL_TILE_SIDE // min(scores.shape[-2:])))
    gray = scores.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    gray = gray.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    font = ImageFont.load_default(size=12)
    tiles = []
    for name, channel in zip(class_names, gray):
        tile = Image.fromarray(channel.numpy()).convert("RGB")
        draw = ImageDraw.Draw(tile)
        right, bottom = draw.textbbox((2, 2), name, font=font)[2:]
        draw.rectangle((0, 0, right + 2, bottom + 2), fill=(200, 30, 30))
        draw.text((2, 2), name, fill=(255, 255, 255), font=font)
        tiles.append(torch.from_numpy(np.asarray(tile).copy()).permute(2, 0, 1))
    return image_grid(tiles, ncol=min(ncol, len(tiles)))


def _output_stem(path: Path, index: int) -> str:
    """The name every output file of input ``path`` (number ``index``) starts with."""
    return f"{index:05d}_{path.stem}"
