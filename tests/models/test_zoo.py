"""The model zoo: names, overrides, torchvision weights and rebuilding from checkpoints."""

from __future__ import annotations

import pytest
import torch
import torchvision

import pansight
from pansight.config import to_dict
from pansight.errors import CheckpointError, ConfigError
from pansight.models import zoo
from pansight.models.classification.classifier import Classifier, ClassifierConfig
from pansight.models.classification.localizer import Localizer

CLASS_NAMES = ["a", "b", "c"]
REQUIRED = {
    "classifier_r18": "resnet18",
    "classifier_r34": "resnet34",
    "classifier_r50": "resnet50",
    "classifier_r101": "resnet101",
    "localizer_r18": "resnet18",
    "localizer_r34": "resnet34",
    "localizer_r50": "resnet50",
}


def payload_of(model, name: str) -> dict:
    return {
        "model_name": name,
        "task": model.task,
        "model_config": to_dict(model.config),
        "class_names": list(model.class_names),
        "state_dict": model.state_dict(),
    }


def test_zoo_has_the_first_two_rungs_with_their_backbones():
    for name, backbone in REQUIRED.items():
        entry = zoo.MODELS[name]
        assert entry.default_config().backbone == backbone
        assert entry.description
    assert zoo.models_for_task("classify") == [n for n in REQUIRED if n.startswith("classifier")]
    assert zoo.models_for_task("localize") == [n for n in REQUIRED if n.startswith("localizer")]


def test_models_for_task_rejects_an_unknown_task():
    with pytest.raises(ConfigError, match="task='count' is unknown"):
        zoo.models_for_task("count")


def test_build_model_applies_string_overrides():
    model = zoo.build_model(
        "localizer_r18", CLASS_NAMES, {"input_size": "48", "box_l1_weight": "2"}
    )
    assert isinstance(model, Localizer)
    assert model.config.input_size == 48 and model.config.box_l1_weight == 2.0
    assert model.class_names == CLASS_NAMES and model.task == "localize"


def test_build_model_rejects_an_unknown_override_key():
    with pytest.raises(ConfigError, match="unknown key 'depth'"):
        zoo.build_model("classifier_r18", CLASS_NAMES, {"depth": "3"})


def test_build_model_lists_the_models_of_the_task_for_an_unknown_name():
    with pytest.raises(ConfigError, match="choose one of .*localize: localizer_r18"):
        zoo.build_model("localizer_r9", CLASS_NAMES)
    with pytest.raises(ConfigError, match="not a classify model; choose one of classifier_r18"):
        zoo.build_model("localizer_r18", CLASS_NAMES, task="classify")


def test_build_model_imports_torchvision_weights(tmp_path):
    reference = torchvision.models.resnet18(weights=None, num_classes=len(CLASS_NAMES))
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = zoo.build_model("classifier_r18", CLASS_NAMES, {"torchvision_weights": str(path)})
    torch.testing.assert_close(model.body.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    torch.testing.assert_close(model.fc.weight, reference.fc.weight)


def test_build_model_warns_when_the_torchvision_head_does_not_fit(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.warns(UserWarning, match="fc.weight, fc.bias not imported"):
        model = zoo.build_model("localizer_r18", CLASS_NAMES, {"torchvision_weights": str(path)})
    assert model.fc.out_features == len(CLASS_NAMES)


def test_build_model_names_an_unreadable_weights_file(tmp_path):
    missing = tmp_path / "nothing.pth"
    with pytest.raises(CheckpointError, match="nothing.pth: torchvision weights file not found"):
        zoo.build_model("classifier_r18", CLASS_NAMES, {"torchvision_weights": str(missing)})
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="garbage.pth: cannot read torchvision weights"):
        zoo.build_model("classifier_r18", CLASS_NAMES, {"torchvision_weights": str(garbage)})


def test_model_from_checkpoint_rebuilds_config_names_and_weights():
    model = zoo.build_model("classifier_r18", CLASS_NAMES, {"input_size": "32", "dropout": "0.1"})
    rebuilt = zoo.model_from_checkpoint(payload_of(model, "classifier_r18"))
    assert isinstance(rebuilt, Classifier)
    assert rebuilt.config == ClassifierConfig(input_size=32, dropout=0.1)
    assert rebuilt.class_names == CLASS_NAMES
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value)


def test_model_from_checkpoint_does_not_read_torchvision_weights_again(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=3).state_dict(), path)
    model = zoo.build_model("classifier_r18", CLASS_NAMES, {"torchvision_weights": str(path)})
    path.unlink()
    rebuilt = zoo.model_from_checkpoint(payload_of(model, "classifier_r18"))
    assert torch.equal(rebuilt.fc.weight, model.fc.weight)


def test_model_from_checkpoint_names_the_problem():
    model = zoo.build_model("classifier_r18", CLASS_NAMES, {"input_size": "32"})
    payload = payload_of(model, "classifier_r18")
    with pytest.raises(CheckpointError, match="checkpoint model 'resnet_9000' is unknown"):
        zoo.model_from_checkpoint({**payload, "model_name": "resnet_9000"})
    with pytest.raises(CheckpointError, match="checkpoint has no 'state_dict'"):
        zoo.model_from_checkpoint({k: v for k, v in payload.items() if k != "state_dict"})
    with pytest.raises(CheckpointError, match="task 'localize' does not match"):
        zoo.model_from_checkpoint({**payload, "task": "localize"})
    with pytest.raises(CheckpointError, match="model_config does not fit classifier_r18"):
        zoo.model_from_checkpoint({**payload, "model_config": {"box_l1_weight": 1.0}})


def test_model_from_checkpoint_names_a_missing_or_misshaped_weight():
    model = zoo.build_model("classifier_r18", CLASS_NAMES, {"input_size": "32"})
    payload = payload_of(model, "classifier_r18")
    state_dict = dict(payload["state_dict"])
    del state_dict["body.layer1.0.bn1.bias"]
    with pytest.raises(CheckpointError, match="missing 'body.layer1.0.bn1.bias'"):
        zoo.model_from_checkpoint({**payload, "state_dict": state_dict})
    state_dict = {**payload["state_dict"], "head.extra": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="unexpected 'head.extra'"):
        zoo.model_from_checkpoint({**payload, "state_dict": state_dict})
    state_dict = {**payload["state_dict"], "fc.weight": torch.zeros(5, 512)}
    with pytest.raises(CheckpointError, match=r"'fc.weight' has shape \(5, 512\)"):
        zoo.model_from_checkpoint({**payload, "state_dict": state_dict})


def test_load_names_a_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="absent.pt"):
        pansight.load(tmp_path / "absent.pt")
