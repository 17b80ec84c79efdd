"""Helpers shared by the bench scripts: the processor header every script prints first, and
alternating timings (every call runs once per round, in turn, so that a machine's slow spells
fall on all of them alike)."""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from collections.abc import Callable

from pansight import hardware


def print_header(*, onnxruntime: bool = False) -> None:
    """Print the processor line (:func:`pansight.hardware.describe`) that every bench result is
    read against; with ``onnxruntime``, append onnxruntime's version.

    Call it after ``torch.set_num_threads``: the line reports the threads torch uses.
    """
    line = hardware.describe()
    if onnxruntime:
        line += f" | onnxruntime {_onnxruntime_version()}"
    print(line, flush=True)


def _onnxruntime_version() -> str:
    try:
        import onnxruntime  # optional dependency: only scripts that time it ask for its version
    except ImportError:
        return "not installed"
    return onnxruntime.__version__


def alternate_timings(
    calls: dict[str, Callable[[], object]], runs: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds of each call over ``runs`` alternating rounds, after ``warmup`` rounds."""
    timings: dict[str, list[float]] = defaultdict(list)
    for round_index in range(warmup + runs):
        for name, timed_call in calls.items():
            gc.collect()
            start = time.perf_counter()
            timed_call()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                timings[name].append(elapsed)
    return timings
