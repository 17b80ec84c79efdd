"""``pansight predict`` with a Panoptic FPN writes COCO panoptic predictions (PNG + JSON) that
read back into the maps the model predicts."""

import torch

import pansight
from pansight.cli import main
from pansight.data.coco_panoptic import load_panoptic_json, read_panoptic_record
from pansight.data.images import read_image, write_image
from pansight.data.shapes import ShapesDataset


def test_predict_writes_coco_panoptic_files_that_read_back(tmp_path):
    run = pansight.train(
        "panoptic",
        out=str(tmp_path / "run"),
        max_iters=2,
        data__num_train=4,
        data__num_val=2,
        data__image_size=64,
        model__min_size="64",
        model__max_size="64",
    )
    world = ShapesDataset(split="val", mode="multi", num_images=2, image_size=48)
    for index in range(2):
        write_image(world[index][0], tmp_path / "images" / f"img{index}.png")
    out = tmp_path / "pred"
    assert (
        main(["predict", str(run.out / "model.pt"), str(tmp_path / "images"), "--out", str(out)])
        == 0
    )
    predictions = load_panoptic_json(out / "panoptic.json")
    assert predictions.categories.names == run.model.class_names
    assert predictions.categories.thing_flags == list(run.model.config.thing_flags)
    for index in range(2):
        image = read_image(tmp_path / "images" / f"img{index}.png")
        (expected,) = run.model.predict([image])
        got = read_panoptic_record(predictions.records[index], out, predictions.categories)
        assert torch.equal(got.ids, expected.ids)
        assert sorted((s.id, s.label) for s in got.segments) == sorted(
            (s.id, s.label) for s in expected.segments if s.area > 0
        )
