"""The training loop: exact resume after SIGKILL, NaN stops, run-folder contents, AMP, clipping."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_training import CLASS_NAMES, RandomImages, build_tiny, tiny_train_config

from pansight.config import TrainConfig, load_yaml
from pansight.engine.checkpoint import load_checkpoint
from pansight.engine.trainer import Trainer
from pansight.errors import CheckpointError, ConfigError, TrainingError

SCRIPT = Path(__file__).with_name("tiny_training.py")


def train(config: TrainConfig, evaluate=None, **model_changes: int):
    model = build_tiny(config, **model_changes)
    trainer = Trainer(config, model, RandomImages(), model_name="tiny", evaluate=evaluate)
    return trainer, trainer.fit()


def test_killed_run_resumes_to_bit_identical_weights(tmp_path: Path) -> None:
    # 20 iterations of 5 batches per epoch; checkpoints at 4, 8, 12, 16.
    uninterrupted, _ = train(tiny_train_config(tmp_path / "a"))

    # The same run, SIGKILLed during iteration 11: its last checkpoint is from iteration 8,
    # in the middle of epoch 1, so resuming must skip the 3 batches of epoch 1 already done.
    # The same thread count as this process, so both compute in the same order.
    environment = os.environ | {"OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "b"), "--kill-at", "11"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(tmp_path / "b" / "last.pt")["trainer"]["iteration"] == 8
    assert not (tmp_path / "b" / "model.pt").exists()
    assert not [p.name for p in (tmp_path / "b").iterdir() if p.name.endswith(".tmp")]

    config = tiny_train_config(tmp_path / "b", resume=str(tmp_path / "b" / "last.pt"))
    resumed, _ = train(config)

    assert resumed.iteration == uninterrupted.iteration == 20
    expected = uninterrupted.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    # The file users get holds the same weights.
    saved = load_checkpoint(tmp_path / "b" / "model.pt")["state_dict"]
    assert all(torch.equal(saved[name], value) for name, value in expected.items())


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    config = tiny_train_config(tmp_path, checkpoint_every=5)
    last = tmp_path / "last.pt"
    with pytest.raises(TrainingError, match="iteration 7: loss 'loss_cls' is nan") as error:
        train(config, nan_at=7)
    assert str(last) in str(error.value)

    checkpoint = load_checkpoint(last)
    assert checkpoint["trainer"]["iteration"] == 5
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    assert not (tmp_path / "model.pt").exists()


def test_run_folder_holds_config_logs_and_checkpoints(tmp_path: Path) -> None:
    config = tiny_train_config(tmp_path, epochs=2)
    trainer, metrics = train(
        config, evaluate=lambda model: {"top1": 0.0 if model.training else 0.5}
    )

    assert trainer.total_iters == 10
    assert load_yaml(TrainConfig, tmp_path / "config.yaml") == config
    assert metrics["top1"] == 0.5  # the hook saw the model in eval mode
    assert set(metrics) == {"top1", "loss", "loss_cls", "loss_small"}

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_lines, eval_lines = lines[:-1], lines[-1]
    assert [line["iter"] for line in train_lines] == [5, 10]
    assert [line["epoch"] for line in train_lines] == [0, 1]
    for line in train_lines:
        assert {"lr", "loss", "loss_cls", "loss_small", "images_per_s"} <= set(line)
        assert line["loss"] == pytest.approx(line["loss_cls"] + line["loss_small"])
    assert eval_lines == {"iter": 10, "epoch": 1, "eval/top1": 0.5}
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))

    model_file = load_checkpoint(tmp_path / "model.pt")
    assert "trainer" not in model_file
    assert model_file["model_name"] == "tiny" and model_file["task"] == "classify"
    assert model_file["model_config"] == dataclasses.asdict(trainer.model.config)
    assert model_file["train_config"]["epochs"] == 2
    assert model_file["class_names"] == CLASS_NAMES
    assert model_file["category_ids"] == [10, 20, 30]
    assert model_file["semantic_class_names"] is None
    assert model_file["metrics"] == metrics
    assert load_checkpoint(tmp_path / "last.pt")["trainer"]["iteration"] == 10


def test_max_iters_caps_the_run(tmp_path: Path) -> None:
    trainer, _ = train(tiny_train_config(tmp_path, max_iters=7))
    assert trainer.iteration == trainer.total_iters == 7
    assert load_checkpoint(tmp_path / "last.pt")["trainer"]["iteration"] == 7


def test_resume_needs_a_training_checkpoint_of_the_same_model(tmp_path: Path) -> None:
    train(tiny_train_config(tmp_path / "a", max_iters=2))
    with pytest.raises(CheckpointError, match="model.pt: has no training state"):
        train(tiny_train_config(tmp_path / "b", resume=str(tmp_path / "a" / "model.pt")))

    config = tiny_train_config(tmp_path / "c", resume=str(tmp_path / "a" / "last.pt"))
    model = build_tiny(config)
    with pytest.raises(CheckpointError, match="holds model 'tiny', not 'other'"):
        Trainer(config, model, RandomImages(), model_name="other").fit()


def autocast_dtypes_seen(config: TrainConfig, channels_last: bool = False) -> list[torch.dtype]:
    """The dtype of the final layer's output in each step of a run of ``config``; asserts
    whether the convolution's weights and inputs were channels-last."""
    model = build_tiny(config)
    seen_dtypes = []
    model.fc.register_forward_hook(lambda module, inputs, output: seen_dtypes.append(output.dtype))
    layouts = []
    model.conv.register_forward_pre_hook(
        lambda module, inputs: layouts.append(
            inputs[0].is_contiguous(memory_format=torch.channels_last)
            and module.weight.is_contiguous(memory_format=torch.channels_last)
        )
    )
    metrics = Trainer(config, model, RandomImages(), model_name="tiny").fit()
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert layouts == [channels_last] * len(layouts)
    return seen_dtypes


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_takes_bfloat16_only_where_the_cpu_runs_it_natively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    monkeypatch.setattr("pansight.hardware.native_bf16", lambda: native)
    config = tiny_train_config(tmp_path, max_iters=3)
    assert config.amp == "auto"
    expected = torch.bfloat16 if native else torch.float32
    assert autocast_dtypes_seen(config, channels_last=native) == [expected] * 3
    noted = (tmp_path / "config.yaml").read_text().splitlines()[-1]
    assert noted.startswith(f"# precision: {str(expected).removeprefix('torch.')} (amp=auto")
    assert load_yaml(TrainConfig, tmp_path / "config.yaml") == config


def test_amp_true_without_native_bfloat16_warns_and_obeys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pansight.hardware.native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="many times slower than float32"):
        seen = autocast_dtypes_seen(tiny_train_config(tmp_path / "true", amp=True, max_iters=2))
    assert seen == [torch.bfloat16] * 2
    assert (
        autocast_dtypes_seen(tiny_train_config(tmp_path / "off", amp="off", max_iters=2))
        == [torch.float32] * 2
    )


def test_gradient_clipping_bounds_the_step(tmp_path: Path) -> None:
    # Plain SGD, constant rate 1, no warm-up or decay: one step moves the weights by exactly
    # the clipped gradient, whose norm is clip_grad.
    config = tiny_train_config(
        tmp_path,
        max_iters=1,
        lr=1.0,
        momentum=0.0,
        weight_decay=0.0,
        warmup_iters=0,
        schedule="constant",
        clip_grad=1e-3,
    )
    model = build_tiny(config)
    before = [p.detach().clone() for p in model.parameters()]
    Trainer(config, model, RandomImages(), model_name="tiny").fit()
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert step.norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_frozen_modules_keep_their_weights_and_norm_statistics(tmp_path: Path) -> None:
    config = tiny_train_config(tmp_path / "a", max_iters=4, freeze=("conv", "norm"))
    model = build_tiny(config)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    Trainer(config, model, RandomImages(), model_name="tiny").fit()
    after = model.state_dict()
    for key in before:
        unchanged = torch.equal(before[key], after[key])
        assert unchanged == key.startswith(("conv.", "norm.")) or key.endswith("tracked"), key
    with pytest.raises(ConfigError, match="freeze='head' names no module; top-level modules: "):
        train(tiny_train_config(tmp_path / "b", freeze="head"))
