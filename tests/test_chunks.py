"""Chunks of a stack (hessian_tools._chunks): the memory rule and padding."""

import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from hessian_tools._chunks import CHUNK_BYTES, chunks, fit


@given(
    rows=st.integers(1, 40),
    size=st.integers(1, 50),
    pad=st.sampled_from(["zeros", "repeat"]),
    shorten=st.booleans(),
)
def test_chunks_cover_the_stack_once_in_one_shape(rows, size, pad, shorten):
    stack = {"a": np.arange(rows * 3.0).reshape(rows, 3) + 1, "b": np.arange(rows) + 1.0}
    pieces = list(chunks(stack, size, pad=pad, shorten=shorten))
    width = min(size, rows) if shorten else size
    assert {p["a"].shape[0] for _, _, p in pieces} == {width}  # one compiled shape
    assert [s for s, _, _ in pieces] == list(range(0, rows, width))
    rebuilt = np.concatenate([p["a"][:take] for _, take, p in pieces])
    np.testing.assert_array_equal(rebuilt, stack["a"])
    _, take, last = pieces[-1]
    fill = last["b"][take:]
    if pad == "zeros":
        assert np.all(fill == 0)
    else:  # never a zero vector (Lanczos starts)
        assert np.all(fill != 0) and set(fill) <= set(stack["b"])


def test_chunks_keep_the_array_kind():
    jax_piece = next(chunks(jnp.ones((5, 2)), 4))[2]
    np_piece = list(chunks(np.ones((5, 2)), 4))[1][2]
    assert not isinstance(jax_piece, np.ndarray) and isinstance(np_piece, np.ndarray)


def test_fit_is_the_memory_rule():
    assert fit(CHUNK_BYTES // 10) == 10
    assert fit(1) == 256 and fit(1, cap=4) == 4
    assert fit(10 * CHUNK_BYTES) == 1  # at least one
    assert fit(CHUNK_BYTES, budget=4 * CHUNK_BYTES) == 4
