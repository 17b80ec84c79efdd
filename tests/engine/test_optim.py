"""Optimizer parameter groups and the learning-rate schedule, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pansight.config import TrainConfig
from pansight.engine.optim import build_optimizer, build_scheduler


def small_network() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def learning_rates(config: TrainConfig, total_iters: int, steps: int) -> list[float]:
    """The rate used at iterations ``0 .. steps - 1``."""
    optimizer = build_optimizer(small_network(), config)
    scheduler = build_scheduler(optimizer, config, total_iters)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_no_weight_decay_on_biases_and_norm_layers() -> None:
    network = small_network()
    config = TrainConfig(weight_decay=0.01, momentum=0.8)
    optimizer = build_optimizer(network, config)
    assert isinstance(optimizer, torch.optim.SGD)
    decay, no_decay = optimizer.param_groups
    conv, norm, _, linear = network
    assert decay["params"] == [conv.weight, linear.weight] and decay["weight_decay"] == 0.01
    assert no_decay["params"] == [conv.bias, norm.weight, norm.bias, linear.bias]
    assert no_decay["weight_decay"] == 0.0
    assert decay["momentum"] == 0.8


def test_adamw_and_frozen_parameters() -> None:
    network = small_network()
    network[0].requires_grad_(False)
    optimizer = build_optimizer(network, TrainConfig(optimizer="adamw", lr=1e-3))
    assert isinstance(optimizer, torch.optim.AdamW)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen = {id(network[0].weight), id(network[0].bias)}
    assert len(trained) == 4 and not trained & frozen


def test_warmup_then_cosine() -> None:
    # lr 0.1, 4 warm-up iterations of a 14-iteration run: (i + 1) / 4 during warm-up, then
    # 0.5 * (1 + cos(pi * (i - 4) / 10)).
    config = TrainConfig(lr=0.1, warmup_iters=4, schedule="cosine")
    rates = learning_rates(config, total_iters=14, steps=14)
    assert rates[:5] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    assert rates[9] == pytest.approx(0.05)  # half way through the cosine
    assert rates[6] == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.2)))
    assert rates[13] == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.9)))


def test_step_milestones_are_fractions_of_the_run() -> None:
    config = TrainConfig(
        lr=0.1, warmup_iters=0, schedule="step", step_milestones=(0.5, 0.75), step_gamma=0.1
    )
    rates = learning_rates(config, total_iters=20, steps=20)
    assert rates[:10] == pytest.approx([0.1] * 10)
    assert rates[10:15] == pytest.approx([0.01] * 5)
    assert rates[15:] == pytest.approx([0.001] * 5)


def test_constant_after_warmup() -> None:
    config = TrainConfig(lr=0.2, warmup_iters=2, schedule="constant")
    assert learning_rates(config, total_iters=6, steps=6) == pytest.approx(
        [0.1, 0.2, 0.2, 0.2, 0.2, 0.2]
    )


def test_scheduler_state_resumes() -> None:
    config = TrainConfig(lr=0.1, warmup_iters=3, schedule="cosine")
    optimizer = build_optimizer(small_network(), config)
    scheduler = build_scheduler(optimizer, config, total_iters=10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    optimizer_state, scheduler_state = optimizer.state_dict(), scheduler.state_dict()

    fresh_optimizer = build_optimizer(small_network(), config)
    fresh = build_scheduler(fresh_optimizer, config, total_iters=10)
    fresh_optimizer.load_state_dict(optimizer_state)
    fresh.load_state_dict(scheduler_state)
    for _ in range(3):
        for opt, sched in ((optimizer, scheduler), (fresh_optimizer, fresh)):
            opt.step()
            sched.step()
        assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
