"""``pansight demo``: the main job on the embedded synthetic world.

It draws the world's ground truth, then climbs the ladder: for each rung it trains a model for a
few minutes, evaluates it on the validation split and draws its predictions. A task trained by
two models (instance segmentation: Mask R-CNN and YOLACT) also gets a picture of both models'
predictions on the same images. It ends with the ladder figure: one image seen by every rung's
model, side by side. Everything lands under one folder; ``summary.json`` holds the metrics.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pansight.data.shapes import ShapesDataset
from pansight.models.base import PansightModel
from pansight.viz import draw_result, draw_target, image_grid, save_png, with_title


@dataclass(frozen=True)
class Rung:
    """One rung of the demo: its name (unique; it names the run folder, the pictures and the
    summary entry), task, title, headline metric and training overrides."""

    name: str
    task: str
    title: str
    headline: str
    overrides: dict[str, Any]


def rungs(quick: bool) -> list[Rung]:
    """The rungs the demo trains; ``quick`` halves the work.

    Classification and localization train for epochs in bfloat16 mixed precision; the R-CNN
    rungs for a fixed number of iterations; semantic segmentation (FCN-8s) for one pass over
    fresh images in bfloat16. YOLACT trains with the same iteration budget as Mask R-CNN.
    """
    images = 1500 if quick else 3000
    settings = {"data.num_train": images, "epochs": 8}
    rcnn = {"max_iters": 300 if quick else 600, "data.num_val": 100}
    semantic = {"data.num_train": 4800 if quick else 9600, "epochs": 1}
    yolact = {**rcnn, "model": "yolact_r18"}
    return [
        Rung("classify", "classify", "classification", "top1", settings),
        Rung("localize", "localize", "localization", "loc_accuracy", settings),
        Rung("detect", "detect", "detection", "box_AP", rcnn),
        Rung("semantic", "semantic", "semantic", "mIoU", semantic),
        Rung("instance", "instance", "instance (Mask R-CNN)", "mask_AP", rcnn),
        Rung("instance_yolact", "instance", "instance (YOLACT)", "mask_AP", yolact),
        Rung("panoptic", "panoptic", "panoptic", "PQ", rcnn),
    ]


def run_demo(out: Path, quick: bool = False) -> dict[str, dict[str, float]]:
    """Train, evaluate and draw every rung; returns ``{rung name: metrics}``."""
    from pansight.api import train

    out.mkdir(parents=True, exist_ok=True)
    draw_world(out / "world.png")
    ladder = rungs(quick)
    summary: dict[str, dict[str, float]] = {}
    models: dict[str, PansightModel] = {}
    for rung in ladder:
        print(f"\n== {rung.title}: training {rung.task} ==", flush=True)
        started = time.perf_counter()
        run = train(
            rung.task, out=str(out / rung.name), overwrite=True, **_python_keys(rung.overrides)
        )
        minutes = (time.perf_counter() - started) / 60
        summary[rung.name] = {**run.metrics, "train_minutes": round(minutes, 2)}
        models[rung.name] = run.model
        draw_predictions(run.model, out / f"{rung.name}_predictions.png")
        print(f"{rung.title}: {rung.headline} = {run.metrics[rung.headline]:.3f}", flush=True)
    draw_comparisons(ladder, models, out)
    draw_ladder(ladder, models, out / "ladder.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, ladder, out)
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
    dataset = _validation_images(model.task, 8 if model.task in MULTI_OBJECT_TASKS else 16)
    images = [dataset[i][0] for i in range(len(dataset))]
    results = model.predict(images)
    pictures = [
        draw_result(image, result, model.class_names) for image, result in zip(images, results)
    ]
    save_png(image_grid(pictures, ncol=8 if len(images) > 8 else 4), path)


def draw_comparisons(ladder: list[Rung], models: dict[str, PansightModel], out: Path) -> None:
    """For every task trained by more than one rung, ``<task>_comparison.png``: one row per
    rung (titled), each model's predictions on the same validation images."""
    for task in dict.fromkeys(rung.task for rung in ladder):
        rivals = [rung for rung in ladder if rung.task == task]
        if len(rivals) > 1:
            titled = [(rung.title, models[rung.name]) for rung in rivals]
            draw_comparison(titled, out / f"{task}_comparison.png")


def draw_comparison(
    titled_models: list[tuple[str, PansightModel]], path: Path, count: int = 4
) -> None:
    """Models of one task on the same ``count`` validation images, one titled row per model."""
    rows = []
    for title, model in titled_models:
        dataset = _validation_images(model.task, count)
        images = [dataset[i][0] for i in range(count)]
        pictures = [
            draw_result(image, result, model.class_names)
            for image, result in zip(images, model.predict(images))
        ]
        rows.append(with_title(image_grid(pictures, ncol=count), title))
    save_png(image_grid(rows, ncol=1), path)


def draw_ladder(
    ladder: list[Rung], models: dict[str, PansightModel], path: Path, index: int = 0
) -> None:
    """``ladder.png``: one validation image with a single thing over stuff, seen by the first
    model of every task, left to right from classification to panoptic, each panel titled."""
    image, _ = ShapesDataset(split="val", mode="single", num_images=index + 1, image_size=128)[
        index
    ]
    panels = []
    for task in dict.fromkeys(rung.task for rung in ladder):
        rung = next(rung for rung in ladder if rung.task == task)
        model = models[rung.name]
        (result,) = model.predict([image])
        panels.append(with_title(draw_result(image, result, model.class_names), rung.title))
    save_png(image_grid(panels, ncol=len(panels)), path)


def print_summary(summary: dict[str, dict[str, float]], ladder: list[Rung], out: Path) -> None:
    width = max(len("rung"), *(len(rung.title) for rung in ladder))
    print(f"\n  {'rung':{width}s} metric          value   minutes")
    for rung in ladder:
        metrics = summary[rung.name]
        print(
            f"  {rung.title:{width}s} {rung.headline:14s} {metrics[rung.headline]:7.3f}"
            f"   {metrics['train_minutes']:5.1f}"
        )
    print(f"\npictures and summary.json are in {out}/")


def _validation_images(task: str, count: int) -> ShapesDataset:
    """The first ``count`` validation images of the synthetic world for ``task``: 128 px scenes
    for the multi-object tasks, 64 px single objects for the others."""
    if task in MULTI_OBJECT_TASKS:
        return ShapesDataset(split="val", mode="multi", num_images=count, image_size=128)
    return ShapesDataset(split="val", mode="single", num_images=count, image_size=64)


def _python_keys(overrides: dict[str, Any]) -> dict[str, Any]:
    return {key.replace(".", "__"): value for key, value in overrides.items()}
