"""The preconditioned operator P^-1/2 H P^-1/2 (hessian_tools.preconditioned)
against dense float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _util import mlp_loss, mlp_problem

import hessian_tools as ht


@pytest.fixture(scope="module")
def problem():
    loss = mlp_loss
    params, x, y = mlp_problem(sizes=(4, 6, 3), samples=40, dtype=jnp.float64)
    op = ht.HessianOperator(loss, params, x, y)
    keys = jax.random.split(jax.random.PRNGKey(3), len(jax.tree.leaves(params)))
    leaves = [
        jnp.exp(jax.random.normal(k, leaf.shape, leaf.dtype))
        for k, leaf in zip(keys, jax.tree.leaves(params), strict=True)
    ]
    p = jax.tree.unflatten(jax.tree.structure(params), leaves)
    return loss, params, x, y, op, p


def _reference(op, p):
    h = np.asarray(op.to_dense(), np.float64)
    d = 1 / np.sqrt(np.asarray(op.ravel(p), np.float64))
    return d[:, None] * h * d[None, :]


def test_eigenvalues_are_those_of_the_scaled_dense_hessian(problem):
    _, _, _, _, op, p = problem
    pre = ht.PreconditionedOperator(op, p)
    ref = _reference(op, p)
    np.testing.assert_allclose(np.asarray(pre.to_dense()), ref, rtol=1e-10, atol=1e-12)
    exact = np.linalg.eigvalsh(ref)
    for which, want in (("largest", exact[::-1][:3]), ("smallest", exact[:3])):
        r = ht.eigenpairs(pre, 3, which=which, method="lanczos", rtol=1e-10)
        assert r.converged
        np.testing.assert_allclose(r.values, want, rtol=1e-8, atol=1e-10)
        assert np.all(np.abs(np.asarray(r.values) - want) <= np.asarray(r.error_bounds) + 1e-12)
    # they are the eigenvalues of P^-1 H, whose eigenvectors are P^-1/2 u
    lam, u = np.linalg.eigh(ref)
    w = np.asarray(pre.ravel(pre.eigenvector_of_product(u[:, -1])))
    h = np.asarray(op.to_dense())
    np.testing.assert_allclose((h @ w) / np.asarray(op.ravel(p)), lam[-1] * w, atol=1e-10)


def test_trace_and_density_compose(problem):
    _, _, _, _, op, p = problem
    pre = ht.PreconditionedOperator(op, p)
    ref = _reference(op, p)
    est = ht.trace(pre, key=0, num_matvecs=op.n)  # the budget covers n: exact
    np.testing.assert_allclose(est.value, np.trace(ref), rtol=1e-8)
    dens = ht.spectral_density(pre, key=jax.random.PRNGKey(1), num_matvecs=4 * op.n, num_probes=4)
    assert np.isclose(float(np.sum(np.asarray(dens.weights)) / 4), 1.0)
    assert np.min(dens.nodes) >= np.linalg.eigvalsh(ref)[0] - 1e-8


def test_unit_preconditioner_is_the_operator(problem):
    _, params, _, _, op, _ = problem
    pre = ht.PreconditionedOperator(op, jax.tree.map(jnp.ones_like, params))
    v = jax.tree.map(lambda x: jnp.full_like(x, 0.3), params)
    for a, b in zip(jax.tree.leaves(pre @ v), jax.tree.leaves(op @ v), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_adam_preconditioner_from_optax_state(problem):
    loss, params, x, y, _, _ = problem
    opt = optax.adam(1e-2, b1=0.9, b2=0.99, eps=1e-6)
    state = opt.init(params)
    for _ in range(3):
        g = jax.grad(loss)(params, x, y)
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
    p = ht.adam_preconditioner(state, b2=0.99, eps=1e-6)
    adam = state[0]
    for pl, nu in zip(jax.tree.leaves(p), jax.tree.leaves(adam.nu), strict=True):
        np.testing.assert_allclose(pl, np.sqrt(nu / (1 - 0.99**3)) + 1e-6, rtol=1e-12)
    # Adam's own step is -lr * m_hat / p: the preconditioner it divides by
    ht.PreconditionedOperator(ht.HessianOperator(loss, params, x, y), p)


def test_bad_preconditioners_are_named(problem):
    _, params, _, _, op, p = problem
    bad = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(0.0), p)
    with pytest.raises(ValueError, match="positive and finite"):
        ht.PreconditionedOperator(op, bad)
    with pytest.raises(ValueError, match="p \\(the preconditioner"):
        ht.PreconditionedOperator(op, jnp.ones(op.n + 1))
    with pytest.raises(TypeError, match="curvature operator"):
        ht.PreconditionedOperator(np.eye(3), jnp.ones(3))
    with pytest.raises(ValueError, match=r"optax\.adam"):
        ht.adam_preconditioner({"nu": 1})
    with pytest.raises(ValueError, match="step 0"):
        ht.adam_preconditioner(optax.adam(1e-3).init(params))
