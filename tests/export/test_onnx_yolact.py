"""ONNX export of YOLACT: the graph's raw outputs and the detections (Fast NMS and mask
assembly in the eager ``postprocess``) match the eager model, with a fixed and a dynamic batch
and through the command line."""

import json

import pytest
import torch
from onnx_parity import assert_same_detections

from pansight.cli import main
from pansight.config import DataConfig, TrainConfig
from pansight.data.factory import build_dataset
from pansight.data.images import write_image
from pansight.engine.checkpoint import model_payload, save_checkpoint
from pansight.export import export_onnx, load_onnx
from pansight.models.zoo import build_model

CLASSES = ["circle", "square", "triangle", "star"]
TINY = {"input_size": 64, "fpn_channels": 16, "proto_channels": 16, "num_prototypes": 8}
IMAGE_SIZES = [(40, 50), (70, 33), (23, 90)]


def tiny_yolact(class_names=CLASSES, **overrides):
    """A tiny random YOLACT; its random head scores many anchors above ``score_thresh``."""
    torch.manual_seed(0)
    return build_model("yolact_r18", class_names, {**TINY, **overrides}).eval()


def images():
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, h, w, generator=generator) for h, w in IMAGE_SIZES]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``(eager model, {dynamic: predictor})``."""
    model = tiny_yolact(detections_per_img=20)
    folder = tmp_path_factory.mktemp("yolact")
    predictors = {
        dynamic: load_onnx(export_onnx(model, folder / f"{dynamic}.onnx", dynamic=dynamic), 1)
        for dynamic in (False, True)
    }
    return model, predictors


@pytest.mark.parametrize("dynamic", [False, True])
def test_raw_outputs_match_eager(exported, dynamic):
    model, predictors = exported
    predictor = predictors[dynamic]
    assert predictor.batch_size == (None if dynamic else 1)
    batch, _ = model.preprocess(images())
    with torch.no_grad():
        eager = model(batch)
    ours = predictor(batch)
    assert ours.semantic_logits is None, "postprocess does not read the semantic map"
    assert ours.priors.shape == eager.priors.shape, "priors have no batch axis"
    for name in predictor.spec.output_names:
        torch.testing.assert_close(getattr(ours, name), getattr(eager, name), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dynamic", [False, True])
def test_detections_match_eager(exported, dynamic):
    model, predictors = exported
    eager_results = model.predict(images())
    assert all(len(result.scores) == 20 for result in eager_results), "a weak test otherwise"
    assert all(result.masks.any() for result in eager_results)
    assert_same_detections(eager_results, predictors[dynamic].predict(images()))


def test_predictor_postprocess_needs_no_weights(exported):
    model, predictors = exported
    predictor = predictors[True]
    assert predictor.metadata.model_name == "yolact_r18"
    assert predictor.config == model.config
    assert all(parameter.is_meta for parameter in predictor.model.parameters())
    assert predictor.model.pixel_mean.is_meta


def test_no_detections(exported, tmp_path):
    model, _ = exported
    batch, _ = model.preprocess(images())
    with torch.no_grad():
        best = model(batch).class_logits.softmax(dim=-1)[..., 1:].max().item()
    strict = tiny_yolact(score_thresh=best + 1e-3)
    predictor = load_onnx(export_onnx(strict, tmp_path / "strict.onnx"), 1)
    eager_results = strict.predict(images()[:1])
    assert len(eager_results[0].scores) == 0
    onnx_results = predictor.predict(images()[:1])
    assert_same_detections(eager_results, onnx_results)
    assert onnx_results[0].masks.shape == (0, *IMAGE_SIZES[0])


def test_cli_export_predict_eval_round_trip(tmp_path, capsys):
    """``pansight export`` of a YOLACT checkpoint, then ``predict`` and ``eval`` with the .pt and
    with the .onnx: the same detections (labels, scores, boxes, masks) and the same mask AP."""
    data = DataConfig(mode="multi", num_train=4, num_val=4, image_size=48)
    dataset = build_dataset(data, "val", "instance")
    model = tiny_yolact(list(dataset.class_names), detections_per_img=10)
    train_config = TrainConfig(task="instance", model="yolact_r18", data=data)
    payload = model_payload(
        model, model_name="yolact_r18", train_config=train_config, data_set=dataset, metrics={}
    )
    save_checkpoint(tmp_path / "model.pt", payload)
    assert main(["export", str(tmp_path / "model.pt"), "--dynamic"]) == 0
    assert f"wrote {tmp_path / 'model.onnx'}" in capsys.readouterr().out
    for index in range(2):
        write_image(dataset[index][0], tmp_path / "images" / f"img{index}.png")
    folders = [tmp_path / "model_pt", tmp_path / "model_onnx"]
    for source, out in zip((tmp_path / "model.pt", tmp_path / "model.onnx"), folders):
        assert main(["predict", str(source), str(tmp_path / "images"), "--out", str(out)]) == 0
        assert main(["eval", str(source), "--out", str(out / "metrics.json")]) == 0
    eager, ours = (json.loads((folder / "results.json").read_text()) for folder in folders)
    assert ours["task"] == "instance" and len(ours["images"]) == 2
    for eager_image, onnx_image in zip(eager["images"], ours["images"]):
        assert len(eager_image["result"]) == 10, "a weak test otherwise"
        assert len(onnx_image["result"]) == len(eager_image["result"])
        for expected, got in zip(eager_image["result"], onnx_image["result"]):
            assert got["class_name"] == expected["class_name"]
            assert got["score"] == pytest.approx(expected["score"], abs=1e-3)
            assert got["bbox"] == pytest.approx(expected["bbox"], abs=1e-3)
            assert got["segmentation"] == expected["segmentation"]
    eager_metrics, onnx_metrics = (
        json.loads((folder / "metrics.json").read_text()) for folder in folders
    )
    assert onnx_metrics["mask_AP"] == pytest.approx(eager_metrics["mask_AP"], abs=1e-3)
