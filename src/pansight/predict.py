"""Run a checkpoint over image files: annotated pictures and one JSON of results."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pansight.data.images import IMAGE_SUFFIXES, read_image
from pansight.errors import DataError
from pansight.models.base import PansightModel
from pansight.structures import Result


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
    checkpoint: Path, inputs: list[Path], out: Path, batch_size: int = 8
) -> list[Path]:
    """Predict every image, write ``out/<name>.png`` pictures and ``out/results.json``.

    Returns the pictures written. The JSON is written last and atomically, so a run that fails
    part-way never leaves a complete-looking results file.
    """
    from pansight.api import load
    from pansight.viz import draw_result, save_png

    files = find_images(inputs)
    model = load(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    records, written = [], []
    for start in tqdm(range(0, len(files), batch_size), desc="predict", unit="batch"):
        chunk = files[start : start + batch_size]
        images = [read_image(path) for path in chunk]
        for index, (path, image, result) in enumerate(
            zip(chunk, images, model.predict(images)), start
        ):
            picture = out / f"{index:05d}_{path.stem}.png"
            save_png(draw_result(image, result, model.class_names), picture)
            written.append(picture)
            records.append(result_record(path, index, image.shape[-2:], result, model))
    _write_json_atomically(out / "results.json", {"task": model.task, "images": records})
    return written


def result_record(
    path: Path, index: int, size: tuple[int, int], result: Result, model: PansightModel
) -> dict[str, Any]:
    """One image's entry in ``results.json``: COCO-style records plus class names."""
    category_ids = list(range(model.num_classes))
    coco = result.to_coco(index, category_ids)
    for record in coco if isinstance(coco, list) else [coco]:
        record.pop("image_id", None)
        if "category_id" in record:
            record["class_name"] = model.class_names[record["category_id"]]
    return {"file": str(path), "height": int(size[0]), "width": int(size[1]), "result": coco}


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=1))
    os.replace(temporary, path)
