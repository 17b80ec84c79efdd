"""The demo end to end with rungs shrunk to a few iterations."""

import json
import re

from PIL import Image

import pansight.demo as demo
from pansight.demo import Rung


def test_demo_writes_pictures_and_summary(tmp_path, monkeypatch, capsys):
    tiny = {"data.num_train": 16, "data.num_val": 8, "max_iters": 2, "batch_size": 8}
    tiny |= {"model.input_size": 32}
    rcnn = {"data.num_train": 8, "data.num_val": 4, "max_iters": 2}
    yolact = {**rcnn, "model": "yolact_r18", "model.input_size": 64, "model.fpn_channels": 32}
    monkeypatch.setattr(
        demo,
        "rungs",
        lambda quick: [
            Rung("classify", "classify", "classification", "top1", tiny),
            Rung("localize", "localize", "localization", "loc_accuracy", tiny),
            Rung("instance", "instance", "instance (Mask R-CNN)", "mask_AP", rcnn),
            Rung("instance_yolact", "instance", "instance (YOLACT)", "mask_AP", yolact),
            Rung("panoptic", "panoptic", "panoptic", "PQ", rcnn),
        ],
    )
    summary = demo.run_demo(tmp_path)
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
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert list(summary) == ["classify", "localize", "instance", "instance_yolact", "panoptic"]
    assert 0.0 <= summary["panoptic"]["PQ"] <= 1.0
    assert 0.0 <= summary["localize"]["loc_accuracy"] <= 1.0
    assert 0.0 <= summary["instance"]["mask_AP"] <= 1.0
    assert 0.0 <= summary["instance_yolact"]["mask_AP"] <= 1.0
    printed = capsys.readouterr().out
    for title, headline in [
        ("classification", "top1"),
        ("localization", "loc_accuracy"),
        ("instance (Mask R-CNN)", "mask_AP"),
        ("instance (YOLACT)", "mask_AP"),
    ]:
        row = rf"^  {re.escape(title)} +{headline} +\d\.\d{{3}} +\d+\.\d$"
        assert re.search(row, printed, flags=re.MULTILINE), title


def test_yolact_rung_trains_with_the_mask_rcnn_budget():
    full, quick = ({rung.name: rung for rung in demo.rungs(q)} for q in (False, True))
    assert len(full) == len(demo.rungs(False))
    for ladder in (full, quick):
        mask_rcnn, yolact = ladder["instance"], ladder["instance_yolact"]
        assert mask_rcnn.task == yolact.task == "instance"
        assert yolact.overrides == {**mask_rcnn.overrides, "model": "yolact_r18"}
    assert (
        quick["instance_yolact"].overrides["max_iters"] * 2
        == full["instance"].overrides["max_iters"]
    )
