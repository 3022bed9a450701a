"""Shared by the benchmark scripts: time a call without allocation tracing, then trace it."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np


def timed(fn, repeats: int = 3) -> tuple[float, float]:
    """(median seconds over repeats calls, peak traced MiB of one more call): tracing
    allocations slows NumPy down, so memory is measured in a separate call."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    return float(np.median(times)), peak
