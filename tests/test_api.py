"""How ``pansight.train`` settles its settings: task defaults, then the model's, then the
caller's overrides."""

import pytest

from pansight.api import make_train_config
from pansight.errors import ConfigError


def test_task_defaults_apply_to_the_default_model():
    config, model_overrides = make_train_config("instance", {"model.min_size": 96})
    assert config.model == "mask_rcnn_r18_fpn"
    assert (config.optimizer, config.lr, config.batch_size) == ("adamw", 1e-3, 4)
    assert model_overrides == {"min_size": 96}


def test_model_defaults_override_the_task_defaults():
    config, _ = make_train_config("instance", {"model": "yolact_r18"})
    assert (config.optimizer, config.lr, config.amp) == ("adamw", 3e-3, "auto")
    assert config.batch_size == 8
    assert config.data.mode == "multi"  # still the task's


def test_caller_overrides_win_over_model_defaults():
    config, _ = make_train_config("instance", {"model": "yolact_r18", "lr": "0.01", "amp": "no"})
    assert (config.optimizer, config.lr, config.amp) == ("adamw", 0.01, "false")


def test_unknown_task_is_refused():
    with pytest.raises(ConfigError, match="task 'depth' is unknown"):
        make_train_config("depth", {})
