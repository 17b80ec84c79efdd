"""ONNX export and the onnxruntime predictor: parity with the eager model, metadata, the command
line round trip, and the errors for models that do not export and files that are not ours."""

import dataclasses
import json

import onnx
import pytest
import torch

import pansight
from pansight.cli import main
from pansight.config import DataConfig, TrainConfig, to_dict
from pansight.data.factory import build_dataset
from pansight.data.images import write_image
from pansight.engine.checkpoint import model_payload, save_checkpoint
from pansight.errors import CheckpointError, ConfigError
from pansight.export import OnnxPredictor, export_onnx, load_onnx
from pansight.models.rcnn import FAMILY as RCNN_FAMILY
from pansight.models.rcnn.model import FasterRCNN, MaskRCNN
from pansight.models.zoo import build_model
from pansight.structures import Classification, Localization, SemanticMap

CLASSES = ["circle", "square", "triangle", "star"]
TINY = {
    "classifier_r18": {"input_size": 32},
    "localizer_r18": {"input_size": 32},
    "fcn8s_r18": {"input_size": 64},
}
IMAGE_SIZES = [(40, 50), (70, 33), (64, 64), (23, 90)]


def tiny_model(name, class_names=CLASSES):
    """A tiny random model whose every weight is non-zero (FCN-8s starts its skips at zero)."""
    torch.manual_seed(0)
    model = build_model(name, class_names, TINY[name]).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.05)
    return model


def images():
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, h, w, generator=generator) for h, w in IMAGE_SIZES]


@pytest.fixture(scope="module", params=list(TINY))
def exported(request, tmp_path_factory):
    """``(name, eager model, {dynamic: predictor})`` for each exportable tiny model."""
    name = request.param
    model = tiny_model(name)
    folder = tmp_path_factory.mktemp(name)
    predictors = {
        dynamic: load_onnx(export_onnx(model, folder / f"{dynamic}.onnx", dynamic=dynamic), 1)
        for dynamic in (False, True)
    }
    return name, model, predictors


@pytest.mark.parametrize("dynamic", [False, True])
def test_raw_outputs_match_eager(exported, dynamic):
    _, model, predictors = exported
    predictor = predictors[dynamic]
    assert predictor.batch_size == (None if dynamic else 1)
    batch, _ = model.preprocess(images())
    with torch.no_grad():
        eager = model(batch)
    ours = predictor(batch)
    assert type(ours) is type(eager)
    for name in predictor.spec.output_names:
        torch.testing.assert_close(getattr(ours, name), getattr(eager, name), atol=1e-3, rtol=0)


@pytest.mark.parametrize("dynamic", [False, True])
def test_results_match_eager(exported, dynamic):
    _, model, predictors = exported
    eager_results = model.predict(images())
    results = predictors[dynamic].predict(images())
    assert len(results) == len(IMAGE_SIZES)
    for eager, ours in zip(eager_results, results):
        assert type(ours) is type(eager)
        if isinstance(eager, Classification | Localization):
            assert ours.label == eager.label
            torch.testing.assert_close(ours.scores, eager.scores, atol=1e-3, rtol=0)
        if isinstance(eager, Localization):
            torch.testing.assert_close(ours.box, eager.box, atol=1e-3, rtol=0)
        if isinstance(eager, SemanticMap):
            assert eager.labels.unique().numel() > 1, "a one-class map would prove nothing"
            assert ours.labels.shape == eager.labels.shape
            assert (ours.labels == eager.labels).float().mean() >= 0.995


def test_metadata_rebuilds_the_predictor(exported):
    name, model, predictors = exported
    predictor = predictors[True]
    assert predictor.metadata.model_name == name
    assert (predictor.task, predictor.class_names) == (model.task, model.class_names)
    assert predictor.config == model.config
    assert predictor.model.pixel_mean.is_meta, "the predictor keeps no eager weights"
    props = {prop.key for prop in onnx.load(predictor.path).metadata_props}
    assert {"pansight.format", "pansight.model_config", "pansight.class_names"} <= props


def test_a_graph_refuses_images_of_another_size(exported):
    _, model, predictors = exported
    batch, _ = model.preprocess(images()[:1])
    batch = dataclasses.replace(batch, tensor=torch.nn.functional.pad(batch.tensor, (0, 32, 0, 32)))
    with pytest.raises(ConfigError, match="export the model again"):
        predictors[True](batch)


def test_unsupported_model_names_itself(tmp_path, monkeypatch):
    monkeypatch.delitem(RCNN_FAMILY.export, FasterRCNN)
    model = build_model("faster_rcnn_r18_fpn", CLASSES)
    with pytest.raises(ConfigError, match="faster_rcnn_r18_fpn.*not supported yet"):
        export_onnx(model, tmp_path / "rcnn.onnx")
    assert not (tmp_path / "rcnn.onnx").exists()


def test_onnx_file_that_is_not_ours_names_the_file(tmp_path):
    identity = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [identity],
        "foreign",
        [value("x", onnx.TensorProto.FLOAT, [1])],
        [value("y", onnx.TensorProto.FLOAT, [1])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph), foreign)
    with pytest.raises(CheckpointError, match="foreign.onnx: not a pansight ONNX file"):
        pansight.load(foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    with pytest.raises(CheckpointError, match="garbage.onnx: cannot read the ONNX file"):
        OnnxPredictor(garbage)
    with pytest.raises(CheckpointError, match="missing.onnx: no such ONNX file"):
        OnnxPredictor(tmp_path / "missing.onnx")


def write_checkpoint(name, task, data, path):
    """A random-weight checkpoint of tiny model ``name`` for the classes of ``data``."""
    dataset = build_dataset(data, "val", task)
    model = tiny_model(name, list(dataset.class_names))
    train_config = TrainConfig(task=task, model=name, data=data)
    payload = model_payload(
        model, model_name=name, train_config=train_config, data_set=dataset, metrics={}
    )
    save_checkpoint(path, payload)
    return dataset


@pytest.mark.parametrize(
    ("name", "task", "mode", "metric"),
    [("classifier_r18", "classify", "single", "top1"), ("fcn8s_r18", "semantic", "multi", "mIoU")],
)
def test_cli_export_predict_eval_round_trip(name, task, mode, metric, tmp_path, capsys):
    data = DataConfig(mode=mode, num_train=4, num_val=6, image_size=48)
    dataset = write_checkpoint(name, task, data, tmp_path / "model.pt")
    assert main(["export", str(tmp_path / "model.pt"), "--format", "onnx", "--dynamic"]) == 0
    assert f"wrote {tmp_path / 'model.onnx'}" in capsys.readouterr().out
    for index in range(2):
        write_image(dataset[index][0], tmp_path / "images" / f"img{index}.png")

    for source in ("model.pt", "model.onnx"):
        out = tmp_path / source.replace(".", "_")
        argv = ["predict", str(tmp_path / source), str(tmp_path / "images"), "--out", str(out)]
        assert main(argv + (["--channels"] if task == "semantic" else [])) == 0
        argv = ["eval", str(tmp_path / source), "--out", str(out / "metrics.json")]
        assert main(argv) == 0
    eager, ours = (tmp_path / "model_pt", tmp_path / "model_onnx")
    results = [json.loads((folder / "results.json").read_text()) for folder in (eager, ours)]
    assert results[1]["task"] == task and len(results[1]["images"]) == 2
    for eager_image, onnx_image in zip(results[0]["images"], results[1]["images"]):
        if task == "classify":
            assert onnx_image["result"]["class_name"] == eager_image["result"]["class_name"]
            score = onnx_image["result"]["score"]
            assert score == pytest.approx(eager_image["result"]["score"], abs=1e-3)
    if task == "semantic":
        assert len(list(ours.glob("*_channels.png"))) == 2
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (eager, ours)]
    assert metrics[1][metric] == pytest.approx(metrics[0][metric], abs=1e-3)


def test_cli_export_of_an_unsupported_model_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(RCNN_FAMILY.export, MaskRCNN)
    model = build_model("mask_rcnn_r18_fpn", CLASSES)
    payload = {"model_name": "mask_rcnn_r18_fpn", "task": "instance"}
    payload |= {"model_config": to_dict(model.config), "class_names": CLASSES}
    save_checkpoint(tmp_path / "rcnn.pt", {**payload, "state_dict": model.state_dict()})
    assert main(["export", str(tmp_path / "rcnn.pt")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ONNX export of mask_rcnn_r18_fpn (MaskRCNN) is not supported")
    assert "\n" not in error and not (tmp_path / "rcnn.onnx").exists()
    assert main(["export", str(tmp_path / "rcnn.pt"), "--out", str(tmp_path / "rcnn.pt")]) == 2
    assert "would replace the checkpoint" in capsys.readouterr().err
