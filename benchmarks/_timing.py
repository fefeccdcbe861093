"""The benchmarks' one timer: the median of repeated calls after a warm-up."""

import statistics
import time

import jax


def timed(fn, reps: int = 5) -> float:
    """Median seconds of ``fn()`` (its result blocked on), after one warm-up
    call (which compiles)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
