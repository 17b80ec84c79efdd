"""The accuracy goal of the semantic rung, trained through the product's own path.

FCN-8s (ResNet-18) trained from scratch for at most ten minutes on 2 CPU threads reaches
mIoU >= 0.85 on the synthetic world's validation split, and beats FCN-32s given the same
training. Slow (minutes each): run with ``pytest -m slow``.
"""

import time

import pytest
import torch

import pansight

pytestmark = pytest.mark.slow

RECIPE = {"data__num_train": 16000, "epochs": 1, "amp": True}
"""1,000 iterations of 16 synthetic 128-pixel images, bfloat16 autocast (see api.TASK_DEFAULTS)."""

TIME_LIMIT_MINUTES = 10.0


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def train_for_minutes(model: str, out: str) -> tuple[dict[str, float], float]:
    started = time.perf_counter()
    run = pansight.train("semantic", model=model, out=out, **RECIPE)
    return run.metrics, (time.perf_counter() - started) / 60


def test_fcn8s_reaches_085_miou_within_ten_minutes_and_beats_fcn32s(tmp_path, two_threads):
    fcn8s, minutes = train_for_minutes("fcn8s_r18", str(tmp_path / "fcn8s"))
    fcn32s, _ = train_for_minutes("fcn32s_r18", str(tmp_path / "fcn32s"))
    print(f"FCN-8s mIoU {fcn8s['mIoU']:.3f} in {minutes:.1f} min; FCN-32s {fcn32s['mIoU']:.3f}")
    assert fcn8s["mIoU"] >= 0.85
    assert fcn8s["mIoU"] > fcn32s["mIoU"]
    assert minutes <= TIME_LIMIT_MINUTES
