"""The demo end to end with rungs shrunk to a few iterations; its training order, floors and
ladder-image checks."""

import json
import re

import pytest
import torch
from PIL import Image

import pansight.demo as demo
from pansight.demo import DemoError, Rung
from pansight.structures import Classification, Detections, PanopticMap, Segment, Target


def tiny_ladder(quick):
    tiny = {"data.num_train": 16, "data.num_val": 8, "max_iters": 2, "batch_size": 8}
    tiny |= {"model.input_size": 32}
    rcnn = {"data.num_train": 8, "data.num_val": 4, "max_iters": 2}
    yolact = {**rcnn, "model": "yolact_r18", "model.input_size": 64, "model.fpn_channels": 32}
    return [
        Rung("classify", "classify", "classification", "top1", -1.0, tiny, "instance"),
        Rung("localize", "localize", "localization", "loc_accuracy", -1.0, tiny, "classify"),
        Rung("instance", "instance", "instance (Mask R-CNN)", "mask_AP", -1.0, rcnn),
        Rung("instance_yolact", "instance", "instance (YOLACT)", "mask_AP", -1.0, yolact),
        Rung("panoptic", "panoptic", "panoptic", "PQ", -1.0, rcnn, "instance"),
    ]


def test_demo_writes_pictures_and_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "rungs", tiny_ladder)
    # the tiny models are right nowhere: the ladder check is tested on its own below
    monkeypatch.setattr(demo, "LADDER_CANDIDATES", 2)
    with pytest.raises(DemoError, match="wrong on the ladder image"):
        demo.run_demo(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    pictures = ("world.png", "classify_predictions.png", "localize_predictions.png")
    instance = ("instance_predictions.png", "instance_yolact_predictions.png")
    for name in (*pictures, *instance, "instance_comparison.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert not (tmp_path / "classify_comparison.png").exists()
    with Image.open(tmp_path / "instance_comparison.png") as comparison:
        width, height = comparison.size
    # two titled rows of four 128 px scenes, each drawn twice as large
    assert width > 4 * 256 and 2 * 256 < height < 3 * 256
    with Image.open(tmp_path / "ladder.png") as ladder:
        width, height = ladder.size
    # one titled row: a panel per task (classify, localize, instance, panoptic), 256 px each
    assert 4 * 256 <= width < 5 * 256 and 256 < height < 2 * 256
    assert (tmp_path / "instance_yolact" / "model.pt").exists()
    rungs = ["classify", "localize", "instance", "instance_yolact", "panoptic"]
    assert list(summary) == [*rungs, "total_minutes", "ladder_image"]
    assert summary["ladder_image"] in (0, 1) and summary["total_minutes"] > 0
    for rung, headline in zip(rungs, ["top1", "loc_accuracy", "mask_AP", "mask_AP", "PQ"]):
        assert 0.0 <= summary[rung][headline] <= 1.0 and summary[rung]["minutes"] > 0
    printed = capsys.readouterr()
    # the classifier starts from Mask R-CNN, so Mask R-CNN trains first
    order = re.findall(r"^== (.+): training", printed.out, flags=re.MULTILINE)
    assert order == [
        "instance (Mask R-CNN)",
        "classification",
        "localization",
        "instance (YOLACT)",
        "panoptic",
    ]
    assert "init: 1" in printed.err and "starting afresh: fc" in printed.err
    for title, headline in [
        ("classification", "top1"),
        ("localization", "loc_accuracy"),
        ("instance (Mask R-CNN)", "mask_AP"),
        ("instance (YOLACT)", "mask_AP"),
    ]:
        row = rf"^  {re.escape(title)} +{headline} +\d\.\d{{3}} +-1\.00 +\d+\.\d$"
        assert re.search(row, printed.out, flags=re.MULTILINE), title
    assert re.search(r"^  all +\d+\.\d$", printed.out, flags=re.MULTILINE)


def test_floors_name_every_rung_below_them():
    ladder = tiny_ladder(quick=False)[:2]
    ladder = [Rung(r.name, r.task, r.title, r.headline, 0.9, r.overrides) for r in ladder]
    summary = {"classify": {"top1": 0.95}, "localize": {"loc_accuracy": 0.5}}
    with pytest.raises(DemoError) as error:
        demo.check_floors(summary, ladder, {"classification": True, "localization": False}, 3)
    message = str(error.value)
    assert (
        "localization loc_accuracy 0.500 < 0.90" in message and "classification top1" not in message
    )
    assert "localization is wrong on the ladder image (validation image 3)" in message
    demo.check_floors(summary | {"localize": {"loc_accuracy": 0.9}}, ladder, {}, 0)


def test_every_rung_trains_after_the_rung_it_starts_from():
    for quick in (False, True):
        ladder = demo.rungs(quick)
        order = [rung.name for rung in demo.training_order(ladder)]
        assert sorted(order) == sorted(rung.name for rung in ladder)
        for rung in ladder:
            if rung.init_from:
                assert order.index(rung.init_from) < order.index(rung.name), rung.name
    loop = [Rung("a", "classify", "a", "top1", 0.0, init_from="b")]
    with pytest.raises(ValueError, match="a <- b"):
        demo.training_order(loop)


def test_quick_rungs_halve_the_longest_schedules_and_ask_less():
    full, quick = ({rung.name: rung for rung in demo.rungs(q)} for q in (False, True))
    assert list(full) == list(quick)
    halved = {"detect", "instance_yolact", "semantic"}
    for name, rung in full.items():
        share = 2 if name in halved else 1
        assert quick[name].overrides["max_iters"] * share == rung.overrides["max_iters"], name
        assert {**quick[name].overrides, "max_iters": 0} == {**rung.overrides, "max_iters": 0}
        assert quick[name].floor < rung.floor


def test_a_result_is_right_by_class_or_by_pixels():
    semantic = torch.zeros(8, 8, dtype=torch.int64)
    semantic[2:6, 2:6] = 3
    target = Target(image_id=0, size=(8, 8), label=3, semantic=semantic)
    assert demo.is_right("classify", Classification(3, 0.9, torch.ones(5)), target)
    assert not demo.is_right("classify", Classification(2, 0.9, torch.ones(5)), target)
    boxes = torch.tensor([[2.0, 2, 6, 6], [0, 0, 2, 2]])
    detections = Detections(boxes, torch.tensor([0.9, 0.3]), torch.tensor([3, 1]))
    assert demo.is_right("detect", detections, target)
    detections = Detections(boxes, torch.tensor([0.9, 0.6]), torch.tensor([3, 1]))
    assert not demo.is_right("detect", detections, target)
    ids = (semantic == 3).long() + 1  # thing segment 2 where the thing is, stuff 1 elsewhere
    panoptic = PanopticMap(ids, [Segment(1, 0, False, 48), Segment(2, 3, True, 16)])
    assert demo.is_right("panoptic", panoptic, target)
    ids[0, :7] = 2  # 7 of 64 pixels wrong: 89 %
    assert not demo.is_right("panoptic", PanopticMap(ids, panoptic.segments), target)
