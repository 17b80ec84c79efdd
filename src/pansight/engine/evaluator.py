"""Run a model over a data set and feed the task's metric."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pansight.engine.loader import collate
from pansight.metrics import build_metric
from pansight.models.base import PansightModel
from pansight.structures import Result, Target


def iterate_predictions(
    model: PansightModel,
    dataset: Dataset,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = True,
) -> Iterator[tuple[list[torch.Tensor], list[Target], list[Result]]]:
    """Yield ``(images, targets, results)`` batch by batch, in data-set order."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate
    )
    for images, targets in tqdm(loader, desc="eval", unit="batch", disable=not progress):
        yield images, targets, model.predict(images)


def evaluate(
    model: PansightModel,
    dataset: Dataset,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """The metrics of ``model.task`` (see :func:`pansight.metrics.build_metric`) on ``dataset``."""
    thing_flags = getattr(model.config, "thing_flags", None)
    metric = build_metric(model.task, model.class_names, thing_flags)
    for _, targets, results in iterate_predictions(model, dataset, batch_size, workers, progress):
        metric.update(results, targets)
    return metric.compute()
