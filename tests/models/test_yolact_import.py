"""State dicts with exactly the keys and shapes of the original YOLACT's ResNet-50 and ResNet-101
("base") checkpoints load strictly and evaluate; a missing, unexpected or misshaped weight is
named in the error.

The key lists in ``data/`` are the layouts of the original's released files (key, shape).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from checkpoint_layouts import random_state_dict, reference_keys

from pansight.errors import CheckpointError
from pansight.models.foreign import import_foreign_weights
from pansight.models.yolact.model import Yolact
from pansight.models.yolact.original_import import (
    coco_80_class_names,
    import_original_yolact,
    original_layout,
    original_to_pansight_key,
    pansight_to_original_key,
)
from pansight.models.zoo import build_model
from pansight.structures import Detections

DATA = Path(__file__).parent / "data"
LAYOUTS = {
    "resnet50": DATA / "yolact_resnet50_checkpoint_keys.tsv",
    "resnet101": DATA / "yolact_base_checkpoint_keys.tsv",
}
SMALL_INPUT = {"input_size": "96"}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def layout(request):
    keys = reference_keys(LAYOUTS[request.param])
    return request.param, keys, random_state_dict(keys)


def test_reference_layout_is_read_as_expected(layout):
    backbone, keys, state_dict = layout
    assert keys["prediction_layers.0.conf_layer.weight"] == (243, 256, 3, 3)
    assert original_layout(state_dict) == (backbone, 80)


def test_strict_load_and_eval(layout):
    backbone, keys, state_dict = layout
    model = import_foreign_weights(state_dict, overrides=SMALL_INPUT)
    assert isinstance(model, Yolact) and model.config.backbone == backbone
    assert model.class_names == coco_80_class_names() and len(model.class_names) == 80
    own = model.state_dict()
    assert len(own) == len(keys)
    for key, value in state_dict.items():
        assert torch.equal(own[original_to_pansight_key(key)], value), key
    image = torch.rand(3, 60, 90, generator=torch.Generator().manual_seed(1))
    (result,) = model.predict([image])
    assert isinstance(result, Detections)
    assert result.masks is not None and result.masks.shape[1:] == (60, 90)
    assert len(result) <= model.config.detections_per_img


def test_key_names_map_both_ways(layout):
    _, keys, _ = layout
    for key in keys:
        assert pansight_to_original_key(original_to_pansight_key(key)) == key
    assert (
        original_to_pansight_key("backbone.layers.3.2.conv3.weight") == "body.layer4.2.conv3.weight"
    )
    assert (
        original_to_pansight_key("prediction_layers.0.upfeature.0.bias") == "head.upfeature.0.bias"
    )


def test_load_from_file(layout, tmp_path):
    _, _, state_dict = layout
    path = tmp_path / "yolact.pth"
    torch.save(state_dict, path)
    model = import_foreign_weights(
        path, class_names=[f"c{i}" for i in range(80)], overrides=SMALL_INPUT
    )
    assert model.class_names[0] == "c0" and not model.training


def build_for(backbone: str) -> Yolact:

    name = {"resnet50": "yolact_r50", "resnet101": "yolact_r101"}[backbone]
    return build_model(name, coco_80_class_names(), SMALL_INPUT)


def test_missing_key_is_named(layout):
    backbone, _, state_dict = layout
    broken = {k: v for k, v in state_dict.items() if k != "fpn.downsample_layers.1.bias"}
    with pytest.raises(CheckpointError, match=r"no weight 'fpn\.downsample_layers\.1\.bias'"):
        import_original_yolact(build_for(backbone), broken)
    broken = {k: v for k, v in state_dict.items() if k != "backbone.layers.2.5.bn2.running_mean"}
    with pytest.raises(CheckpointError, match=r"'backbone\.layers\.2\.5\.bn2\.running_mean'"):
        import_original_yolact(build_for(backbone), broken)


def test_misshaped_and_unexpected_keys_are_named(layout):
    backbone, _, state_dict = layout
    broken = dict(state_dict)
    broken["prediction_layers.0.mask_layer.weight"] = torch.zeros(64, 256, 3, 3)
    with pytest.raises(
        CheckpointError, match=r"'prediction_layers\.0\.mask_layer\.weight' has shape"
    ):
        import_original_yolact(build_for(backbone), broken)
    broken = dict(state_dict) | {
        "prediction_layers.1.bbox_layer.weight": torch.zeros(12, 256, 3, 3)
    }
    with pytest.raises(CheckpointError, match=r"'prediction_layers\.1\.bbox_layer\.weight' has no"):
        import_original_yolact(build_for(backbone), broken)


def test_other_class_count_fails_naming_the_conf_layer(layout):
    backbone, _, state_dict = layout

    name = {"resnet50": "yolact_r50", "resnet101": "yolact_r101"}[backbone]
    model = build_model(name, ["one", "two"], SMALL_INPUT)
    with pytest.raises(CheckpointError, match=r"conf_layer\.weight' has shape \(243, 256, 3, 3\)"):
        import_original_yolact(model, state_dict)


def test_not_a_yolact_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not an original YOLACT state dict"):
        original_layout(torch.load(path))
    with pytest.raises(CheckpointError, match="other.pth: not a state dict pansight imports"):
        import_foreign_weights(path)
    with pytest.raises(CheckpointError, match="not found"):
        import_foreign_weights(tmp_path / "missing.pth")
