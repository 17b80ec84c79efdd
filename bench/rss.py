"""Peak resident memory of one call, read from Linux's ``/proc/self/status`` (shared by the
bench scripts, which run each model's memory measurement in a fresh subprocess)."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path


def call_peak_bytes(call: Callable[[], object]) -> tuple[int, int]:
    """``(peak resident-memory increase during call(), whole-process peak)`` in bytes.

    The process's high-water mark is reset first (``clear_refs`` 5), so the increase is the
    call's own peak over what the process held before it.
    """
    gc.collect()
    before = proc_status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    call()
    peak = proc_status_bytes("VmHWM")
    return peak - before, peak


def proc_status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")
