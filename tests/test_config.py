import dataclasses

import pytest

from pansight.config import (
    DataConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_yaml,
    parse_key_values,
    save_yaml,
    to_dict,
)
from pansight.errors import ConfigError


def test_overrides_parse_by_field_type():
    config = apply_overrides(
        TrainConfig(),
        parse_key_values(["lr=0.5", "epochs=3", "amp=yes", "step_milestones=0.5,0.75", "out=x"]),
    )
    assert config.lr == 0.5 and config.epochs == 3 and config.amp == "true"
    assert config.step_milestones == (0.5, 0.75) and config.out == "x"


def test_nested_keys_and_name_shortcut():
    config = apply_overrides(TrainConfig(), {"data": "digits", "data.val_fraction": "0.3"})
    assert config.data == dataclasses.replace(DataConfig(), name="digits", val_fraction=0.3)
    assert TrainConfig().data.name == "shapes"  # the default is untouched


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"learning_rate": "1"}, "unknown key 'learning_rate'"),
        ({"data.size": "1"}, "unknown key 'data.size'"),
        ({"lr.x": "1"}, "'lr' has no sub-keys"),
        ({"epochs": "many"}, "epochs='many' is not a valid int"),
        ({"amp": "maybe"}, "amp='maybe' is unknown; choose one of auto, true, false"),
        ({"optimizer": "lion"}, "optimizer='lion' is unknown"),
        ({"task": "dance"}, "task='dance' is unknown"),
        ({"batch_size": "0"}, "batch_size must be >= 1"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(TrainConfig(), overrides)


def test_key_value_syntax_error():
    with pytest.raises(ConfigError, match="'lr' is not key=value"):
        parse_key_values(["lr"])


def test_dict_and_yaml_round_trip(tmp_path):
    config = apply_overrides(TrainConfig(), {"data.name": "digits", "step_milestones": "0.2"})
    assert from_dict(TrainConfig, to_dict(config)) == config
    save_yaml(config, tmp_path / "config.yaml")
    assert load_yaml(TrainConfig, tmp_path / "config.yaml") == config


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_yaml(TrainConfig, bad)
