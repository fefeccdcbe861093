"""The benchmarks' one timer: the median of repeated calls after a warm-up."""

import statistics
import time

import jax


def settle(fn, calls: int = 2) -> None:
    """Warm ``fn`` up: call it ``calls`` times (2: the first call and a
    second; 1 after a first call timed elsewhere) and wait for the optimised
    programs that a second call compiles in the background
    (``hessian_tools._compile``: a solver program's first use runs a
    fast-compiled tier). Warm times are the optimised programs' (the cold
    columns time the first call)."""
    from hessian_tools import _compile

    for _ in range(calls):
        jax.block_until_ready(fn())
    # (an older checkout, timed beside this one, has no tiers)
    getattr(_compile, "wait_for_compilations", lambda: None)()


def timed(fn, reps: int = 5) -> float:
    """Median seconds of ``fn()`` (its result blocked on), after warming up
    (``settle``: compiling, also the optimised tier)."""
    settle(fn)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
