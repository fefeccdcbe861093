"""The dense Hessian (hessian_tools.dense.hessian) against jax.hessian in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import dense_reference, nested_mlp_loss, nested_mlp_problem

import hessian_tools as ht


def test_hessian_chunked_equals_unchunked():
    params, x, y = nested_mlp_problem(jax.random.PRNGKey(3))
    H = dense_reference(nested_mlp_loss, params, x, y)
    for chunk in (1, 4, 7, None):
        np.testing.assert_allclose(
            ht.hessian(nested_mlp_loss, params, x, y, chunk_size=chunk), H, rtol=1e-10, atol=1e-12
        )


def test_rows_follow_ravel_pytree_order():
    # f = sum_i c_i z_i^2 / 2 over the flattened params: H = diag(c), so the
    # diagonal shows where each leaf's entries land
    params = {"b": jnp.ones(2), "a": {"w": jnp.ones((2, 3))}, "c": (jnp.ones(()),)}
    flat, _ = jax.flatten_util.ravel_pytree(params)
    c = jnp.arange(1.0, flat.size + 1)
    f = lambda p: 0.5 * jnp.sum(c * jax.flatten_util.ravel_pytree(p)[0] ** 2)
    H = ht.hessian(f, params)
    np.testing.assert_array_equal(H, np.diag(np.asarray(c)))
    # a leaf-by-leaf loss: the 'a/w' block comes first (keys sorted), then b, then c
    g = lambda p: jnp.sum(p["a"]["w"] ** 2) + 3 * jnp.sum(p["b"] ** 2) + 5 * p["c"][0] ** 2
    np.testing.assert_array_equal(np.diag(ht.hessian(g, params)), [2] * 6 + [6] * 2 + [10])


def test_symmetric_and_in_the_params_dtype():
    params, x, y = nested_mlp_problem(jax.random.PRNGKey(4), jnp.float32)
    H = ht.hessian(nested_mlp_loss, params, x, y)
    assert H.shape == (27, 27) and H.dtype == jnp.float32
    np.testing.assert_array_equal(H, H.T)
    ref = dense_reference(nested_mlp_loss, params, x, y)
    np.testing.assert_allclose(H, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_batches_give_the_hessian_of_the_sample_weighted_mean():
    params, x, y = nested_mlp_problem(jax.random.PRNGKey(5), n_samples=7)
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]  # uneven: 2 and 5 samples
    H = ht.hessian(nested_mlp_loss, params, batches=batches, progress=True)
    ref = dense_reference(nested_mlp_loss, params, x, y)
    np.testing.assert_allclose(H, ref, rtol=1e-9, atol=1e-11)


def test_non_finite_gradient_or_hessian_raises():
    with pytest.raises(FloatingPointError, match="gradient"):
        ht.hessian(lambda p: jnp.sum(jnp.sqrt(p)), jnp.zeros(2))
    # |x|^1.5 has a finite gradient at 0 but an infinite second derivative
    f = lambda p: jnp.sum(jnp.abs(p) ** 1.5)
    with pytest.raises(FloatingPointError, match="Hessian"):
        ht.hessian(f, jnp.zeros(2))
