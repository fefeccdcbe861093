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
# of their own on the other core (_background).
DEFAULT_XLA = os.environ.get("HT_TEST_DEFAULT_XLA") == "1"
if not DEFAULT_XLA:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402 (XLA_FLAGS first)
import pytest  # noqa: E402 (XLA_FLAGS first)
from hypothesis import settings  # noqa: E402 (XLA_FLAGS first)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

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


def pytest_collection_finish(session):
    """Start the subprocess checks the selected tests need (``_background``)."""
    if DEFAULT_XLA:  # the default_xla pytest itself: run its tests here
        return
    import _background

    _background.start(_background.needed([item.nodeid for item in session.items]))
    marked = [item.nodeid for item in session.items if item.get_closest_marker("default_xla")]
    _background.start_default_xla(marked)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """A default_xla test passes here when it passed in the default_xla
    pytest (its failure text otherwise)."""
    if DEFAULT_XLA or not pyfuncitem.get_closest_marker("default_xla"):
        return None
    import _background

    _background.default_xla_outcome(pyfuncitem.nodeid)
    return True


def pytest_sessionfinish(session, exitstatus):
    import _background

    _background.stop_all()
