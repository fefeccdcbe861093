"""Derivatives of eigenvalues (jax.grad / jax.jvp of eigenpairs(...).values)
against finite differences of the dense float64 Hessian's eigenvalues."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import dense_reference, mlp_loss, mlp_problem

import hessian_tools as ht

# a pytest of its own on the other core (tests/_background.py)
pytestmark = pytest.mark.other_core


@pytest.fixture(scope="module")
def problem():
    return mlp_problem((3, 5, 2), samples=24, dtype=jnp.float64)


def _lmax(params, x, y, which="largest"):
    op = ht.HessianOperator(mlp_loss, params, x, y)
    return ht.eigenpairs(op, 1, which=which, method="lanczos", rtol=1e-12).values[0]


def _dense_lambda(params, x, y, which):
    w = np.linalg.eigvalsh(dense_reference(mlp_loss, params, x, y))
    return w[-1] if which == "largest" else w[0]


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_gradient_matches_finite_differences_of_the_dense_eigenvalue(problem, which):
    params, x, y = problem
    grad = jax.grad(_lmax)(params, x, y, which)
    rng = np.random.default_rng(1)
    d = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
    h = 1e-5
    plus = jax.tree.map(lambda p, e: p + h * e, params, d)
    minus = jax.tree.map(lambda p, e: p - h * e, params, d)
    fd = (_dense_lambda(plus, x, y, which) - _dense_lambda(minus, x, y, which)) / (2 * h)
    directional = sum(
        float(jnp.vdot(g, e))
        for g, e in zip(jax.tree.leaves(grad), jax.tree.leaves(d), strict=True)
    )
    np.testing.assert_allclose(directional, fd, rtol=1e-5, atol=1e-8)
    # jvp agrees, and the data are differentiable operands too
    _, tangent = jax.jvp(lambda p: _lmax(p, x, y, which), (params,), (d,))
    np.testing.assert_allclose(float(tangent), directional, rtol=1e-8)
    dx = jax.grad(lambda x: _lmax(params, x, y, which))(x)
    e = jnp.asarray(rng.normal(size=x.shape))
    fdx = (
        _dense_lambda(params, x + h * e, y, which) - _dense_lambda(params, x - h * e, y, which)
    ) / (2 * h)
    np.testing.assert_allclose(float(jnp.vdot(dx, e)), fdx, rtol=1e-5, atol=1e-8)


def test_sharpness_penalty_inside_a_jitted_training_step(problem):
    params, x, y = problem

    @jax.jit
    def step(p):
        penalised = lambda p: mlp_loss(p, x, y) + 0.1 * _lmax(p, x, y)
        g = jax.grad(penalised)(p)
        return jax.tree.map(lambda a, b: a - 0.05 * b, p, g)

    sharp = [float(_dense_lambda(params, x, y, "largest"))]
    for _ in range(20):
        params = step(params)
        sharp.append(float(_dense_lambda(params, x, y, "largest")))
    assert np.all(np.isfinite(sharp)) and sharp[-1] < sharp[0]


def test_a_repeated_eigenvalue_has_no_derivative():
    mv = lambda v, a: a @ v
    a = jnp.diag(jnp.array([3.0, 3.0, 1.0, 0.5, 0.2]))

    def top_two(a):
        op = ht.MatvecOperator(mv, jnp.zeros(5), a)
        return jnp.sum(ht.eigenpairs(op, 2, method="lanczos", rtol=1e-12).values)

    # one copy returned, the other found by the completeness check
    with (
        pytest.warns(RuntimeWarning, match="completeness check"),
        pytest.raises(ValueError, match="repeated eigenvalue has no derivative"),
    ):
        jax.grad(top_two)(a)
    # both copies returned (started from both eigenvectors): equal within their bounds
    both = lambda a: (
        ht.eigenpairs(
            ht.MatvecOperator(mv, jnp.zeros(5), a),
            2,
            method="lanczos",
            rtol=1e-12,
            v0=jnp.eye(5)[:, :2],
        ).values
    )
    assert np.allclose(both(a), 3.0)
    with pytest.raises(ValueError, match="equal within their error bounds"):
        jax.grad(lambda a: jnp.sum(both(a)))(a)
    # simple ones differentiate: d lambda_1 / dA = v v^T
    b = jnp.diag(jnp.array([4.0, 3.0, 1.0, 0.5, 0.2]))
    g = jax.grad(
        lambda a: ht.eigenpairs(
            ht.MatvecOperator(mv, jnp.zeros(5), a), 1, method="lanczos", rtol=1e-12
        ).values[0]
    )(b)
    np.testing.assert_allclose(g, np.diag([1.0, 0, 0, 0, 0]), atol=1e-6)
