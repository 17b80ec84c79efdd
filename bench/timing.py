"""Alternating timings: every call runs once per round, in turn, so that a machine's slow spells
fall on all of them alike; and their medians."""

from __future__ import annotations

import gc
import statistics
import time
from collections import defaultdict
from collections.abc import Callable


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


def medians(timings: dict[str, list[float]]) -> dict[str, float]:
    """The median seconds of each call of :func:`alternate_timings`."""
    return {name: statistics.median(seconds) for name, seconds in timings.items()}
