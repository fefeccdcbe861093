"""Trace and diagonal estimators against exact values (float64, dense references)."""

import functools
import itertools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from _util import mlp_loss, mlp_problem, sym_with_spectrum
from hypothesis import given
from hypothesis import strategies as st

from hessian_tools import _deflation, _krylov
from hessian_tools._deflation import krylov_shape
from hessian_tools._hutchinson import DeflatedQuad, Products, Samples, project_out, quad, sequential
from hessian_tools._operator import as_linear_map
from hessian_tools._progress import progress_bar
from hessian_tools.estimators import Estimate, _deflate, diagonal, trace
from hessian_tools.operators import HessianOperator, MatvecOperator

TRACE_METHODS = ["krylov", "hutch++", "hutchinson", "xtrace"]
DIAG_METHODS = ["krylov", "diag++", "hutchinson"]


def outlier_matrix(n=400, seed=0):
    """A few large outliers over a bulk of small mixed-sign eigenvalues, like
    the Hessian of a trained network."""
    rng = np.random.default_rng(seed)
    lam = np.concatenate([[200.0, 120.0, 80.0, 50.0, 30.0], rng.uniform(-0.05, 0.2, n - 5)])
    return sym_with_spectrum(lam, seed)


def rel_errors(a, method, m, seeds, fn=trace):
    exact = float(jnp.trace(a))
    return np.array(
        [
            abs(float(fn(a, key=jax.random.PRNGKey(s), num_matvecs=m, method=method).value) - exact)
            / abs(exact)
            for s in range(seeds)
        ]
    )


# --------------------------------------------------------------------------
# Trace


@pytest.mark.parametrize("method", ["krylov", "hutch++", "xtrace"])
def test_trace_converges_on_decaying_spectrum(method):
    # lambda_i = i^-2: deflation captures almost everything; 1e-3 within 120 products
    a = sym_with_spectrum(1.0 / np.arange(1, 501) ** 2)
    errs = rel_errors(a, method, 120, seeds=5)
    assert np.max(errs) < 1e-3, errs


def test_hutchinson_converges_like_one_over_sqrt_m():
    a = outlier_matrix()
    exact = float(jnp.trace(a))
    # error ~ ||A||_F sqrt(2/m): check the mean squared error over seeds shrinks
    mse = []
    for m in (20, 320):
        vals = [
            float(trace(a, key=jax.random.PRNGKey(s), num_matvecs=m, method="hutchinson").value)
            for s in range(20)
        ]
        mse.append(np.mean((np.array(vals) - exact) ** 2))
    assert mse[1] < mse[0] / 6  # 16x more products: ideally 16x smaller


def test_deflated_methods_beat_hutchinson_with_outliers():
    a = outlier_matrix()
    med = {m: np.median(rel_errors(a, m, 60, seeds=8)) for m in TRACE_METHODS}
    assert med["hutch++"] < med["hutchinson"] / 3, med
    assert med["krylov"] < med["hutchinson"] / 3, med
    assert med["xtrace"] < med["hutchinson"] / 3, med


def _beyond_two_sigma(fn, method, exact, seeds=120):
    """The fraction of |estimate - exact| > 2 stderr over seeds (and over
    coordinates for the diagonal)."""
    a = outlier_matrix(400, seed=1)
    z = [
        (np.asarray(e.value) - exact) / np.asarray(e.stderr)
        for e in (
            fn(a, key=jax.random.PRNGKey(1000 + s), num_matvecs=60, method=method)
            for s in range(seeds)
        )
    ]
    return float(np.mean(np.abs(np.concatenate([np.ravel(x) for x in z])) > 2))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fn", "method"),
    [(trace, m) for m in ("krylov", "hutch++", "hutchinson")]
    + [(diagonal, m) for m in DIAG_METHODS],
)
def test_stderr_is_calibrated_over_120_seeds(fn, method):
    # a calibrated stderr leaves 5% of the estimates beyond 2 sigma; the
    # target is 5% +- 3% (measured on these seeds: krylov and hutch++ 3.3%,
    # hutchinson 3-6%, diagonal 5-7%)
    a = outlier_matrix(400, seed=1)
    exact = np.trace(np.asarray(a)) if fn is trace else np.diag(np.asarray(a))
    assert 0.02 <= _beyond_two_sigma(fn, method, exact) <= 0.08


@pytest.mark.parametrize("method", TRACE_METHODS)
def test_trace_stderr_is_calibrated(method):
    # XTrace's stderr (the spread of its exchangeable estimates, as its paper
    # defines it) runs a little narrow: 6-10% beyond 2 sigma over 300 seeds
    a = outlier_matrix(400, seed=1)
    exact = float(jnp.trace(a))
    z = []
    for s in range(30):
        est = trace(a, key=jax.random.PRNGKey(100 + s), num_matvecs=60, method=method)
        assert est.num_matvecs == 60 and est.method == method
        z.append(abs(float(est.value) - exact) / float(est.stderr))
    z = np.array(z)
    assert np.mean(z < 3) >= 0.85, z
    assert np.mean(z < 0.5) >= 0.1, z  # not wildly over-estimated either


def flat_basis(a, vectors):
    """Orthonormal columns as the stacked basis the deflated estimators keep."""
    layout = as_linear_map(a).layout
    return layout.flatten_leaves(layout.unravel(jnp.asarray(vectors.T))), layout


def test_deflated_stderr_is_unbiased_for_the_rademacher_variance():
    # all 2^5 Rademacher vectors, all 32^2 pairs of probes: the mean of the
    # variance estimate is exactly Var(z^T B z) = 2 (||B||_F^2 - sum_k B_kk^2)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 5))
    a = a + a.T
    v = np.linalg.qr(rng.standard_normal((5, 1)))[0]
    proj = np.eye(5) - v @ v.T
    b = proj @ a @ proj
    exact = 2 * (np.sum(b**2) - np.sum(np.diag(b) ** 2))
    zs = np.array(np.meshgrid(*[[-1.0, 1.0]] * 5)).reshape(5, -1).T
    np.testing.assert_allclose(np.var(np.einsum("ij,jk,ik->i", zs, b, zs)), exact, rtol=1e-12)
    basis, layout = flat_basis(a, v)
    variances = []
    for i in range(len(zs)):
        for j in range(len(zs)):
            stats = DeflatedQuad(basis, layout)
            for z in (zs[i : i + 1], zs[j : j + 1]):  # two chunks: the running merge
                p = z @ proj
                stats.add(jnp.asarray(z), jnp.asarray(p), jnp.asarray(p @ a))
            mean, err = stats.result()
            assert (
                abs(float(mean) - np.mean(np.einsum("ij,jk,ik->i", zs[[i, j]], b, zs[[i, j]])))
                < 1e-12
            )
            variances.append(2 * float(err) ** 2)  # g = 2 probes
    np.testing.assert_allclose(np.mean(variances), exact, rtol=1e-12)
    assert min(variances) >= 0


def test_deflated_stderr_formula_and_chunks():
    # stderr^2 = 2 sum_k s_k^2 / g, s_k^2 the sample variance of z_k (B z)_k,
    # whether the probes come in one chunk or several
    rng = np.random.default_rng(1)
    a = np.asarray(outlier_matrix(60))
    v = np.linalg.qr(rng.standard_normal((60, 4)))[0]
    proj = np.eye(60) - v @ v.T
    b = proj @ a @ proj
    z = rng.choice([-1.0, 1.0], (9, 60))
    d = z * (z @ b)
    expected = np.sqrt(2 * np.sum(np.var(d, axis=0, ddof=1)) / 9)
    basis, layout = flat_basis(a, v)
    for cuts in ((0, 9), (0, 2, 7, 9), (0, 4, 5, 9)):
        stats = DeflatedQuad(basis, layout)
        for lo, hi in itertools.pairwise(cuts):
            p = z[lo:hi] @ proj
            stats.add(jnp.asarray(z[lo:hi]), jnp.asarray(p), jnp.asarray(p @ a))
        mean, err = stats.result()
        np.testing.assert_allclose(float(mean), np.mean(np.einsum("ij,jk,ik->i", z, b, z)))
        np.testing.assert_allclose(float(err), expected, rtol=1e-10)


def cluster_matrix(n=400, size=21, seed=2):
    """``size`` equal eigenvalues 10 over a small bulk: Hutch++ with m = 60
    (a sketch of 20) leaves exactly one of them in the deflated residual, whose
    samples p^T A p are then ~ 10 chi^2_1, heavily skewed."""
    rng = np.random.default_rng(seed)
    return sym_with_spectrum(
        np.concatenate([np.full(size, 10.0), rng.uniform(-0.05, 0.05, n - size)]), seed
    )


class Both:
    """Feeds each chunk to two accumulators; the result is the second's."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def add(self, *chunk):
        self.first.add(*chunk)
        self.second.add(*chunk)

    def result(self):
        return self.second.result()


def _old_and_new_z(a, method, m, seeds):
    """z = (estimate - trace) / stderr over seeds, with the stderr from the
    spread of the samples (as before) and from ``DeflatedQuad`` (the library's)."""
    lm, exact = as_linear_map(a), float(jnp.trace(a))
    z_old, z_new = [], []
    for s in range(seeds):
        k1, k2 = jax.random.split(jax.random.PRNGKey(s))
        with progress_bar(m, "", False) as bar:
            products = Products(lm, None, bar)
            v, low, g = _deflate(products, k1, m, method, "trace")
            old, new = Samples(quad), DeflatedQuad(v, lm.layout)

            project = functools.partial(project_out, v, layout=lm.layout)
            value, err = sequential(
                products, k2, g, Both(old, new), low, None, jnp.abs, transform=project
            )
        if s < 3:  # the public function: the same value and stderr
            est = trace(a, key=jax.random.PRNGKey(s), num_matvecs=m, method=method)
            np.testing.assert_allclose([est.value, est.stderr], [value, err], rtol=1e-12)
        z_old.append((float(value) - exact) / float(old.result()[1]))
        z_new.append((float(value) - exact) / float(err))
    return np.array(z_old), np.array(z_new)


@pytest.mark.slow
def test_deflated_stderr_is_calibrated_with_a_skewed_residual():
    # the spread of 20 skewed samples is too narrow exactly when their mean is
    # too low: 15.0% of 400 seeds beyond 2 sigma, std(z) 1.44; the stderr
    # from the images of the probes: 6.8%, std(z) 1.03
    z_old, z_new = _old_and_new_z(cluster_matrix(), "hutch++", 60, seeds=400)
    assert np.mean(np.abs(z_old) > 2) > 0.1 and np.std(z_old) > 1.25
    assert 0.02 <= np.mean(np.abs(z_new) > 2) <= 0.08, np.sort(z_new)
    assert 0.85 <= np.std(z_new) <= 1.15


@pytest.mark.parametrize("method", ["krylov", "hutch++"])
def test_trace_under_jit_matches_eager(method):
    a = outlier_matrix(80)
    key = jax.random.PRNGKey(4)
    eager = trace(a, key=key, num_matvecs=24, method=method)
    jitted = jax.jit(lambda m: trace(m, key=key, num_matvecs=24, method=method))(a)
    np.testing.assert_allclose(
        [jitted.value, jitted.stderr], [eager.value, eager.stderr], rtol=1e-10
    )


def xtrace_reference(a, omega):
    """XTrace from its definition (Epperly, Tropp & Webber 2024, eq. (1.6)):
    the mean over i of Hutch++ with the basis of A Omega_{-i} and probe omega_i."""
    a = np.asarray(a)
    ests = []
    for i in range(omega.shape[1]):
        q = np.linalg.qr(a @ np.delete(omega, i, axis=1))[0]
        p = omega[:, i] - q @ (q.T @ omega[:, i])
        ests.append(np.trace(q.T @ a @ q) + p @ a @ p)
    return np.mean(ests), np.std(ests, ddof=1) / np.sqrt(len(ests))


def test_xtrace_matches_its_definition():
    a = outlier_matrix(120)
    key = jax.random.PRNGKey(3)
    est = trace(a, key=key, num_matvecs=21, method="xtrace")
    assert est.num_matvecs == 20  # uses pairs of products
    keys = jax.random.split(key, 10)
    omega = np.asarray(jax.vmap(lambda k: jax.random.rademacher(k, (120,), jnp.float64))(keys)).T
    value, err = xtrace_reference(a, omega)
    np.testing.assert_allclose(float(est.value), value, rtol=1e-10)
    np.testing.assert_allclose(float(est.stderr), err, rtol=1e-8)


@pytest.mark.parametrize("method", TRACE_METHODS)
def test_zero_and_low_rank_matrices_give_finite_results(method):
    zero = jnp.zeros((50, 50))
    est = trace(zero, key=jax.random.PRNGKey(0), num_matvecs=12, method=method)
    assert float(est.value) == 0.0 and np.isfinite(float(est.stderr))
    rng = np.random.default_rng(0)
    u = rng.standard_normal((60, 3))
    low = jnp.asarray(u @ u.T)
    est = trace(low, key=jax.random.PRNGKey(1), num_matvecs=20, method=method)
    assert np.isfinite(float(est.value)) and np.isfinite(float(est.stderr))
    if method != "hutchinson":  # rank 3 is captured by the deflation basis
        np.testing.assert_allclose(float(est.value), np.trace(u @ u.T), rtol=1e-8)


def test_budget_at_least_n_is_exact():
    a = outlier_matrix(30)
    est = trace(a, key=jax.random.PRNGKey(0), num_matvecs=30)
    assert est.method == "exact" and est.num_matvecs == 30 and float(est.stderr) == 0
    np.testing.assert_allclose(float(est.value), float(jnp.trace(a)), rtol=1e-12)


def test_rtol_stops_early_hutchinson():
    # a diagonal matrix: every Hutchinson sample z^T D z equals the trace
    a = jnp.diag(jnp.linspace(1.0, 2.0, 300))
    est = trace(a, key=jax.random.PRNGKey(0), num_matvecs=60, method="hutchinson", rtol=1e-6)
    assert est.num_matvecs < 60
    np.testing.assert_allclose(float(est.value), float(jnp.trace(a)), rtol=1e-10)


@pytest.mark.parametrize("method", ["krylov", "hutch++"])
def test_rtol_stops_early_deflated(method):
    a = outlier_matrix()
    exact = float(jnp.trace(a))
    est = trace(a, key=jax.random.PRNGKey(0), num_matvecs=250, method=method, rtol=3e-3)
    assert est.num_matvecs < 250
    assert float(est.stderr) <= 3e-3 * abs(float(est.value))
    assert abs(float(est.value) - exact) < 4 * float(est.stderr)


def test_trace_of_hessian_operator_with_pytree_params():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((40, 5)))
    params = {"a": {"w": jnp.asarray(rng.standard_normal((5, 6)))}, "b": jnp.ones(6)}

    def f(p, x):
        return jnp.mean(jnp.tanh(x @ p["a"]["w"] + p["b"][None, :]) ** 2)

    op = HessianOperator(f, params, x)
    exact = float(jnp.trace(op.to_dense()))
    est = trace(op, key=jax.random.PRNGKey(0), num_matvecs=op.n)
    np.testing.assert_allclose(float(est.value), exact, rtol=1e-12)
    for method in TRACE_METHODS:
        est = trace(op, key=jax.random.PRNGKey(1), num_matvecs=24, method=method, chunk_size=5)
        assert est.num_matvecs <= 24
        assert abs(float(est.value) - exact) < 5 * float(est.stderr) + 1e-10


def test_krylov_trace_in_one_program_is_the_chunked_estimate(monkeypatch):
    # with a fixed budget the krylov trace is one program (probes, basis,
    # Hutchinson part); chunks smaller than its probes take the chunked path:
    # the same probes, so the same estimate
    programs = []
    one_program = _deflation.krylov_trace
    monkeypatch.setattr(
        _deflation, "krylov_trace", lambda *a, **kw: programs.append(1) or one_program(*a, **kw)
    )
    a = outlier_matrix(200)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((30, 7)))
    params = {"w": jnp.asarray(rng.standard_normal((7, 9))), "v": jnp.ones(9)}
    f = lambda p, x: jnp.mean(jnp.tanh(x @ p["w"] + p["v"][None, :]) ** 2)
    block = HessianOperator(f, params, x).block("w")  # a masked map, n = 63
    # m = 90: 4 basis probes, 42 Hutchinson probes (not a multiple of 4)
    k, depth = krylov_shape(90, "trace")
    assert (90 - k * depth) % k != 0
    for op, m in ((a, 60), (a, 90), (block, 30)):
        one = trace(op, key=jax.random.PRNGKey(3), num_matvecs=m)
        assert programs == [1]
        chunked = trace(op, key=jax.random.PRNGKey(3), num_matvecs=m, chunk_size=2)
        assert programs == [1]
        np.testing.assert_allclose(
            [one.value, one.stderr], [chunked.value, chunked.stderr], rtol=1e-10
        )
        assert one.num_matvecs == chunked.num_matvecs == m
        programs.clear()


def test_a_nonfinite_product_of_the_hutchinson_part_is_refused():
    # NaN for the long vectors of the Hutchinson part only (the basis vectors
    # have norm 1): with m = 20 the basis spends 11 products (one probe,
    # depth 11), then 9 probes: the one program reports products 12 to 20,
    # the chunked path its first chunk of 2
    def matvec(v, a):
        return jnp.where(jnp.sum(v**2) > 2.0, jnp.nan, 1.0) * (a @ v)

    op = MatvecOperator(matvec, jnp.zeros(40), outlier_matrix(40))
    for chunk_size in (None, 2):
        with pytest.raises(FloatingPointError, match=r"NaN or inf \(products 12 to (20|13)\)"):
            trace(op, key=0, num_matvecs=20, chunk_size=chunk_size)


def test_estimate_is_a_pytree():
    est = trace(outlier_matrix(40), key=jax.random.PRNGKey(0), num_matvecs=10)
    assert isinstance(est, Estimate)
    assert len(jax.tree.leaves(est)) == 2
    doubled = jax.jit(lambda e: jax.tree.map(lambda x: 2 * x, e))(est)
    assert doubled.num_matvecs == est.num_matvecs
    np.testing.assert_allclose(float(doubled.value), 2 * float(est.value))


def test_progress_bar_runs(capsys):
    est = trace(outlier_matrix(40), key=jax.random.PRNGKey(0), num_matvecs=12, progress=True)
    assert est.num_matvecs == 12


# --------------------------------------------------------------------------
# Diagonal


@pytest.mark.parametrize("method", DIAG_METHODS)
def test_diagonal_converges(method):
    # strongly decaying spectrum plus a diagonal part
    rng = np.random.default_rng(2)
    a = sym_with_spectrum(1.0 / np.arange(1, 301) ** 1.5) + jnp.diag(rng.uniform(0.5, 1.0, 300))
    exact = np.diag(np.asarray(a))
    est = diagonal(a, key=jax.random.PRNGKey(0), num_matvecs=200, method=method)
    assert est.value.shape == (300,) and est.stderr.shape == (300,)
    err = np.abs(np.asarray(est.value) - exact)
    # budget: 10% relative L2 error with 200 products (Hutchinson does far
    # better here, a diagonal-dominant matrix; the deflated ones waste ~2/3)
    assert np.linalg.norm(err) / np.linalg.norm(exact) < 0.1
    assert np.mean(err < 3 * np.asarray(est.stderr) + 1e-12) > 0.9


def test_deflated_diagonal_beats_hutchinson_with_outliers():
    a = outlier_matrix(300)
    exact = np.diag(np.asarray(a))
    med = {}
    for method in DIAG_METHODS:
        med[method] = np.median(
            [
                np.linalg.norm(diagonal(a, key=s, num_matvecs=60, method=method).value - exact)
                for s in range(5)
            ]
        )
    assert med["krylov"] < med["hutchinson"] / 3 and med["diag++"] < med["hutchinson"] / 3, med


def test_diagonal_exact_path_on_operator():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((30, 4)))
    params = {"w": jnp.asarray(rng.standard_normal((4, 3))), "c": jnp.zeros(3)}

    def f(p, x):
        return jnp.mean(jax.nn.softplus(x @ p["w"] + p["c"][None, :]) ** 2)

    op = HessianOperator(f, params, x)
    est = diagonal(op, key=jax.random.PRNGKey(0), num_matvecs=100)
    assert est.method == "exact" and est.num_matvecs == op.n
    np.testing.assert_allclose(est.value, jnp.diag(op.to_dense()), rtol=1e-10, atol=1e-14)
    assert jax.tree.structure(op.unravel(est.value)) == jax.tree.structure(params)


# --------------------------------------------------------------------------
# Bad input


def test_bad_input_raises_clear_errors():
    a = outlier_matrix(40)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="num_matvecs >= 4"):
        trace(a, key=key, num_matvecs=3, method="hutch++")
    with pytest.raises(ValueError, match="num_matvecs >= 2"):
        diagonal(a, key=key, num_matvecs=1, method="hutchinson")
    with pytest.raises(ValueError, match="method"):
        trace(a, key=key, method="hutch+")
    with pytest.raises(ValueError, match="xtrace"):
        trace(a, key=key, num_matvecs=10, method="xtrace", rtol=0.1)
    with pytest.raises(ValueError, match="rtol"):
        trace(a, key=key, num_matvecs=10, rtol=-1.0)
    with pytest.raises(ValueError, match="square"):
        trace(jnp.ones((3, 4)), key=key)
    # the one key policy: None is PRNGKey(0), as everywhere; a float is refused
    np.testing.assert_array_equal(trace(a, key=None).value, trace(a, key=0).value)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        trace(a, key=1.5)
    with pytest.raises(TypeError, match="num_matvecs"):
        trace(a, key=key, num_matvecs=10.0)
    with pytest.raises(ValueError, match="chunk_size"):
        trace(a, key=key, num_matvecs=10, chunk_size=0)
    with pytest.raises(FloatingPointError, match="NaN"):
        trace(a.at[0, 0].set(jnp.nan), key=key, num_matvecs=10)


# --------------------------------------------------------------------------
# The jaxlib 0.10.2 miscompilation guard (see the README): an 85k-parameter MLP


@pytest.mark.slow
@pytest.mark.default_xla  # a miscompilation guard
def test_trace_on_85k_mlp_matches_python_loop_of_hvps():
    params, x, y = mlp_problem()
    op = HessianOperator(mlp_loss, params, x, y)
    assert op.n >= 85_000
    key = jax.random.PRNGKey(7)
    # Hutchinson: the same probes, each product a separate jitted HVP from Python
    ours = trace(op, key=key, num_matvecs=30, method="hutchinson")
    keys = jax.random.split(key, 30)
    probes = jax.vmap(lambda k: jax.random.rademacher(k, (op.n,), jnp.float32))(keys)
    samples = [float(jnp.vdot(z, op.matvec(z))) for z in probes]
    np.testing.assert_allclose(float(ours.value), np.mean(samples), rtol=1e-4)
    # krylov: tr(V^T A V) from the compiled block-Lanczos loop against the
    # Python loop of HVPs on the same basis
    k, depth = krylov_shape(40)
    lm = op.linear_map()
    basis, spent, _, low, _ = _deflation.krylov_basis(
        lm,
        op.layout.unravel(probes[:k]),
        1e-6,
        None,
        depth=depth,
        acc=jnp.float32,
        diagonal=False,
    )
    flat = np.asarray(op.layout.ravel(_krylov.as_vectors(basis, op.layout)))[: int(spent)]
    ref = sum(float(q @ np.asarray(op.matvec(jnp.asarray(q)), np.float64)) for q in flat)
    np.testing.assert_allclose(float(low), ref, rtol=1e-4)


@given(st.integers(4, 20_000), st.sampled_from(["trace", "diagonal"]))
def test_krylov_split_leaves_probes_for_the_stderr(m, target):
    # the basis may take at most m - 2 products: the Hutchinson part needs two
    # probes for its standard error
    k, depth = krylov_shape(m, target)
    assert k >= 1 and depth >= 1 and m - k * depth >= 2
