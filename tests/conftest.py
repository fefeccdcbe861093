"""Test configuration: float64 available, silent broadcasting an error.

Tests that exercise float32 build float32 arrays explicitly; the library
itself never flips these flags.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

# The suite is mostly XLA compilation (single-threaded, ~60% of its time),
# and LLVM's optimisations are most of that: without them (the same IEEE
# arithmetic, slower code) two test modules took 100 s instead of 149 s.
# Speed is measured by the benchmarks, never here. The tests marked
# default_xla (miscompilation guards) run at the default level, in a pytest
# of their own on the other core; those marked other_core at this level in
# another (_background.WORKERS).
WORKER = os.environ.get("HT_TEST_WORKER", "")  # "": the suite's own session
if WORKER != "default_xla":
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402 (XLA_FLAGS first)
import pytest  # noqa: E402 (XLA_FLAGS first)
from hypothesis import settings  # noqa: E402 (XLA_FLAGS first)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

# Solver programs compile once each here, not in tiers with background
# compilations (hessian_tools._compile._Tiered): the tests of the tiers turn
# them on (test_compile.py); everywhere else a result does not depend on
# which tier ran, and no compilation outlives its test.
from hessian_tools import _compile  # noqa: E402 (XLA_FLAGS first)

_compile.TIERS = False
# The solvers' programs pass their own optimisation level (CPU_OPTIONS),
# which overrides XLA_FLAGS: without it they compile at the suite's level
# too (the miscompilation guards keep the library's options).
if WORKER != "default_xla":
    _compile.CPU_OPTIONS = {
        k: v for k, v in _compile.CPU_OPTIONS.items() if k != "xla_backend_optimization_level"
    }

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("ci")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop every compiled program after each test module.

    Each XLA CPU executable keeps memory mappings of its own; the whole
    suite compiles thousands of programs, and past ``vm.max_map_count``
    (65,530 by default on Linux) the next compilation fails to map memory
    and the process dies with a segmentation fault (seen at ~41% of the
    suite: 33,775 mappings by a third of it). Programs shared between
    modules are simply compiled again.
    """
    yield
    jax.clear_caches()


def _worker_of(item) -> str | None:
    """The worker marker of a test run in a pytest of its own, or None."""
    import _background

    return next((m for m in _background.WORKERS if item.get_closest_marker(m)), None)


def pytest_collection_modifyitems(session, config, items):
    """The modules whose tests read a subprocess check next to last, and the
    workers' tests last: their outcomes are waited for only after the
    session's own tests, while the checks and workers run on the other core
    (a module stays whole, so that its fixtures are set up once)."""
    if WORKER:
        return
    import _background

    checked = {item.nodeid.split("::")[0] for item in items if _background.needed([item.nodeid])}

    def group(item):
        return 2 if _worker_of(item) else int(item.nodeid.split("::")[0] in checked)

    items.sort(key=group)


def pytest_collection_finish(session):
    """Start the subprocess checks and workers the selected tests need
    (``_background``)."""
    if WORKER or session.config.option.collectonly:  # a worker runs its tests itself
        return
    import _background

    _background.start(_background.needed([item.nodeid for item in session.items]))
    for marker in _background.WORKERS:
        _background.start_worker(
            marker, [item.nodeid for item in session.items if _worker_of(item) == marker]
        )


def _nothing():
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """A worker's test is reported here as it went in its worker, without
    setting up its fixtures in this process."""
    marker = None if WORKER else _worker_of(item)
    if marker is None:
        return None
    import _background

    hook = item.ihook
    hook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    phases = (
        ("setup", _nothing),
        ("call", lambda: _background.worker_outcome(marker, item.nodeid)),
        ("teardown", _nothing),
    )
    for when, fn in phases:
        call = pytest.CallInfo.from_call(fn, when)
        hook.pytest_runtest_logreport(report=hook.pytest_runtest_makereport(item=item, call=call))
    hook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def pytest_terminal_summary(terminalreporter):
    """What the other core did: the CPU time of the checks and workers, to
    weigh against this session's wall time when moving tests between them."""
    import resource

    import _background

    if not WORKER and _background.started():
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        terminalreporter.write_line(
            f"subprocess checks and workers ({', '.join(_background.started())}): "
            f"{cpu.ru_utime + cpu.ru_stime:.0f} s of CPU"
        )


def pytest_sessionfinish(session, exitstatus):
    import _background

    _background.stop_all()
