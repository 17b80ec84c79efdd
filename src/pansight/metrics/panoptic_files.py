"""PQ of COCO panoptic prediction files (PNGs and a segments JSON) against COCO panoptic ground
truth, read and counted in this process or in worker processes."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from pansight.data.coco_panoptic import (
    PanopticCategories,
    load_panoptic_json,
    read_panoptic_record,
)
from pansight.errors import DataError
from pansight.metrics.panoptic import ImagePair, PanopticCounts, count_pairs, panoptic_scores


def file_counts(
    records: Sequence[tuple[dict[str, Any], dict[str, Any]]],
    gt_dir: Path,
    pred_dir: Path,
    categories: PanopticCategories,
) -> PanopticCounts:
    """Counts of ``(truth record, prediction record)`` pairs whose PNGs are in the folders."""
    total = PanopticCounts.zeros(len(categories.names))
    for truth_record, pred_record in records:
        truth = read_panoptic_record(truth_record, gt_dir, categories)
        prediction = read_panoptic_record(pred_record, pred_dir, categories)
        pair = ImagePair.of(truth_record["image_id"], truth, prediction)
        try:
            total = total + count_pairs([pair], len(categories.names))
        except DataError as error:
            raise DataError(f"{pred_dir / pred_record['file_name']}: {error}") from None
    return total


def evaluate_panoptic_files(
    gt_json: str | Path,
    gt_dir: str | Path,
    pred_json: str | Path,
    pred_dir: str | Path,
    workers: int = 0,
) -> dict[str, float]:
    """PQ of COCO panoptic predictions (PNGs + segments JSON) against COCO panoptic ground truth.

    Every ground-truth annotation record is evaluated; the prediction JSON needs only
    ``annotations`` (categories are the ground truth's). Returns the keys of
    :class:`PanopticMetric`, classes named by the ground truth's categories in id order.

    Args:
        gt_json, gt_dir: ground-truth JSON (``annotations`` and ``categories`` with ``isthing``)
            and the folder of its PNGs.
        pred_json, pred_dir: the predictions' JSON and PNG folder.
        workers: processes reading and counting images (``0``: this process).

    Raises:
        DataError: naming the file: unreadable or malformed files, an image without prediction,
            unknown categories, unlisted segment ids, maps of different sizes.
    """
    truth = load_panoptic_json(gt_json)
    categories = truth.categories
    predictions = load_panoptic_json(pred_json, categories)
    pairs = []
    for image_id, truth_record in truth.records.items():
        if image_id not in predictions.records:
            raise DataError(f"{pred_json}: no prediction for image {image_id}")
        pairs.append((truth_record, predictions.records[image_id]))
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    if workers == 0:
        counts = file_counts(pairs, gt_dir, pred_dir, categories)
    else:
        chunks = [pairs[start::workers] for start in range(workers)]
        counts = PanopticCounts.zeros(len(categories.names))
        with ProcessPoolExecutor(workers) as pool:
            futures = [
                pool.submit(file_counts, chunk, gt_dir, pred_dir, categories) for chunk in chunks
            ]
            for future in futures:
                counts = counts + future.result()
    return panoptic_scores(counts, categories.names, categories.thing_flags)
