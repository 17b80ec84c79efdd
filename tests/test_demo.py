"""The demo end to end with rungs shrunk to a few iterations."""

import json

import pansight.demo as demo
from pansight.demo import Rung


def test_demo_writes_pictures_and_summary(tmp_path, monkeypatch, capsys):
    tiny = {"data.num_train": 16, "data.num_val": 8, "max_iters": 2, "batch_size": 8}
    tiny |= {"model.input_size": 32}
    rcnn = {"data.num_train": 8, "data.num_val": 4, "max_iters": 2}
    monkeypatch.setattr(
        demo,
        "rungs",
        lambda quick: [
            Rung("classify", "classification", "top1", tiny),
            Rung("localize", "localization", "loc_accuracy", tiny),
            Rung("instance", "instance", "mask_AP", rcnn),
        ],
    )
    summary = demo.run_demo(tmp_path)
    pictures = ("world.png", "classify_predictions.png", "localize_predictions.png")
    for name in (*pictures, "instance_predictions.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert 0.0 <= summary["localize"]["loc_accuracy"] <= 1.0
    assert 0.0 <= summary["instance"]["mask_AP"] <= 1.0
    printed = capsys.readouterr().out
    assert "classification  top1" in printed and "localization    loc_accuracy" in printed
    assert "instance        mask_AP" in printed
