"""eigenpairs(): exact dense path and thick-restart Lanczos against float64
eigh, certified error bounds, warm starts, jit, and the method rule."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import (
    TraceCounter,
    dense_reference,
    eigh_reference,
    mlp_loss,
    mlp_problem,
    nested_params,
    quartic_loss,
    select_reference,
    sym_with_spectrum,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import hessian_tools as ht
from hessian_tools.eigen import check_symmetric, eigenpairs
from hessian_tools.operators import HessianOperator

# clustered (1e-3 apart), negative, and a bulk
SPECTRUM = np.concatenate(
    [[9.0, 8.0, 7.999, 7.998, -6.0, -5.999, -4.0], np.random.default_rng(0).uniform(-1, 1, 193)]
)


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
@pytest.mark.parametrize("k", [1, 4])
def test_lanczos_matches_eigh_within_its_bounds(which, k):
    a = sym_with_spectrum(SPECTRUM)
    r = eigenpairs(a, k, which=which, method="lanczos", rtol=1e-10)
    assert r.converged and not r.exact
    ref = eigh_reference(a, k, which)
    err = np.abs(np.asarray(r.values) - ref)
    bounds = np.asarray(r.error_bounds)
    assert np.all(err <= bounds + 1e-13), (err, bounds)
    # the requested accuracy, plus the solver's rounding (4 eps ||A||)
    assert np.all(bounds <= 1e-10 * np.abs(ref) + 4 * np.finfo(np.float64).eps * 9 * 1.01)
    v = np.asarray(r.vectors)
    assert v.shape == (200, k)
    np.testing.assert_allclose(v.T @ v, np.eye(k), atol=1e-6)
    true = np.linalg.norm(np.asarray(a) @ v - v * np.asarray(r.values), axis=0)
    np.testing.assert_allclose(np.asarray(r.residuals), true, atol=1e-10)
    assert r.norm_estimate == pytest.approx(9.0)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    which=st.sampled_from(["largest", "smallest", "both"]),
    kind=st.sampled_from(["clustered", "repeated", "negative", "close"]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_error_bounds_hold(seed, which, kind, dtype):
    # four eigenvalues at each end stand out of a bulk in [-1, 1]: the bounds
    # assume the wanted end is resolved, none of its eigenvalues missed
    rng = np.random.default_rng(seed)
    bulk = rng.uniform(-1, 1, 150)
    ends = {
        "clustered": [5.0, 5.0 - 1e-4, 5.0 - 2e-4, 4.0, -3.0, -3.0 + 1e-4, -2.5, -2.0],
        "repeated": [5.0, 5.0, 5.0, 4.0, -3.0, -3.0, -3.0, -2.0],
        "negative": [-1.2, -1.3, -1.35, -1.5, -9.0, -8.0, -7.5, -7.0],
        "close": [1.5, 1.4, 1.3, 1.2, -1.2, -1.25, -1.3, -1.4],
    }[kind]
    w = np.concatenate([ends, bulk - 2.0 if kind == "negative" else bulk])
    a = sym_with_spectrum(w, seed, dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = eigenpairs(a, 4, which=which, method="lanczos", key=jax.random.PRNGKey(seed))
    exact = np.linalg.eigvalsh(np.asarray(a, np.float64))
    values = np.asarray(r.values, np.float64)
    if kind == "repeated":
        # single-vector Lanczos sees one copy of an exactly repeated
        # eigenvalue: each value is certified against the nearest eigenvalue
        err = np.min(np.abs(values[:, None] - exact[None, :]), axis=1)
    else:
        err = np.abs(values - select_reference(exact, 4, which))
    slack = 10 * np.finfo(dtype).eps * np.max(np.abs(w))  # rounding of the matrix itself
    assert np.all(err <= np.asarray(r.error_bounds, np.float64) + slack), (err, r.error_bounds)
    if kind == "repeated" and r.complete is False:
        # the completeness check sees the copy the Krylov space could not
        # hold, and says so rather than calling the list converged
        assert not r.converged and any("completeness" in str(c.message) for c in caught)
    else:
        assert r.converged and r.complete and not caught


def test_largest_is_algebraic_and_smallest_is_most_negative():
    a = sym_with_spectrum(np.concatenate([[-20.0, 3.0, 2.0], np.linspace(-1, 1, 197)]))
    top = eigenpairs(a, 2, method="lanczos")
    np.testing.assert_allclose(np.asarray(top.values), [3.0, 2.0], rtol=1e-7)
    bottom = eigenpairs(a, 1, which="smallest", method="lanczos")
    np.testing.assert_allclose(np.asarray(bottom.values), [-20.0], rtol=1e-7)
    both = eigenpairs(a, 2, which="both", method="lanczos")
    np.testing.assert_allclose(np.asarray(both.values), [-20.0, 3.0], rtol=1e-7)
    assert both.converged


def test_no_ghosts_of_outlier_float32():
    rng = np.random.default_rng(1)
    a = sym_with_spectrum(np.concatenate([[50.0], rng.uniform(-1, 1, 199)]), 1, np.float32)
    r = eigenpairs(a, 5, method="lanczos", max_matvecs=400)
    values = np.asarray(r.values)
    assert abs(values[0] - 50) < 1e-4 * 50
    assert np.all(values[1:] < 1.0 + 1e-3)  # no second copy of the outlier


def test_low_rank_and_zero_matrix_continue_after_breakdown():
    rng = np.random.default_rng(2)
    b = rng.normal(size=(200, 2))
    a = jnp.asarray(b @ b.T)
    r = eigenpairs(a, 4, method="lanczos", rtol=1e-10)
    assert r.converged
    np.testing.assert_allclose(np.asarray(r.values), eigh_reference(a, 4, "largest"), atol=1e-9)
    z = eigenpairs(jnp.zeros((200, 200)), 3, which="both", method="lanczos")
    assert z.converged and np.all(np.asarray(z.values) == 0)
    assert np.all(np.isfinite(np.asarray(z.vectors)))


def test_budget_exhausted_reports_not_converged():
    a = sym_with_spectrum(np.linspace(0, 1, 200))  # no gaps: slow convergence
    r = eigenpairs(a, 3, method="lanczos", max_matvecs=12, rtol=1e-12)
    assert not r.converged and r.num_matvecs == 12
    assert np.all(np.asarray(r.residuals) > 0)


class _Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, *_):
        self.calls += 1


def test_num_matvecs_is_honest_and_true_residuals_agree():
    a = sym_with_spectrum(SPECTRUM, 3)
    counter = _Counter()

    def mv(v, a):
        jax.debug.callback(counter, v[0])  # runs once per executed product
        return a @ v

    op = ht.MatvecOperator(mv, jnp.zeros(200), a, batching="map")
    r = eigenpairs(op, 3, which="both", method="lanczos", max_basis=12, true_residuals=True)
    jax.effects_barrier()
    assert r.num_restarts > 0
    assert r.num_matvecs == counter.calls
    np.testing.assert_allclose(np.asarray(r.values), eigh_reference(a, 3, "both"), atol=1e-7)
    est = eigenpairs(op, 3, which="both", method="lanczos", max_basis=12)
    np.testing.assert_allclose(np.asarray(est.residuals), np.asarray(r.residuals), atol=1e-12)


def test_hessian_operator_with_nested_params():
    n = 60
    a = sym_with_spectrum(np.linspace(-3, 4, n), 4)
    params = nested_params(n, 4)
    loss = TraceCounter(quartic_loss)
    op = HessianOperator(loss, params, a)
    exact = np.linalg.eigvalsh(np.asarray(op.to_dense()))
    r = eigenpairs(op, 3, which="smallest", method="lanczos", rtol=1e-10)
    np.testing.assert_allclose(np.asarray(r.values), exact[:3], atol=1e-8)
    assert np.all(np.asarray(r.values) < 0)
    assert jax.tree.structure(r.tree_vectors) == jax.tree.structure(params)
    assert r.tree_vectors["layer"]["w"].shape == (3, 4, 5)
    dense = eigenpairs(op, 3, which="smallest", method="dense")
    assert dense.exact and dense.num_matvecs == n
    np.testing.assert_allclose(np.asarray(dense.values), exact[:3], atol=1e-10)
    # a new operator at another point reuses the compiled solver: no new trace
    traced = loss.count
    op2 = HessianOperator(loss, jax.tree.map(lambda x: x + 0.1, params), a)
    eigenpairs(op2, 3, which="smallest", method="lanczos", rtol=1e-10)
    assert loss.count == traced


def test_dense_path_repeated_eigenvalues():
    a = sym_with_spectrum(np.array([5.0, 5.0, 5.0, 1.0, -2.0, -2.0]))
    r = eigenpairs(a, 4)
    assert r.exact and r.converged
    np.testing.assert_allclose(np.asarray(r.values), [5, 5, 5, 1], atol=1e-12)


def test_method_rule_never_pays_the_dense_price_by_surprise():
    # n = 1,500: the top eigenpair must not cost n HVPs
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(50, 30)))
    params = {"w": jnp.asarray(rng.normal(size=(30, 50)) * 0.2)}
    op = HessianOperator(lambda p, x: jnp.mean(jnp.tanh(x @ p["w"]) ** 2), params, x)
    assert op.n == 1500
    r = eigenpairs(op, 1)
    assert not r.exact and r.num_matvecs <= 40 and r.converged
    small = HessianOperator(lambda p: jnp.sum(jnp.cosh(p)), jnp.linspace(0, 1, 20))
    assert eigenpairs(small, 1).exact  # n = 20 products are cheaper than a basis


def test_warm_start_from_an_eigenvector():
    a = sym_with_spectrum(SPECTRUM, 7)
    cold = eigenpairs(a, 1, method="lanczos")
    warm = eigenpairs(a, 1, method="lanczos", v0=cold.vectors[:, 0])
    # the start is good to a residual of ~1e-4: the quadratic bound needs
    # min_columns(1) = 6 columns of its own, and the completeness check 6 HVPs
    assert warm.converged and warm.complete and warm.num_matvecs <= 12 < cold.num_matvecs
    np.testing.assert_allclose(float(warm.values[0]), 9.0, rtol=1e-10)


def test_jit_gives_the_eager_values():
    n = 60
    a = sym_with_spectrum(np.linspace(-3, 4, n), 4)
    params = nested_params(n, 4)

    @jax.jit
    def top(params, a):
        op = HessianOperator(quartic_loss, params, a)
        r = eigenpairs(op, 2, method="lanczos", key=jax.random.PRNGKey(3))
        return r.values, r.error_bounds, r.converged, r.num_matvecs

    values, bounds, converged, spent = top(params, a)
    eager = eigenpairs(
        HessianOperator(quartic_loss, params, a), 2, key=jax.random.PRNGKey(3), method="lanczos"
    )
    # eagerly the random start is drawn on the host (numpy), under jit in the
    # program (jax.random): two certified solves of one operator, each within
    # its bounds of the dense Hessian's eigenvalues at the same point
    truth = eigh_reference(dense_reference(quartic_loss, params, a), 2, "largest")
    for got, bound in ((values, bounds), (eager.values, eager.error_bounds)):
        assert np.all(np.abs(np.asarray(got) - truth) <= np.asarray(bound))
        assert np.all(np.asarray(bound) <= 1e-8 * np.abs(truth))
    # eagerly the completeness check adds its HVPs (15%, at least 6); under
    # jit it is skipped (the two solves may differ by a step or two)
    assert bool(converged) == eager.converged
    assert 6 - 2 <= eager.num_matvecs - int(spent) <= max(6, 0.15 * int(spent) + 1) + 2
    assert eager.complete


def test_symmetry_check():
    a = sym_with_spectrum(np.linspace(1, 2, 200))
    assert check_symmetric(a) < 1e-12
    r = eigenpairs(a, 1, method="lanczos", check_symmetry=True)
    plain = eigenpairs(a, 1, method="lanczos")
    assert r.num_matvecs == plain.num_matvecs + 2
    skew = a.at[0, 1].add(1.0)
    with pytest.raises(ValueError, match="symmetric"):
        eigenpairs(skew, 1, method="lanczos", check_symmetry=True)


def test_the_residual_tolerance_of_earlier_versions_is_gone():
    with pytest.raises(TypeError, match="tol"):  # no deprecation shims before 1.0
        eigenpairs(sym_with_spectrum(SPECTRUM), 2, method="lanczos", tol=1e-10)


def test_bad_input():
    a = jnp.eye(10)
    with pytest.raises(ValueError, match="dense"):
        eigenpairs(a, 10, method="lanczos")
    with pytest.raises(ValueError, match="k must be >= 1"):
        eigenpairs(a, 0)
    with pytest.raises(ValueError, match="which"):
        eigenpairs(a, 1, which="top")
    with pytest.raises(ValueError, match="method"):
        eigenpairs(a, 1, method="arpack")
    with pytest.raises(ValueError, match="max_matvecs"):
        eigenpairs(a, 3, method="lanczos", max_matvecs=2)
    with pytest.raises(ValueError, match="square"):
        eigenpairs(jnp.ones((3, 4)), 1)
    with pytest.raises(ValueError, match="rtol"):
        eigenpairs(a, 1, rtol=0.0)
    with pytest.raises(ValueError, match="nonzero"):
        eigenpairs(a, 1, method="lanczos", v0=jnp.zeros(10))
    with pytest.raises(ValueError, match="length n = 10"):
        eigenpairs(a, 1, method="lanczos", v0=jnp.ones(3))
    with pytest.raises(TypeError, match="MatvecOperator"):
        eigenpairs(lambda v: v, 1)


def test_k_out_of_range():
    a = jnp.eye(3)
    with pytest.raises(ValueError, match="k"):
        eigenpairs(a, 4)
    with pytest.raises(ValueError, match="k"):
        eigenpairs(a, 0)


# --------------------------------------------------------------------------
# The bounds on a network Hessian (the 2,410-parameter digits-shaped MLP)


@functools.cache
def _mlp_spectrum(dtype) -> np.ndarray:
    """eigvalsh of the dense float64 Hessian at the MLP's point in ``dtype``
    (the float32 point, rounded, is another point): shared by both ends."""
    as64 = jax.tree.map(
        lambda t: t.astype(jnp.float64), mlp_problem((64, 32, 10), dtype=jnp.dtype(dtype))
    )
    return np.linalg.eigvalsh(np.asarray(HessianOperator(mlp_loss, *as64).to_dense()))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("which,k", [("largest", 10), ("smallest", 5)])
def test_error_bounds_hold_on_an_mlp(dtype, which, k):
    params, x, y = mlp_problem((64, 32, 10), dtype=dtype)
    op = HessianOperator(mlp_loss, params, x, y)
    assert op.n == 2410
    exact = _mlp_spectrum(jnp.dtype(dtype).name)
    r = eigenpairs(op, k, which=which, method="lanczos")
    err = np.abs(np.asarray(r.values, np.float64) - select_reference(exact, k, which))
    # the bounds are on the operator as evaluated: its HVPs (a mean over 1,797
    # samples, linearised) and the dense reference's (jvp of grad) differ by
    # their rounding, measured at ~20 eps ||H|| in float64
    slack = 100 * np.finfo(dtype).eps * np.max(np.abs(exact))
    assert np.all(err <= np.asarray(r.error_bounds, np.float64) + slack), (err, r.error_bounds)
