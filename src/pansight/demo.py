"""``pansight demo``: the main job on the embedded synthetic world.

:func:`run_demo` draws the world's ground truth, then climbs the ladder: for each rung it trains
a model (all rungs share one ResNet-18 body; the detector trains from scratch, every other rung
starts from an earlier rung's weights), evaluates it, checks its headline metric against the
rung's floor and draws its predictions. It ends with the ladder figure. Everything lands under
one folder; ``summary.json`` holds the metrics and times.

See docs/demo.md for the steps, the figures and which rung starts from which.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from pansight.api import train
from pansight.data.shapes import ShapesDataset
from pansight.errors import PansightError
from pansight.models.base import PansightModel
from pansight.structures import Classification, Detections, Localization, PanopticMap, Target
from pansight.viz import draw_result, draw_target, image_grid, save_png, with_title


class DemoError(PansightError):
    """A rung of the demo missed its floor."""


@dataclass(frozen=True)
class Rung:
    """One rung of the demo.

    Attributes:
        name: unique; it names the run folder, the pictures and the summary entry.
        task: the task trained.
        title: how pictures and tables name it.
        headline: the metric the floor applies to.
        floor: the least value of ``headline`` the demo accepts.
        overrides: training settings (``TrainConfig`` keys, dotted).
        init_from: the earlier rung whose trained weights this one starts from, or ``""``.
    """

    name: str
    task: str
    title: str
    headline: str
    floor: float
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str = ""


SCENES = {"data.num_val": 100}
"""The multi-object rungs: 128 px scenes (their task recipe), 100 validation scenes."""
OBJECTS = {"data.num_val": 300}
"""The single-object rungs: 64 px images (their task recipe), 300 validation images."""
YOLACT = {"model": "yolact_r18", "model.input_size": 128}
"""YOLACT at the scenes' own 128 px (its default input is 160): 0.64 times the pixels."""


def rungs(quick: bool) -> list[Rung]:
    """The rungs in ladder order (classification first); ``quick`` halves the three longest
    schedules (detection, YOLACT, semantic) and asks less of every rung."""

    def iters(full: int, quick_iters: int) -> dict[str, int]:
        return {"max_iters": quick_iters if quick else full}

    def floor(full: float, quick_floor: float) -> float:
        return quick_floor if quick else full

    return [
        Rung(
            "classify",
            "classify",
            "classification",
            "top1",
            floor(0.97, 0.80),
            {**OBJECTS, **iters(150, 150), "lr": 2e-3, "warmup_iters": 10},
            init_from="instance",
        ),
        Rung(
            "localize",
            "localize",
            "localization",
            "loc_accuracy",
            floor(0.95, 0.80),
            {**OBJECTS, **iters(60, 60), "lr": 1e-3, "warmup_iters": 10},
            init_from="classify",
        ),
        Rung(
            "detect",
            "detect",
            "detection",
            "box_AP",
            floor(0.55, 0.30),
            {**SCENES, **iters(800, 400)},
        ),
        Rung(
            "semantic",
            "semantic",
            "semantic",
            "mIoU",
            floor(0.80, 0.55),
            {**SCENES, **iters(700, 350), "batch_size": 8, "warmup_iters": 20},
            init_from="instance_yolact",
        ),
        Rung(
            "instance",
            "instance",
            "instance (Mask R-CNN)",
            "mask_AP",
            floor(0.50, 0.30),
            {**SCENES, **iters(200, 200), "warmup_iters": 20},
            init_from="detect",
        ),
        Rung(
            "instance_yolact",
            "instance",
            "instance (YOLACT)",
            "mask_AP",
            floor(0.45, 0.25),
            {**SCENES, **iters(600, 300), **YOLACT, "warmup_iters": 20},
            init_from="instance",
        ),
        Rung(
            "panoptic",
            "panoptic",
            "panoptic",
            "PQ",
            floor(0.70, 0.50),
            {**SCENES, **iters(150, 150), "warmup_iters": 20},
            init_from="instance",
        ),
    ]


def training_order(ladder: list[Rung]) -> list[Rung]:
    """``ladder`` reordered so that every rung trains after the rung it starts from (otherwise
    in ladder order)."""
    done: list[Rung] = []
    waiting = list(ladder)
    while waiting:
        ready = next(
            (r for r in waiting if not r.init_from or r.init_from in {d.name for d in done}),
            None,
        )
        if ready is None:
            names = ", ".join(f"{r.name} <- {r.init_from}" for r in waiting)
            raise ValueError(f"demo rungs start from rungs that never train: {names}")
        done.append(ready)
        waiting.remove(ready)
    return done


def run_demo(out: Path, quick: bool = False) -> dict[str, dict[str, float]]:
    """Train, evaluate and draw every rung; returns ``{rung name: metrics}`` in ladder order.

    Raises:
        DemoError: after everything is written, when a rung's headline metric is below its
            floor.
    """
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    draw_world(out / "world.png")
    ladder = rungs(quick)
    results: dict[str, dict[str, float]] = {}
    models: dict[str, PansightModel] = {}
    for rung in training_order(ladder):
        print(f"\n== {rung.title}: training {rung.task} ==", flush=True)
        rung_started = time.perf_counter()
        overrides = dict(rung.overrides)
        if rung.init_from:
            overrides["init"] = str(out / rung.init_from / "model.pt")
        run = train(rung.task, out=str(out / rung.name), overwrite=True, **_python_keys(overrides))
        models[rung.name] = run.model
        draw_predictions(run.model, out / f"{rung.name}_predictions.png")
        minutes = (time.perf_counter() - rung_started) / 60
        results[rung.name] = {**run.metrics, "minutes": round(minutes, 2)}
        value = run.metrics[rung.headline]
        print(f"{rung.title}: {rung.headline} = {value:.3f} (floor {rung.floor:.2f})", flush=True)
    summary = {rung.name: results[rung.name] for rung in ladder}
    draw_comparisons(ladder, models, out)
    index, right = draw_ladder(ladder, models, out / "ladder.png")
    total = (time.perf_counter() - started) / 60
    (out / "summary.json").write_text(
        json.dumps({**summary, "total_minutes": round(total, 2), "ladder_image": index}, indent=2)
    )
    print_summary(summary, ladder, out, total)
    check_floors(summary, ladder, right, index)
    return summary


def check_floors(
    summary: dict[str, dict[str, float]], ladder: list[Rung], right: dict[str, bool], index: int
) -> None:
    """Raise DemoError naming every rung below its floor, and every rung wrong on the ladder
    image."""
    missed = [
        f"{rung.title} {rung.headline} {summary[rung.name][rung.headline]:.3f} < {rung.floor:.2f}"
        for rung in ladder
        if not summary[rung.name][rung.headline] >= rung.floor
    ]
    missed += [
        f"{title} is wrong on the ladder image (validation image {index})"
        for title, correct in right.items()
        if not correct
    ]
    if missed:
        raise DemoError("the demo missed its floors: " + "; ".join(missed))


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


LADDER_CANDIDATES = 20
"""Validation images tried, in order, for the ladder figure."""


CONFIDENT = 0.5
"""The score above which the ladder judges and draws a detection."""


def draw_ladder(
    ladder: list[Rung], models: dict[str, PansightModel], path: Path
) -> tuple[int, dict[str, bool]]:
    """``ladder.png``: one 128 px validation image with a single thing over stuff, seen by the
    first model of every task, left to right from classification to panoptic, each panel
    titled; detections are drawn when they score above :data:`CONFIDENT`.

    The image is the first of the validation split (seed 0) on which every model is right
    (:func:`is_right`), among the first :data:`LADDER_CANDIDATES`; failing that, the one
    with the most models right. Returns its index and which models are right on it.
    """
    firsts = [next(r for r in ladder if r.task == task) for task in _tasks(ladder)]
    dataset = ShapesDataset(
        split="val", mode="single", num_images=LADDER_CANDIDATES, image_size=128
    )
    best: tuple[int, dict[str, bool], list[tuple[Rung, Any]]] | None = None
    for index in range(LADDER_CANDIDATES):
        image, target = dataset[index]
        results = [(rung, models[rung.name].predict([image])[0]) for rung in firsts]
        right = {rung.title: is_right(rung.task, result, target) for rung, result in results}
        if best is None or sum(right.values()) > sum(best[1].values()):
            best = (index, right, results)
        if all(right.values()):
            break
    assert best is not None
    index, right, results = best
    image, _ = dataset[index]
    panels = [
        with_title(
            draw_result(image, result, models[rung.name].class_names, min_score=CONFIDENT),
            rung.title,
        )
        for rung, result in results
    ]
    save_png(image_grid(panels, ncol=len(panels)), path)
    return index, right


def is_right(task: str, result: Any, target: Target, pixel_share: float = 0.9) -> bool:
    """Whether a model's result on a single-object image is right: the right class
    (classification, localization), every detection scoring above :data:`CONFIDENT` of the
    right class and at least one (detection, instance), or the right class on at least
    ``pixel_share`` of the pixels (semantic, panoptic)."""
    if isinstance(result, Classification | Localization):
        return result.label == target.label
    if isinstance(result, Detections):
        confident = result.labels[result.scores > CONFIDENT]
        return len(confident) > 0 and bool((confident == target.label).all())
    labels = _pixel_classes(result)
    return float((labels == target.semantic).float().mean()) >= pixel_share


def _pixel_classes(result: Any) -> Tensor:
    """``(H, W)`` class per pixel of a semantic or panoptic result (void: -1)."""
    if isinstance(result, PanopticMap):
        labels = result.ids.new_full(result.ids.shape, -1)
        for segment in result.segments:
            labels[result.ids == segment.id] = segment.label
        return labels
    return result.labels


def print_summary(
    summary: dict[str, dict[str, float]], ladder: list[Rung], out: Path, total: float
) -> None:
    width = max(len("rung"), *(len(rung.title) for rung in ladder))
    print(f"\n  {'rung':{width}s} metric          value   floor   minutes")
    for rung in ladder:
        metrics = summary[rung.name]
        print(
            f"  {rung.title:{width}s} {rung.headline:14s} {metrics[rung.headline]:7.3f}"
            f"   {rung.floor:5.2f}   {metrics['minutes']:5.1f}"
        )
    print(f"\n  {'all':{width}s} {'':14s} {'':7s}   {'':5s}   {total:5.1f}")
    print(f"\npictures and summary.json are in {out}/")


def _tasks(ladder: list[Rung]) -> list[str]:
    return list(dict.fromkeys(rung.task for rung in ladder))


def _validation_images(task: str, count: int) -> ShapesDataset:
    """The first ``count`` validation images of the synthetic world for ``task``: 128 px scenes
    for the multi-object tasks, 64 px single objects for the others."""
    if task in MULTI_OBJECT_TASKS:
        return ShapesDataset(split="val", mode="multi", num_images=count, image_size=128)
    return ShapesDataset(split="val", mode="single", num_images=count, image_size=64)


def _python_keys(overrides: dict[str, Any]) -> dict[str, Any]:
    return {key.replace(".", "__"): value for key, value in overrides.items()}
