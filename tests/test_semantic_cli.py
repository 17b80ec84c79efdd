"""The semantic rung through the command line: train, eval, predict (label PNGs, score channels)."""

import json

import pytest
import torch

from pansight.cli import main
from pansight.config import TrainConfig
from pansight.data.images import write_image
from pansight.data.label_folders import read_label_png, write_label_png
from pansight.data.shapes import ALL_CLASSES, ShapesDataset
from pansight.engine.checkpoint import model_payload, save_checkpoint
from pansight.models.zoo import build_model

TINY = ["max_iters=2", "batch_size=4", "model.input_size=64", "data.num_val=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """FCN-8s trained for two iterations on the synthetic world, through the CLI."""
    out = tmp_path_factory.mktemp("semantic")
    argv = ["train", "semantic", "data.num_train=8", "data.image_size=64", *TINY]
    assert main([*argv, f"out={out}"]) == 0
    return out


def test_eval_gives_the_semantic_metrics(trained, tmp_path, capsys):
    assert main(["eval", str(trained / "model.pt"), "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"mIoU", "pixel_accuracy", "fw_IoU", "IoU_ring", "IoU_water"} <= set(metrics)
    assert 0.0 <= metrics["pixel_accuracy"] <= 1.0
    assert "mIoU" in capsys.readouterr().out


def test_predict_writes_color_map_label_png_and_channels(trained, tmp_path):
    world = ShapesDataset(split="val", mode="multi", num_images=2, image_size=48)
    for i in range(2):
        write_image(world[i][0], tmp_path / "images" / f"img{i}.png")
    out = tmp_path / "pred"
    argv = ["predict", str(trained / "model.pt"), str(tmp_path / "images"), "--out", str(out)]
    assert main([*argv, "--channels"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "semantic" and len(results["images"]) == 2
    record = results["images"][1]["result"]
    labels = read_label_png(out / record["labels_png"], num_classes=len(ALL_CLASSES))
    assert labels.shape == (48, 48)
    names, counts = labels.unique(return_counts=True)
    assert record["pixels"] == {ALL_CLASSES[k]: int(n) for k, n in zip(names, counts)}
    for suffix in ("", "_channels"):
        picture = out / f"00001_img1{suffix}.png"
        assert picture.stat().st_size > 1000, picture


def test_channels_need_a_semantic_model(tmp_path, capsys):
    classifier = build_model("classifier_r18", ["a", "b"])
    payload = model_payload(
        classifier,
        model_name="classifier_r18",
        train_config=TrainConfig(),
        data_set=None,
        metrics={},
    )
    save_checkpoint(tmp_path / "model.pt", payload)
    write_image(torch.rand(3, 16, 16), tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "model.pt"), str(tmp_path / "x.png"), "--channels"]) == 2
    assert "--channels needs a semantic model" in capsys.readouterr().err


def test_label_folders_train_and_a_bad_label_png_is_named(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "classes.txt").write_text("ground\nobject\n")
    for split in ("train", "val"):
        for i in range(2):
            labels = torch.zeros(40, 40, dtype=torch.int64)
            labels[10:30, 10:30] = 1
            write_image(torch.rand(3, 40, 40), data / "images" / split / f"{i}.png")
            write_label_png(labels, data / "labels" / split / f"{i}.png")
    argv = ["train", "semantic", "data=labels", f"data.root={data}", *TINY[:3]]
    assert main([*argv, f"out={tmp_path / 'run'}"]) == 0
    bad = data / "labels" / "train" / "1.png"
    write_label_png(torch.full((40, 40), 5), bad)
    assert main([*argv, f"out={tmp_path / 'run2'}"]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(bad) in last_line and "exceeds the class count" in last_line
