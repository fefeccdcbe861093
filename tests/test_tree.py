"""Pytree linear algebra and the Layout of a vector (hessian_tools._tree)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

from hessian_tools._tree import Layout, accurate_vdot, basis_combine, basis_dot, get_rows, set_row

TREE = {"a": jnp.arange(6.0).reshape(2, 3), "b": (jnp.ones(4), jnp.asarray(2.0))}


def test_ravel_order_and_round_trip_match_ravel_pytree():
    layout = Layout.of(TREE)
    assert layout.n == 11 and layout.shapes == ((2, 3), (4,), ())
    flat = layout.ravel(TREE)
    np.testing.assert_array_equal(flat, ravel_pytree(TREE)[0])
    back = layout.unravel(flat)
    jax.tree.map(np.testing.assert_array_equal, back, TREE)
    stack = layout.unravel(jnp.stack([flat, 2 * flat]))  # (k, n) to a stack
    assert stack["a"].shape == (2, 2, 3)
    np.testing.assert_array_equal(layout.ravel(stack), jnp.stack([flat, 2 * flat]))


def test_vector_accepts_flat_or_tree_and_names_the_problem():
    layout = Layout.of(TREE)
    flat = jnp.arange(11.0)
    jax.tree.map(np.testing.assert_array_equal, layout.vector(flat), layout.unravel(flat))
    jax.tree.map(np.testing.assert_array_equal, layout.vector(TREE), TREE)
    with pytest.raises(ValueError, match="length n = 11"):
        layout.vector(jnp.ones(12))
    with pytest.raises(ValueError, match="structure"):
        layout.vector({"a": TREE["a"]})
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        layout.vector({"a": jnp.ones((3, 2)), "b": TREE["b"]})
    # params that are one array: an array of its shape is the pytree reading
    single = Layout.of(jnp.ones((2, 3)))
    assert not single.is_flat(jnp.ones((2, 3))) and single.is_flat(jnp.ones(6))


def test_flatten_leaves_round_trip():
    layout = Layout.of(TREE)
    stack = jax.tree.map(lambda x: jnp.stack([x, -x]), TREE)
    flat = layout.flatten_leaves(stack)
    # one CPU device: the leaves joined in one (2, n) array, the ravel order
    assert [x.shape for x in jax.tree.leaves(flat)] == [(2, 11)]
    np.testing.assert_array_equal(flat, layout.ravel(stack))
    back = layout.unflatten_leaves(flat)
    assert jax.tree.structure(back) == jax.tree.structure(stack)
    jax.tree.map(np.testing.assert_array_equal, back, stack)
    # mixed dtypes: joined in the common dtype, each leaf's own restored
    mixed = {"a": jnp.ones((2, 3), jnp.float32), "b": jnp.ones((2,), jnp.float16)}
    layout = Layout.of(jax.tree.map(lambda x: x[0], mixed))
    back = layout.unflatten_leaves(layout.flatten_leaves(mixed))
    assert back["a"].dtype == jnp.float32 and back["b"].dtype == jnp.float16


@given(st.integers(1, 5), st.integers(0, 1000))
def test_basis_dot_and_combine_equal_flat_algebra(m, seed):
    rng = np.random.default_rng(seed)
    basis = {"w": jnp.asarray(rng.normal(size=(m, 12))), "b": jnp.asarray(rng.normal(size=(m, 3)))}
    w = {"w": jnp.asarray(rng.normal(size=12)), "b": jnp.asarray(rng.normal(size=3))}
    q = np.concatenate([basis["w"], basis["b"]], 1)
    x = np.concatenate([w["w"], w["b"]])
    np.testing.assert_allclose(basis_dot(basis, w), q @ x, rtol=1e-12)
    c = rng.normal(size=(2, m))
    out = basis_combine(jnp.asarray(c), basis)
    np.testing.assert_allclose(np.concatenate([out["w"], out["b"]], 1), c @ q, rtol=1e-12)


def test_rows_and_accurate_dot():
    stack = {"w": jnp.zeros((4, 3))}
    stack = set_row(stack, 2, {"w": jnp.ones(3)})
    np.testing.assert_array_equal(get_rows(stack, 2)["w"], 1.0)
    np.testing.assert_array_equal(get_rows(stack, 1, 2)["w"], [[0, 0, 0], [1, 1, 1]])
    # two-level summation: 100,000 float32 terms of 0.1 add up to 1e4 closely
    x = {"a": jnp.full(100_000, 0.1, jnp.float32)}
    y = {"a": jnp.ones(100_000, jnp.float32)}
    got = float(accurate_vdot(x, y, jnp.float32))
    assert abs(got - 1e4) < 1e4 * 1e-6
