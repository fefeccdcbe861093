"""Test configuration: float64 available, silent broadcasting an error.

Tests that exercise float32 build float32 arrays explicitly; the library
itself never flips these flags.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax
import pytest
from hypothesis import settings

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
    import _background

    _background.start(_background.needed([item.nodeid for item in session.items]))


def pytest_sessionfinish(session, exitstatus):
    import _background

    _background.stop_all()
