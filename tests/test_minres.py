"""MINRES against scipy and dense least squares (Paige & Saunders 1975)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg as sla
from _util import sym_with_spectrum

from hessian_tools._minres import minres


def symmetric(n, eigenvalues, seed):
    """A symmetric (n, n) matrix with the given eigenvalues and a right-hand side."""
    b = np.random.default_rng(seed + 1000).normal(size=n)
    return np.asarray(sym_with_spectrum(eigenvalues, seed)), b


@pytest.mark.parametrize("n,seed", [(5, 0), (30, 1), (60, 2)])
def test_indefinite_nonsingular_matches_scipy(n, seed):
    lam = np.random.default_rng(seed).normal(size=n)
    a, b = symmetric(n, lam, seed)
    x, its = jax.jit(lambda b: minres(lambda v: a @ v, b, maxiter=3 * n, rtol=1e-12))(
        jnp.asarray(b)
    )
    xs, _ = sla.minres(a, b, rtol=1e-12, maxiter=3 * n)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(x, xs, rtol=1e-7, atol=1e-7)
    assert int(its) <= 3 * n


@pytest.mark.parametrize("n,seed", [(5, 3), (30, 4)])
def test_singular_systems_give_least_squares(n, seed):
    lam = np.random.default_rng(seed).normal(size=n)
    lam[:2] = 0.0
    a, b = symmetric(n, lam, seed)
    ls_residual = np.linalg.norm(a @ np.linalg.lstsq(a, b, rcond=None)[0] - b)
    x, _ = minres(lambda v: a @ v, jnp.asarray(b), maxiter=n, rtol=1e-6)
    assert np.linalg.norm(a @ x - b) <= ls_residual * (1 + 1e-6)
    assert np.linalg.norm(x) < 1e3  # no drift along the null space
    # consistent singular system: exact solution
    b_range = a @ b
    x, _ = minres(lambda v: a @ v, jnp.asarray(b_range), maxiter=3 * n, rtol=1e-12)
    np.testing.assert_allclose(a @ x, b_range, rtol=1e-8, atol=1e-8)


def test_vmap_and_zero_rhs():
    a, _ = symmetric(6, np.array([-2.0, -1.0, 0.5, 1.0, 3.0, 4.0]), 5)
    bs = jnp.asarray(np.random.default_rng(6).normal(size=(3, 6))).at[1].set(0.0)
    xs, its = jax.vmap(lambda b: minres(lambda v: a @ v, b, maxiter=12, rtol=1e-12))(bs)
    np.testing.assert_allclose(xs @ a.T, bs, rtol=1e-8, atol=1e-8)
    assert int(its[1]) == 0 and not np.any(xs[1])
