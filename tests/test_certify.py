"""Certificates that hold in every workflow (hessian_tools._certify): safe
quadratic bounds for small Krylov spaces, the products' rounding floor, and
the completeness check. Bounds are judged against eigh of a dense float64
matrix at the same point, with the reference's own slack."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import sym_with_spectrum, transformer_loss, transformer_problem
from hypothesis import given, settings
from hypothesis import strategies as st

import hessian_tools as ht

# a pytest of its own on the other core (tests/_background.py)
pytestmark = pytest.mark.other_core


def _nearest_errors(values, exact):
    values = np.asarray(values, np.float64)
    return np.min(np.abs(values[:, None] - np.asarray(exact)[None, :]), axis=1)


def _slack(exact):
    return np.sqrt(exact.size) * np.finfo(np.float64).eps * np.max(np.abs(exact))


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [str(c.message) for c in caught]


def test_warm_start_next_to_a_close_second_eigenvalue():
    # the case: a warm start whose 2-column space puts the second Ritz
    # value far below the close second eigenvalue, so r^2 / gap was 17x too small
    rng = np.random.default_rng(0)
    w = np.concatenate([[0.9026, 0.88], rng.uniform(-0.2, 0.5, 298)])
    a = sym_with_spectrum(w, 3)
    _, v = np.linalg.eigh(np.asarray(a))
    for mix in (3e-3, 3e-2):
        v0 = v[:, -1] + mix * v[:, -2] + mix * rng.normal(size=300) / np.sqrt(300)
        for budget in (2, 3, 4, 5):
            r, _ = _quiet(ht.eigenpairs, a, 1, method="lanczos", v0=v0, max_matvecs=budget)
            err = _nearest_errors(r.values, w)
            assert np.all(err <= np.asarray(r.error_bounds) + _slack(w)), (mix, budget, err)


def test_eigenvalues_crossing_along_a_family():
    # lambda_1(t) and lambda_2(t) cross at t = 0.5: every bound holds on the way
    rng = np.random.default_rng(1)
    bulk = rng.uniform(-1, 1, 118)
    for t in np.linspace(0.3, 0.7, 5):
        w = np.concatenate([[2.0 + (t - 0.5), 2.0 - (t - 0.5)], bulk])
        a = sym_with_spectrum(w, 5)
        for budget in (4, 8, 1000):
            r, _ = _quiet(ht.eigenpairs, a, 2, method="lanczos", max_matvecs=budget)
            err = _nearest_errors(r.values, w)
            assert np.all(err <= np.asarray(r.error_bounds) + _slack(w)), (t, budget)


@pytest.mark.slow
@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    spread=st.sampled_from([1e-6, 1e-4, 1e-2]),
    budget=st.integers(2, 9),
    which=st.sampled_from(["largest", "smallest"]),
)
def test_bounds_hold_in_tiny_krylov_spaces_of_clustered_spectra(seed, spread, budget, which):
    rng = np.random.default_rng(seed)
    cluster = 3.0 + spread * rng.normal(size=5)
    w = np.concatenate([cluster, -cluster, rng.uniform(-1, 1, 70)])
    a = sym_with_spectrum(w, seed)
    r, _ = _quiet(ht.eigenpairs, a, 2, which=which, method="lanczos", max_matvecs=budget)
    # a single vector's Krylov space holds one copy of a cluster it cannot
    # split: the certificate is then for the cluster's interval (assumption (i)
    # of _certify.error_bounds), so distances are to the nearest eigenvalue or
    # to the cluster's hull
    values = np.asarray(r.values, np.float64)
    hull = lambda c: np.maximum(0, np.maximum(c.min() - values, values - c.max()))
    err = np.minimum(_nearest_errors(values, w), np.minimum(hull(cluster), hull(-cluster)))
    assert np.all(err <= np.asarray(r.error_bounds) + _slack(w)), (err, r.error_bounds)


def test_impossible_rtol_is_not_converged():
    a = sym_with_spectrum(np.linspace(0, 1, 150) ** 3 * 5, 2, np.float32)
    r, caught = _quiet(ht.eigenpairs, a, 1, method="lanczos", rtol=1e-12)
    assert not r.converged
    assert any("rtol" in c and "float32" in c for c in caught)


def test_skipped_eigenvalue_is_caught():
    # the start vector is orthogonal to the top eigenvector: the solve alone
    # would return the second eigenvalue as the largest
    n = 200
    w = np.concatenate([[10.0, 4.0], np.linspace(0, 1, n - 2)])
    a = jnp.asarray(np.diag(w))
    v0 = np.ones(n)
    v0[0] = 0.0
    r, caught = _quiet(ht.eigenpairs, a, 1, method="lanczos", v0=v0)
    # the check finds it and the warm-started second solve includes it
    assert (r.converged and r.complete and float(r.values[0]) == pytest.approx(10.0)) or (
        not r.converged and r.complete is False and caught
    )


@pytest.fixture(scope="module")
def transformer():
    params, tokens = transformer_problem()
    hess = np.asarray(ht.hessian(transformer_loss, params, tokens))
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    back = jax.tree.map(lambda x: x.astype(jnp.float64), p32)
    hess32 = np.asarray(ht.hessian(transformer_loss, back, tokens))
    return params, p32, tokens, np.linalg.eigvalsh(hess), np.linalg.eigvalsh(hess32)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["largest", "smallest"])
@pytest.mark.parametrize("variant", ["float64", "float32", "softmax32"])
def test_transformer_bounds_hold(transformer, variant, which):
    params, p32, tokens, exact64, exact32 = transformer
    loss, p, exact = transformer_loss, params, exact64
    if variant == "float32":
        p, exact = p32, exact32
    elif variant == "softmax32":
        loss = functools.partial(transformer_loss, softmax_dtype=jnp.float32)
    op = ht.HessianOperator(loss, p, tokens)
    r, caught = _quiet(ht.eigenpairs, op, 3, which=which, method="lanczos")
    err = _nearest_errors(r.values, exact)
    assert np.all(err <= np.asarray(r.error_bounds, np.float64) + _slack(exact)), err
    if variant == "softmax32":
        # float64 tolerance, float32 products: said, and not called converged
        assert not r.converged and any("softmax" in c for c in caught)
        assert r.rounding_floor > 1e-9 * np.max(np.abs(exact))
    else:
        assert r.converged and r.complete and not caught


def _mixed_loss(p, x):
    h = jnp.tanh(x @ p["a"].astype(jnp.float64))  # a float32 layer in a float64 model
    return jnp.sum(h**2) * jnp.sum(p["b"] ** 2) + jnp.sum(jnp.sin(p["c"]) * jnp.sum(h))


def test_dense_bounds_hold_with_a_float32_part():
    # the dense path's matrix is built from products: a float32 layer puts
    # ~1e-7 relative errors in it, which the eigensolver's residuals (1e-13)
    # cannot see; the bounds add the products' error (their asymmetry)
    rng = np.random.default_rng(0)
    p = {
        "a": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=7)),
        "c": jnp.asarray(rng.normal(size=40)),
    }
    x = jnp.asarray(rng.normal(size=(9, 5)))
    exact = np.asarray(ht.hessian(_mixed_loss, jax.tree.map(lambda a: a.astype(jnp.float64), p), x))
    r = ht.eigenpairs(ht.HessianOperator(_mixed_loss, p, x), 4, method="dense")
    w = np.linalg.eigvalsh(exact)[::-1][:4]
    assert np.max(np.abs(np.asarray(r.values) - w)) > 1e-9  # the float32 layer shows
    assert np.all(np.abs(np.asarray(r.values) - w) <= np.asarray(r.error_bounds))
    # the same for a block of both kinds of leaves (block_spectra's dense path)
    (block,) = ht.block_spectra(_mixed_loss, p, x, blocks={"ab": "'a'|'b'"}, k=2)
    w_ab = np.linalg.eigvalsh(exact[:22, :22])[::-1][:2]
    assert np.all(np.abs(np.asarray(block.values) - w_ab) <= np.asarray(block.error_bounds))
    # float64 products: the bounds stay at the dtype's rounding
    p64 = jax.tree.map(lambda a: a.astype(jnp.float64), p)
    r64 = ht.eigenpairs(ht.HessianOperator(_mixed_loss, p64, x), 4, method="dense")
    assert np.all(np.asarray(r64.error_bounds) <= 1e-12 * np.max(np.abs(w)))
