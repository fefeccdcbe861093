"""Thick restart's pieces (hessian_tools._thick_restart): the error bounds,
the wanted positions, and restarts that keep the Lanczos relation."""

import jax
import jax.numpy as jnp
import numpy as np
from _util import select_reference, sym_with_spectrum

from hessian_tools import _thick_restart
from hessian_tools.eigen import eigenpairs


def test_wanted_positions_follow_the_result_order():
    pos = lambda cols, k, which: np.asarray(_thick_restart.wanted_positions(cols, k, which))
    np.testing.assert_array_equal(pos(10, 3, "largest"), [9, 8, 7])
    np.testing.assert_array_equal(pos(10, 3, "smallest"), [0, 1, 2])
    np.testing.assert_array_equal(pos(10, 5, "both"), [0, 1, 7, 8, 9])  # floor(k/2) bottom
    w = np.arange(10.0)
    np.testing.assert_array_equal(w[pos(10, 5, "both")], select_reference(w, 5, "both"))


def test_error_bounds_gap_fallback_and_lone_values():
    theta = jnp.array([0.0, 1.0, 1.0005, 5.0])
    res = jnp.array([1e-3, 1e-4, 1e-4, 1e-6])
    b = np.asarray(_thick_restart.error_bounds(theta, res, 4))
    # well separated: r^2 / gap with gap = distance less the neighbour's residual
    np.testing.assert_allclose(b[3], 1e-12 / (5.0 - 1.0005 - 1e-4), rtol=1e-9)
    # a gap estimate (4e-4) not ten times the residual (1e-4): the residual
    np.testing.assert_allclose(b[1], 1e-4, rtol=1e-9)
    # the gap smaller than the residual: the residual itself
    tight = np.asarray(
        _thick_restart.error_bounds(jnp.array([1.0, 1.0001]), jnp.array([1e-3, 1e-3]), 2)
    )
    np.testing.assert_allclose(tight, [1e-3, 1e-3])
    # a lone Ritz value has no gap estimate: the residual
    lone = np.asarray(_thick_restart.error_bounds(jnp.array([3.0, 0.0]), jnp.array([1e-2, 0.0]), 1))
    assert lone[0] == 1e-2 and np.isinf(lone[1])
    # rounding is added to every valid bound
    shifted = np.asarray(_thick_restart.error_bounds(theta, res, 4, 1e-9))
    np.testing.assert_allclose(shifted, b + 1e-9)


def test_error_bounds_need_enough_columns_for_the_quadratic_term():
    # a 2-column space (a warm start after 2 HVPs): the gap to the second Ritz
    # value is not known to be safe, so the bound is the residual
    theta, res = jnp.array([0.80, 0.9026]), jnp.array([0.05, 3e-3])
    few = np.asarray(_thick_restart.error_bounds(theta, res, 2, min_cols=6))
    np.testing.assert_allclose(few[1], 3e-3)
    enough = np.asarray(_thick_restart.error_bounds(theta, res, 2, min_cols=2))
    assert enough[1] < 3e-3 / 10


def test_error_bounds_add_the_product_floor():
    theta, res = jnp.array([0.0, 5.0]), jnp.array([1e-6, 1e-6])
    b = np.asarray(_thick_restart.error_bounds(theta, res, 2, floor=1e-4))
    # the residual grows by twice the floor, and the floor is added on top
    np.testing.assert_allclose(b[1], (1e-6 + 2e-4) ** 2 / (5 - 1e-6 - 2e-4) + 1e-4, rtol=1e-9)


def test_restarts_keep_the_answer_exact():
    # a small basis forces many restarts (with breakdown-free Krylov spaces)
    w = np.concatenate([[4.0, 3.9, 3.8], np.random.default_rng(1).uniform(-1, 1, 97)])
    a = sym_with_spectrum(w, 1)
    r = eigenpairs(a, 3, method="lanczos", max_basis=8, rtol=1e-10, key=jax.random.PRNGKey(2))
    assert r.num_restarts >= 3 and r.converged
    err = np.abs(np.asarray(r.values) - [4.0, 3.9, 3.8])
    assert np.all(err <= np.asarray(r.error_bounds))
    v = np.asarray(r.vectors)
    np.testing.assert_allclose(v.T @ v, np.eye(3), atol=1e-7)


def test_every_breakdown_continues_from_a_new_direction():
    # the zero matrix: every Krylov space is one vector long, so k vectors
    # take k breakdowns, each continuing from a new random direction (on one
    # CPU device the host's, rotated per restart): the k returned vectors are
    # orthonormal only if no direction repeats
    for k, which in ((4, "largest"), (5, "both")):
        r = eigenpairs(jnp.zeros((60, 60)), k, which=which, method="lanczos", key=3)
        assert r.converged and r.num_restarts >= k - 1
        np.testing.assert_array_equal(np.asarray(r.values), 0.0)
        v = np.asarray(r.vectors)
        np.testing.assert_allclose(v.T @ v, np.eye(k), atol=1e-8)
    # the directions themselves: one Gaussian vector, rotated by the restart
    # count, gives nearly orthogonal directions (a repeated one would lie in
    # the basis already, leaving only rounding noise to continue from)
    cfg = _thick_restart.Config(2, "largest", 10, jnp.float64, 11, jnp.float64, True)
    spare = np.random.default_rng(0).standard_normal(4000)
    rows = np.stack(
        [_thick_restart._fresh_vector(None, spare, jnp.asarray(c), cfg)(None) for c in range(6)]
    )
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    cos = rows @ rows.T - np.eye(6)
    assert np.max(np.abs(cos)) < 0.1  # independent directions: about 1/sqrt(4000)
