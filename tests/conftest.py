"""Test configuration: float64 available, silent broadcasting an error.

Tests that exercise float32 build float32 arrays explicitly; the library
itself never flips these flags.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax
from hypothesis import settings

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("ci")
