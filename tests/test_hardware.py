"""Processor facts and the precision they choose: bfloat16 only where it runs natively, int8
weights in 7 bits where onnxruntime's kernels could saturate, and a header naming it all."""

import subprocess
import sys

import pytest
import torch

from pansight import hardware
from pansight.engine.precision import resolve_precision

CHECK = "from pansight import hardware; print(hardware.native_bf16(), hardware.describe())"


def test_native_bf16_needs_the_instructions_and_onednn():
    found = hardware.processor()
    assert found.native_bf16 == (found.onednn_bf16 and (found.avx512_bf16 or found.amx))
    assert found.aten_capability == torch.backends.cpu.get_cpu_capability()
    header = hardware.describe()
    assert found.name in header and f"ATen: {found.aten_capability}" in header


def test_an_avx2_cap_on_onednn_turns_native_bf16_off():
    environment = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "PATH": ""}
    printed = subprocess.run(
        [sys.executable, "-c", CHECK], env=environment, capture_output=True, text=True, check=True
    ).stdout
    assert printed.startswith("False ")
    assert "ATen: AVX2" in printed and "oneDNN cap: AVX2" in printed and "bf16: emulated" in printed


def test_int8_reduces_the_weight_range_exactly_where_vnni_is_missing(monkeypatch):
    for vnni in (True, False):
        monkeypatch.setattr(
            hardware, "processor", lambda vnni=vnni: _processor(vnni=vnni, native=False)
        )
        assert hardware.int8_needs_reduced_range() is not vnni


@pytest.mark.parametrize(
    ("amp", "native", "dtype"),
    [
        ("auto", True, torch.bfloat16),
        ("auto", False, None),
        ("false", True, None),
        ("true", True, torch.bfloat16),
    ],
)
def test_cpu_precision_follows_amp_and_the_processor(monkeypatch, amp, native, dtype):
    monkeypatch.setattr(hardware, "native_bf16", lambda: native)
    precision = resolve_precision(amp, torch.device("cpu"))
    assert precision.autocast_dtype == dtype and not precision.loss_scaling
    assert precision.name == str(dtype or torch.float32).removeprefix("torch.")


def test_cuda_precision_is_float16_with_loss_scaling_unless_off():
    auto = resolve_precision("auto", torch.device("cuda"))
    assert (auto.autocast_dtype, auto.loss_scaling) == (torch.float16, True)
    assert resolve_precision("false", torch.device("cuda")).autocast_dtype is None


def _processor(vnni: bool, native: bool) -> hardware.Processor:
    return hardware.Processor(
        name="test",
        aten_capability="AVX2",
        onednn_isa_cap="",
        avx512=False,
        avx512_bf16=native,
        amx=False,
        vnni=vnni,
        onednn_bf16=native,
    )
