"""``pansight demo``: the main job on the embedded synthetic world.

It draws the world's ground truth, then climbs the ladder: for each rung it trains a model for a
few minutes, evaluates it on the validation split and draws its predictions. Everything lands
under one folder; ``summary.json`` holds the metrics.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pansight.data.shapes import ShapesDataset
from pansight.models.base import PansightModel
from pansight.viz import draw_result, draw_target, image_grid, save_png


@dataclass(frozen=True)
class Rung:
    """One rung of the demo: its task, training overrides and the headline metric."""

    task: str
    title: str
    headline: str
    overrides: dict[str, Any]


def rungs(quick: bool) -> list[Rung]:
    """The rungs the demo trains; ``quick`` halves the work.

    Classification and localization train for epochs in bfloat16 mixed precision; the R-CNN
    rungs for a fixed number of iterations; semantic segmentation (FCN-8s) for one pass over
    fresh images in bfloat16.
    """
    images = 1500 if quick else 3000
    settings = {"data.num_train": images, "epochs": 8, "amp": True}
    rcnn = {"max_iters": 300 if quick else 600, "data.num_val": 100}
    semantic = {"data.num_train": 4800 if quick else 9600, "epochs": 1, "amp": True}
    return [
        Rung("classify", "classification", "top1", settings),
        Rung("localize", "localization", "loc_accuracy", settings),
        Rung("detect", "detection", "box_AP", rcnn),
        Rung("semantic", "semantic", "mIoU", semantic),
        Rung("instance", "instance", "mask_AP", rcnn),
    ]


def run_demo(out: Path, quick: bool = False) -> dict[str, dict[str, float]]:
    """Train, evaluate and draw every rung; returns ``{task: metrics}``."""
    from pansight.api import train

    out.mkdir(parents=True, exist_ok=True)
    draw_world(out / "world.png")
    summary: dict[str, dict[str, float]] = {}
    for rung in rungs(quick):
        print(f"\n== {rung.title}: training {rung.task} ==", flush=True)
        started = time.perf_counter()
        run = train(
            rung.task, out=str(out / rung.task), overwrite=True, **_python_keys(rung.overrides)
        )
        minutes = (time.perf_counter() - started) / 60
        summary[rung.task] = {**run.metrics, "train_minutes": round(minutes, 2)}
        draw_predictions(run.model, out / f"{rung.task}_predictions.png")
        print(f"{rung.title}: {rung.headline} = {run.metrics[rung.headline]:.3f}", flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, rungs(quick), out)
    return summary


def draw_world(path: Path, count: int = 4) -> None:
    """Multi-object validation samples, one per row, with their ground truth for the instance,
    semantic and panoptic rungs (one sample carries targets for every rung)."""
    dataset = ShapesDataset(split="val", mode="multi", num_images=count, image_size=128)
    pictures = []
    for image, target in (dataset[i] for i in range(count)):
        pictures.append(draw_target(image, target, dataset.class_names, task="instance"))
        for task in ("semantic", "panoptic"):
            pictures.append(draw_target(image, target, dataset.semantic_class_names, task=task))
    save_png(image_grid(pictures, ncol=3), path)


MULTI_OBJECT_TASKS = ("detect", "semantic", "instance", "panoptic")


def draw_predictions(model: PansightModel, path: Path) -> None:
    """A grid of the model's predictions on validation images: 16 single-object 64 px images
    for classification and localization, 8 multi-object 128 px scenes for the other rungs."""
    if model.task in MULTI_OBJECT_TASKS:
        dataset = ShapesDataset(split="val", mode="multi", num_images=8, image_size=128)
    else:
        dataset = ShapesDataset(split="val", mode="single", num_images=16, image_size=64)
    images = [dataset[i][0] for i in range(len(dataset))]
    results = model.predict(images)
    pictures = [
        draw_result(image, result, model.class_names) for image, result in zip(images, results)
    ]
    save_png(image_grid(pictures, ncol=8 if len(images) > 8 else 4), path)


def print_summary(summary: dict[str, dict[str, float]], ladder: list[Rung], out: Path) -> None:
    print("\n  rung            metric          value   minutes")
    for rung in ladder:
        metrics = summary[rung.task]
        print(
            f"  {rung.title:15s} {rung.headline:14s} {metrics[rung.headline]:7.3f}"
            f"   {metrics['train_minutes']:5.1f}"
        )
    print(f"\npictures and summary.json are in {out}/")


def _python_keys(overrides: dict[str, Any]) -> dict[str, Any]:
    return {key.replace(".", "__"): value for key, value in overrides.items()}
