"""What the processor can do, read once per process: the facts that choose precision and kernels.

:func:`processor` gathers what torch reports (its ATen kernel level, oneDNN's bf16 support, the
CPUID flags torch reads) and the environment caps that narrow it (``ATEN_CPU_CAPABILITY``,
``ONEDNN_MAX_CPU_ISA``). :func:`native_bf16` (bfloat16 in hardware) and
:func:`int8_needs_reduced_range` (no VNNI, so int8 weights in 7 bits) turn them into decisions;
:func:`describe` is the one-line header every bench prints.

See docs/training.md for what these facts cost on the processors pansight runs on.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Processor:
    """What this process's processor runs natively.

    Attributes:
        name: the model name (``/proc/cpuinfo``), or the platform's word for it.
        aten_capability: the vector level of torch's own kernels (``AVX512``, ``AVX2``, ...),
            after any ``ATEN_CPU_CAPABILITY`` cap.
        onednn_isa_cap: ``ONEDNN_MAX_CPU_ISA`` when set (oneDNN then uses nothing above it),
            else ``""``.
        avx512: the processor has AVX-512 (F, BW, VL, DQ).
        avx512_bf16: it has the AVX512-BF16 instructions.
        amx: it has AMX tiles (bf16 and int8 matrix units).
        vnni: it has AVX512-VNNI (int8 dot products that do not saturate).
        onednn_bf16: oneDNN runs bfloat16 kernels of its own on it (with the cap applied);
            on AVX-512 without AVX512-BF16 these are emulated, but vectorized.
    """

    name: str
    aten_capability: str
    onednn_isa_cap: str
    avx512: bool
    avx512_bf16: bool
    amx: bool
    vnni: bool
    onednn_bf16: bool

    @property
    def native_bf16(self) -> bool:
        """bfloat16 runs in hardware: AVX512-BF16 or AMX, and oneDNN allowed to use them."""
        return self.onednn_bf16 and (self.avx512_bf16 or self.amx)


def _cpu_flag(name: str) -> bool:
    """A CPUID flag as torch reads it (``torch.cpu._is_<name>_supported``); ``False`` where this
    torch does not report it."""
    check = getattr(torch.cpu, f"_is_{name}_supported", None)
    return bool(check()) if check is not None else False


def _processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def _onednn_bf16() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


@functools.cache
def processor() -> Processor:
    """This process's :class:`Processor` (read once; the environment caps count as read at the
    first call)."""
    return Processor(
        name=_processor_name(),
        aten_capability=torch.backends.cpu.get_cpu_capability(),
        onednn_isa_cap=os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        avx512=_cpu_flag("avx512"),
        avx512_bf16=_cpu_flag("avx512_bf16"),
        amx=_cpu_flag("amx_tile"),
        vnni=_cpu_flag("vnni"),
        onednn_bf16=_onednn_bf16(),
    )


def native_bf16() -> bool:
    """Whether bfloat16 autocast on this CPU runs in hardware (and so pays)."""
    return processor().native_bf16


def int8_needs_reduced_range() -> bool:
    """Whether onnxruntime's uint8 x int8 kernels here can saturate (no VNNI), so int8 weights
    should keep to 7 bits (``reduce_range``), as onnxruntime's quantization guide advises."""
    return not processor().vnni


def describe() -> str:
    """One line naming the processor and what it runs natively, for bench headers and notes."""
    found = processor()
    flags = [
        name
        for name, present in (
            ("AVX512", found.avx512),
            ("AVX512-BF16", found.avx512_bf16),
            ("AMX", found.amx),
            ("VNNI", found.vnni),
        )
        if present
    ]
    cap = found.onednn_isa_cap or "none"
    return (
        f"processor: {found.name} | flags: {' '.join(flags) or 'no AVX-512'} | "
        f"ATen: {found.aten_capability} | oneDNN cap: {cap} | "
        f"bf16: {'native' if found.native_bf16 else 'emulated'} | "
        f"threads: {torch.get_num_threads()} | torch {torch.__version__}"
    )
