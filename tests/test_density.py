"""Stochastic Lanczos quadrature against exact spectra."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import mlp_loss, mlp_problem, sym_with_spectrum

from hessian_tools.density import rademacher_probes, spectral_density
from hessian_tools.operators import HessianOperator

N = 300
SPECTRUM = np.concatenate(
    [[12.0, 9.0], np.random.default_rng(0).normal(0.5, 0.4, 208), np.linspace(-3, -0.5, 90)]
)


@pytest.fixture(scope="module")
def matrix():
    return sym_with_spectrum(SPECTRUM)


@pytest.fixture(scope="module")
def slq(matrix):
    return spectral_density(matrix, key=jax.random.PRNGKey(0), num_matvecs=1920, num_probes=64)


def test_weights_are_squared_first_components(matrix, slq):
    # per probe, Gauss quadrature with 30 nodes integrates degree <= 59 exactly:
    # sum_i w_i theta_i^k = v^T A^k v / v^T v. Weights taken from any other
    # row of T's eigenvectors fail this.
    probes = np.asarray(rademacher_probes(jax.random.PRNGKey(0), 64, N, jnp.float64))
    a = np.asarray(matrix)
    nodes, weights = np.asarray(slq.nodes), np.asarray(slq.weights)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-12)
    for k in range(5):
        exact = np.einsum("pi,ij,pj->p", probes, np.linalg.matrix_power(a, k), probes) / N
        np.testing.assert_allclose(np.sum(weights * nodes**k, 1), exact, rtol=1e-9)


def test_moments_match_normalised_traces(matrix):
    # 8 steps integrate degree <= 15 exactly per probe, so only probe noise
    # remains; 256 probes, tolerance 4 standard errors
    slq = spectral_density(matrix, key=jax.random.PRNGKey(1), num_matvecs=2048, num_probes=256)
    for k in range(5):
        exact = np.mean(SPECTRUM**k)
        value, stderr = slq.moment(k)
        if k == 0:
            assert value == pytest.approx(1.0) and stderr < 1e-12
        else:  # unbiased with a calibrated error bar: within 4 standard errors
            assert abs(value - exact) <= 4 * stderr + 1e-12
            assert stderr < 0.1 * np.mean(np.abs(SPECTRUM) ** k)


def test_cdf_density_and_negative_fraction(slq):
    x = np.linspace(-5, 15, 2001)
    f = slq.cdf(x)
    assert f[0] == 0.0 and f[-1] == pytest.approx(1.0)
    assert np.all(np.diff(f) >= 0)
    exact_cdf = np.mean(SPECTRUM[None, :] <= x[:, None], axis=1)
    w1 = np.trapezoid(np.abs(f - exact_cdf), x)
    assert w1 < 1e-2 * (SPECTRUM.max() - SPECTRUM.min())
    grid, density = np.asarray(slq.grid), np.asarray(slq.density)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-3)
    assert slq.sigma == pytest.approx(1e-3 * (slq.lambda_max - slq.lambda_min))
    value, stderr = slq.negative_fraction()
    exact = np.mean(SPECTRUM < -1e-3 * SPECTRUM.max())
    assert abs(value - exact) <= 4 * stderr + 0.02
    assert slq.num_matvecs == 30 * 64
    assert slq.lambda_max == pytest.approx(12.0, rel=1e-8)


def loss(p, a):
    x = jnp.concatenate([p["w"]["a"].ravel(), p["b"]])
    return 0.5 * x @ (a @ x) + 0.1 * jnp.sum(jnp.cos(x))


def test_operator_pytree_chunks_and_batches_agree():
    n = 40
    a = sym_with_spectrum(np.linspace(-2, 3, n), 1)
    params = {"w": {"a": jnp.ones((3, 4)) * 0.1}, "b": jnp.linspace(0, 1, n - 12)}
    op = HessianOperator(loss, params, a)
    key = jax.random.PRNGKey(3)
    whole = spectral_density(op, key=key, num_matvecs=50, num_probes=5)
    chunked = spectral_density(op, key=key, num_matvecs=50, num_probes=5, chunk_size=2)
    np.testing.assert_allclose(np.asarray(chunked.nodes), np.asarray(whole.nodes), atol=1e-10)
    batched = HessianOperator(loss, params, batches=[(a,)])  # the scanned path
    looped = spectral_density(batched, key=key, num_matvecs=50, num_probes=5)
    np.testing.assert_allclose(np.asarray(looped.nodes), np.asarray(whole.nodes), atol=1e-10)
    np.testing.assert_allclose(np.asarray(looped.weights), np.asarray(whole.weights), atol=1e-10)


def test_breakdown_probe_low_rank():
    rng = np.random.default_rng(2)
    b = rng.normal(size=(60, 3))
    d = spectral_density(
        jnp.asarray(b @ b.T), key=jax.random.PRNGKey(0), num_matvecs=80, num_probes=4
    )
    assert d.num_matvecs < 20 * 4
    assert np.all(np.isfinite(np.asarray(d.nodes)))
    np.testing.assert_allclose(np.asarray(d.weights).sum(1), 1.0, rtol=1e-12)
    # 57 of 60 eigenvalues are zero
    assert d.cdf(1e-6) - d.cdf(-1e-6) == pytest.approx(57 / 60, abs=0.1)


def test_bad_input():
    a = jnp.eye(5)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="num_matvecs must be >= 12"):
        spectral_density(a, key=key, num_matvecs=0)
    with pytest.raises(ValueError, match="steps per probe must be <= n = 5"):
        spectral_density(a, key=key, num_matvecs=72)
    with pytest.raises(ValueError, match="num_probes"):
        spectral_density(a, key=key, num_matvecs=0, num_probes=0)
    # num_steps (the API contract's name): Lanczos steps per probe
    fixed = spectral_density(jnp.diag(jnp.arange(1.0, 6.0)), key=key, num_steps=3, num_probes=2)
    assert fixed.num_matvecs == 6
    with pytest.raises(ValueError, match="num_steps"):
        spectral_density(a, key=key, num_steps=0)
    with pytest.raises(ValueError, match="sigma"):
        spectral_density(a, key=key, num_matvecs=36, sigma=-1.0)
    with pytest.raises(ValueError, match="grid"):
        spectral_density(a, key=key, num_matvecs=36, grid=[1.0, 0.0])


# --------------------------------------------------------------------------
# The digits MLP (64-32-10 tanh, n = 2,410): default settings against the
# exact spectrum of the float64 Hessian.


def digits_problem(adam_steps):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = jnp.asarray(x / 16.0, jnp.float32)
    y = jax.nn.one_hot(jnp.asarray(y), 10, dtype=jnp.float32)
    key = jax.random.PRNGKey(0)
    params = []
    for i, o in itertools.pairwise((64, 32, 10)):
        key, k1, k2 = jax.random.split(key, 3)
        bound = 1 / np.sqrt(i)
        params.append(
            (
                jax.random.uniform(k1, (i, o), jnp.float32, -bound, bound),
                jax.random.uniform(k2, (o,), jnp.float32, -bound, bound),
            )
        )

    @jax.jit
    def adam(p, m, v, t, x, y):
        g = jax.grad(mlp_loss)(p, x, y)
        m = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree.map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        return (
            jax.tree.map(
                lambda p_, a, b: (
                    p_ - 1e-3 * (a / (1 - 0.9**t)) / (jnp.sqrt(b / (1 - 0.999**t)) + 1e-8)
                ),
                p,
                m,
                v,
            ),
            m,
            v,
        )

    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    for t in range(1, adam_steps + 1):
        params, m, v = adam(params, m, v, t, x, y)
    return params, x, y


@pytest.mark.slow
@pytest.mark.parametrize("adam_steps", [0, 200])
def test_defaults_on_digits_mlp(adam_steps):
    params, x, y = digits_problem(adam_steps)
    op64 = HessianOperator(
        mlp_loss,
        jax.tree.map(lambda a: a.astype(jnp.float64), params),
        x.astype(jnp.float64),
        y.astype(jnp.float64),
    )
    ev = np.linalg.eigvalsh(np.asarray(op64.to_dense()))
    assert ev.size == 2410
    width = ev[-1] - ev[0]
    d = spectral_density(HessianOperator(mlp_loss, params, x, y), key=jax.random.PRNGKey(0))
    grid = np.linspace(ev[0] - 0.01 * width, ev[-1] + 0.01 * width, 200_001)
    exact_cdf = np.searchsorted(ev, grid, side="right") / ev.size
    w1 = np.trapezoid(np.abs(d.cdf(grid) - exact_cdf), grid)
    assert w1 <= 3e-3 * width
    exact = np.mean(ev < -1e-3 * ev[-1])
    value, _ = d.negative_fraction()
    assert abs(value - exact) <= 0.03


@pytest.mark.slow
@pytest.mark.default_xla  # a miscompilation guard
def test_vmapped_loop_matches_python_hvps_on_85k_mlp():
    # jaxlib 0.10.2 miscompiled HVP reductions in jitted loops (see the README):
    # per probe, sum_i w_i theta_i = T[0, 0] = z.Hz / n, checked against a
    # Python loop of jitted HVPs.
    params, x, y = mlp_problem()
    op = HessianOperator(mlp_loss, params, x, y)
    key = jax.random.PRNGKey(0)
    d = spectral_density(op, key=key, num_matvecs=12, num_probes=3)
    probes = rademacher_probes(key, 3, op.n, jnp.float32)
    ref = [
        np.dot(np.asarray(z, np.float64), np.asarray(op.matvec(z), np.float64)) / op.n
        for z in probes
    ]
    got = np.sum(np.asarray(d.weights, np.float64) * np.asarray(d.nodes, np.float64), axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-4)
