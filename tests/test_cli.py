"""The command line end to end on tiny runs, and its one-line errors."""

import json

import pytest

from pansight.cli import main
from pansight.data.images import write_image
from pansight.data.shapes import ShapesDataset

TINY = ["max_iters=4", "batch_size=8", "model.input_size=32", "checkpoint_every=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classifier trained for a few iterations on digits, through the CLI."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "classify", "data=digits", f"out={out}", *TINY]) == 0
    return out


def test_train_writes_run_folder(trained):
    for name in ("model.pt", "last.pt", "config.yaml", "metrics.jsonl"):
        assert (trained / name).is_file(), name
    lines = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/top1" in line for line in lines)


def test_eval_prints_metrics(trained, tmp_path, capsys):
    assert main(["eval", str(trained / "model.pt"), "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert 0.0 <= metrics["top1"] <= 1.0
    assert "top1" in capsys.readouterr().out


def test_predict_writes_pictures_and_json(trained, tmp_path):
    folder = tmp_path / "images"
    dataset = ShapesDataset(split="val", mode="single", num_images=3, image_size=48)
    for i in range(3):
        write_image(dataset[i][0], folder / f"img{i}.png")
    out = tmp_path / "pred"
    assert main(["predict", str(trained / "model.pt"), str(folder), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "classify" and len(results["images"]) == 3
    assert results["images"][0]["result"]["class_name"] in [str(d) for d in range(10)]
    assert len(list(out.glob("*.png"))) == 3


def test_models_lists_each_task(capsys):
    assert main(["models", "localize"]) == 0
    listing = capsys.readouterr().out
    assert "localizer_r18" in listing and "classifier_r18" not in listing


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "classify", "learning_rate=1"], "unknown key 'learning_rate'"),
        (["train", "classify", "epochs"], "'epochs' is not key=value"),
        (["train", "localize", "model=classifier_r18"], "not a localize model"),
        (["eval", "missing.pt"], "missing.pt"),
        (["predict", "missing.pt", "nowhere/"], "nowhere"),
    ],
)
def test_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_predict_on_empty_folder(trained, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(trained / "model.pt"), str(tmp_path / "empty")]) == 2
    assert "no images found" in capsys.readouterr().err


def test_predict_on_corrupt_image_names_it(trained, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = tmp_path / "pred"
    assert main(["predict", str(trained / "model.pt"), str(bad), "--out", str(out)]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert not (out / "results.json").exists()


def test_corrupt_training_image_stops_with_its_name(tmp_path, capsys):
    dataset = ShapesDataset(split="train", mode="single", num_images=8, image_size=40)
    for i in range(8):
        write_image(dataset[i][0], tmp_path / "data" / f"class{i % 2}" / f"img{i}.png")
    (tmp_path / "data" / "class0" / "img0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 9)
    argv = ["train", "classify", "data=folder", f"data.root={tmp_path / 'data'}"]
    argv += ["data.val_fraction=0", f"out={tmp_path / 'run'}", *TINY]
    assert main(argv) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last_line.startswith("error: ") and "img0.png" in last_line


def test_a_second_run_into_the_same_folder_is_refused(trained, capsys):
    before = (trained / "model.pt").read_bytes()
    assert main(["train", "classify", "data=digits", f"out={trained}", *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (trained / "model.pt").read_bytes() == before


def test_instance_rung_trains_evaluates_and_predicts(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "instance", "data.num_train=8", "data.num_val=4", "max_iters=2"]
    assert main([*argv, "batch_size=2", f"out={out}"]) == 0
    assert main(["eval", str(out / "model.pt"), "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"box_AP", "mask_AP", "mask_AP50"} <= set(metrics)
    dataset = ShapesDataset(split="val", mode="multi", num_images=2, image_size=96)
    for i in range(2):
        write_image(dataset[i][0], tmp_path / "images" / f"img{i}.png")
    pred = tmp_path / "pred"
    argv = ["predict", str(out / "model.pt"), str(tmp_path / "images"), "--out", str(pred)]
    assert main(argv) == 0
    results = json.loads((pred / "results.json").read_text())
    assert results["task"] == "instance" and isinstance(results["images"][0]["result"], list)


def test_coco_written_by_the_synthetic_world_trains_and_evaluates(tmp_path):
    data = tmp_path / "coco"
    argv = ["data", "write", "--out", str(data), "--num-train", "4", "--num-val", "2"]
    assert main([*argv, "--image-size", "96"]) == 0
    out = tmp_path / "run"
    argv = ["train", "detect", "data=coco", f"data.root={data}", "max_iters=1", "batch_size=2"]
    assert main([*argv, f"out={out}"]) == 0
    assert main(["eval", str(out / "model.pt"), "--out", str(tmp_path / "m.json")]) == 0
    assert "box_AP50" in json.loads((tmp_path / "m.json").read_text())
