"""A file saved by the original YOLACT code goes wherever a pansight checkpoint goes: ``pansight
predict``, ``eval``, ``export`` and ``serve`` read it through ``pansight.load`` (its keys as
in ../shared/reference/yolact_resnet50_checkpoint_keys.tsv, five classes instead of COCO's 80
so that it evaluates on the synthetic world written as COCO)."""

import json
from pathlib import Path

import pytest
import torch
from checkpoint_layouts import random_state_dict, reference_keys
from starlette.testclient import TestClient

import pansight
from pansight.cli import main
from pansight.data.images import write_image
from pansight.data.shapes import THING_CLASSES, ShapesDataset
from pansight.data.shapes_coco import write_coco
from pansight.errors import CheckpointError
from pansight.models.yolact import Yolact
from pansight.serve import create_app
from pansight.serve.encoding import encode_png
from pansight.serve.registry import load_registry

LAYOUT = Path(__file__).parent / "data" / "yolact_resnet50_checkpoint_keys.tsv"
CLASSES = [f"class_{label}" for label in range(1, len(THING_CLASSES) + 1)]
ANCHORS_PER_LOCATION = 3


@pytest.fixture(scope="module")
def original_file(tmp_path_factory) -> Path:
    """An original YOLACT-R50 file with five object classes (random weights)."""
    keys = reference_keys(LAYOUT)
    for key, shape in keys.items():
        if "conf_layer" in key:
            keys[key] = (ANCHORS_PER_LOCATION * (len(CLASSES) + 1), *shape[1:])
        if key.startswith("semantic_seg_conv"):
            keys[key] = (len(CLASSES), *shape[1:])
    path = tmp_path_factory.mktemp("original") / "yolact_resnet50_54_800000.pth"
    torch.save(random_state_dict(keys), path)
    return path


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    """Two validation scenes of the synthetic world as COCO, categories named as the file's."""
    root = tmp_path_factory.mktemp("coco")
    write_coco(ShapesDataset(split="val", mode="multi", num_images=2, image_size=64), root, "val")
    annotations = root / "annotations" / "instances_val.json"
    contents = json.loads(annotations.read_text())
    for category, name in zip(contents["categories"], CLASSES):
        category["name"] = name
    annotations.write_text(json.dumps(contents))
    return root


def test_load_reads_the_original_file(original_file):
    model = pansight.load(original_file)
    assert isinstance(model, Yolact) and model.config.backbone == "resnet50"
    assert model.class_names == CLASSES and not model.training


def test_predict_and_eval_take_the_original_file(original_file, coco_root, tmp_path):
    image = tmp_path / "scene.png"
    write_image(ShapesDataset(split="val", mode="multi", num_images=1, image_size=64)[0][0], image)
    assert main(["predict", str(original_file), str(image), "--out", str(tmp_path / "pred")]) == 0
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    assert results["task"] == "instance" and len(results["images"]) == 1
    data = ["data=coco", f"data.root={coco_root}"]
    out = tmp_path / "metrics.json"
    assert main(["eval", str(original_file), *data, "--out", str(out)]) == 0
    assert {"box_AP", "mask_AP"} <= set(json.loads(out.read_text()))


def test_export_takes_the_original_file(original_file, tmp_path):
    onnx_path = tmp_path / "yolact.onnx"
    assert main(["export", str(original_file), "--out", str(onnx_path)]) == 0
    predictor = pansight.load(onnx_path)
    assert predictor.class_names == CLASSES
    assert predictor.metadata.model_name == "yolact_r50"
    image = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0))
    eager = pansight.load(original_file)
    batch, _ = eager.preprocess([image])
    expected = eager(batch).class_logits
    found = predictor(predictor.preprocess([image])[0]).class_logits
    torch.testing.assert_close(torch.as_tensor(found), expected, atol=1e-3, rtol=1e-3)


def test_serve_takes_the_original_file(original_file):
    image, _ = ShapesDataset(split="val", mode="multi", num_images=1, image_size=64)[0]
    with TestClient(create_app(load_registry([original_file]))) as client:
        models = client.get("/api/models").json()
        response = client.post(
            "/api/predict?model=yolact_resnet50_54_800000",
            content=encode_png(image),
            headers={"Content-Type": "image/png"},
        )
    assert [model["task"] for model in models["models"]] == ["instance"]
    assert response.status_code == 200, response.text
    assert "detections" in response.json()["result"]


@pytest.mark.parametrize(
    ("contents", "reason"),
    [
        ({"fc.weight": torch.zeros(2, 2)}, "neither a pansight checkpoint nor an ONNX export"),
        (b"not a torch file", "cannot read checkpoint"),
    ],
)
def test_a_file_that_holds_no_model_gets_one_error_naming_it(tmp_path, contents, reason):
    path = tmp_path / "weights.pth"
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    else:
        torch.save(contents, path)
    with pytest.raises(CheckpointError, match=f"{path}: {reason}"):
        pansight.load(path)
    with pytest.raises(CheckpointError, match="no such model file"):
        pansight.load(tmp_path / "absent.pth")
