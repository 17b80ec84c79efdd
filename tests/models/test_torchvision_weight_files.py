"""torchvision Faster/Mask R-CNN weight files: the key names of downloaded files, errors that
name the key, the layout and COCO names read from the keys, and the files loaded through
``import_foreign_weights``, ``predict`` and ``eval``."""

import dataclasses
import json

import pytest
import torch
import torchvision
from torchvision.models.detection import (
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)

from pansight.cli import main
from pansight.data.images import write_image
from pansight.errors import CheckpointError, ConfigError
from pansight.models import zoo
from pansight.models.foreign import import_foreign_weights
from pansight.models.rcnn import FAMILY as RCNN_FAMILY
from pansight.models.rcnn.model import FasterRCNN, MaskRCNN, RCNNConfig
from pansight.models.rcnn.torchvision_import import coco_class_names, import_torchvision_rcnn

NUM_CLASSES = 5
SIZES = {"min_size": 128, "max_size": 192, "rpn_post_nms_top_n_test": 100}
CLASS_NAMES = [f"class{i}" for i in range(NUM_CLASSES)]


def _images(sizes):
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, height, width, generator=generator) for height, width in sizes]


def test_import_reads_the_older_key_names_of_downloaded_files():
    """torchvision's downloadable v1 files name the RPN conv ``rpn.head.conv`` and the mask
    convs ``mask_head.mask_fcn1..4``."""
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=6)
    renamed = {}
    for key, value in reference.state_dict().items():
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for index in range(4):
            key = key.replace(f"mask_head.{index}.0.", f"mask_head.mask_fcn{index + 1}.")
        renamed[key] = value
    assert "roi_heads.mask_head.mask_fcn4.weight" in renamed
    model = MaskRCNN(RCNNConfig(backbone="resnet50"), CLASS_NAMES)
    import_torchvision_rcnn(model, renamed)
    assert torch.equal(model.rpn_head.conv.weight, renamed["rpn.head.conv.weight"])
    assert torch.equal(model.mask_head.convs[3].bias, renamed["roi_heads.mask_head.mask_fcn4.bias"])


def test_import_names_the_bad_key():
    model = FasterRCNN(RCNNConfig(with_masks=False), CLASS_NAMES)
    state = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1
    ).state_dict()
    with pytest.raises(CheckpointError, match="backbone.body"):
        import_torchvision_rcnn(model, state)
    own = {
        f"backbone.body.{k[5:]}" if k.startswith("body.") else k: v
        for k, v in model.state_dict().items()
    }
    with pytest.raises(CheckpointError, match="no weight for 'fpn.inner_blocks.0.0.weight'"):
        import_torchvision_rcnn(model, {k: v for k, v in own.items() if k.startswith("backbone")})


def test_v2_weights_do_not_fit_a_v1_model():
    state = fasterrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1
    ).state_dict()
    model = FasterRCNN(RCNNConfig(backbone="resnet50", with_masks=False), CLASS_NAMES)
    with pytest.raises(CheckpointError, match="'backbone.fpn.inner_blocks.0.1.weight' has no"):
        import_torchvision_rcnn(model, state)


def test_import_torchvision_builds_the_layout_with_coco_names():
    """A 91-logit v2 Mask R-CNN state dict becomes ``mask_rcnn_r50_fpn_v2`` with torchvision's
    90 COCO names; pansight label ``k`` is torchvision label ``k + 1``."""
    reference = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None)
    state = reference.state_dict()
    model = import_foreign_weights(state, overrides={"score_thresh": "0.2"})
    assert isinstance(model, MaskRCNN) and not model.training
    assert (
        model.config
        == zoo.build_model("mask_rcnn_r50_fpn_v2", ["a"], {"score_thresh": "0.2"}).config
    )
    names = model.class_names
    assert len(names) == 90 and names[0] == "person" and names[89] == "toothbrush"
    assert names.count("N/A") == 10 and names == coco_class_names()
    assert torch.equal(model.box_head.fc.weight, state["roi_heads.box_head.5.weight"])
    assert torch.equal(
        model.box_head.norms[3].running_var, state["roi_heads.box_head.3.1.running_var"]
    )
    assert torch.equal(model.rpn_head.extra_convs[0].weight, state["rpn.head.conv.1.0.weight"])


def test_import_torchvision_names_the_problem():
    state = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1
    ).state_dict()
    model = import_foreign_weights(state)
    assert model.class_names == [f"class_{label}" for label in range(1, NUM_CLASSES + 1)]
    with pytest.raises(CheckpointError, match="'roi_heads.box_predictor.cls_score.weight' has"):
        import_foreign_weights(state, class_names=["only", "three", "names"])
    with pytest.raises(CheckpointError, match="'rpn.head.conv.0.0.weight' has shape"):
        import_foreign_weights({**state, "rpn.head.conv.0.0.weight": torch.zeros(256, 256, 1, 1)})
    with pytest.raises(
        ConfigError, match="'classifier_r18' cannot take torchvision Faster/Mask R-CNN weights"
    ):
        import_foreign_weights(state, name="classifier_r18")
    with pytest.raises(CheckpointError, match="not a state dict pansight imports"):
        import_foreign_weights(torchvision.models.resnet18(weights=None).state_dict())


@pytest.fixture
def small_faster_rcnn(monkeypatch):
    """``faster_rcnn_r50_fpn`` sized for 128-pixel images, so a CLI run stays fast."""
    entry = zoo.MODELS["faster_rcnn_r50_fpn"]
    small = {**entry.defaults, **SIZES, "rpn_pre_nms_top_n_test": 200}
    monkeypatch.setitem(
        RCNN_FAMILY.models, "faster_rcnn_r50_fpn", dataclasses.replace(entry, defaults=small)
    )


def _confident_torchvision_weights():
    """A COCO-sized torchvision Faster R-CNN whose box branch calls every proposal a person."""
    reference = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    with torch.no_grad():
        predictor = reference.roi_heads.box_predictor
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.zero_()
        predictor.cls_score.bias[1] = 10.0
        predictor.bbox_pred.weight.zero_()
    return reference.state_dict()


def test_predict_runs_a_torchvision_weights_file(small_faster_rcnn, tmp_path):
    weights = tmp_path / "fasterrcnn.pth"
    torch.save(_confident_torchvision_weights(), weights)
    write_image(_images([(96, 128)])[0], tmp_path / "photo.png")
    out = tmp_path / "pred"
    assert main(["predict", str(weights), str(tmp_path / "photo.png"), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "detect"
    detections = results["images"][0]["result"]
    assert detections and {record["class_name"] for record in detections} == {"person"}
    for record in detections:
        left, top, width, height = record["bbox"]
        assert 0 <= left and 0 <= top and left + width <= 128 + 1e-3 and top + height <= 96 + 1e-3


def test_cli_names_the_key_of_a_misfit_torchvision_file(small_faster_rcnn, tmp_path, capsys):
    state = _confident_torchvision_weights()
    state["roi_heads.box_predictor.bbox_pred.weight"] = torch.zeros(4 * 50, 1024)
    weights = tmp_path / "misfit.pth"
    torch.save(state, weights)
    write_image(_images([(96, 128)])[0], tmp_path / "photo.png")
    assert main(["predict", str(weights), str(tmp_path / "photo.png")]) == 2
    error = capsys.readouterr().err
    assert "misfit.pth" in error and "'roi_heads.box_predictor.bbox_pred.weight'" in error


def test_eval_accepts_a_torchvision_weights_file(small_faster_rcnn, tmp_path, capsys):
    """The file loads; the synthetic world's classes are not COCO's, which eval reports."""
    weights = tmp_path / "fasterrcnn.pth"
    torch.save(_confident_torchvision_weights(), weights)
    assert main(["eval", str(weights), "data.num_val=2"]) == 2
    assert "the model was trained on ['person'" in capsys.readouterr().err
