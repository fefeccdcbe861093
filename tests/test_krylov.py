"""The Lanczos kernel (hessian_tools._krylov): its basis spans the Krylov
space, its projected matrix is Q^T A Q, blocks and breakdowns, and it runs
under jax.jit and vmap with a pytree basis."""

import operator

import jax
import jax.numpy as jnp
import numpy as np
from _util import nested_params, quad_loss, sym_with_spectrum

from hessian_tools import _krylov
from hessian_tools._tree import Layout, flat_stacks
from hessian_tools.operators import HessianOperator


def _run(a, v0, cols, acc=jnp.float64, **kw):
    lm = HessianOperator(lambda x, a: 0.5 * x @ (a @ x), jnp.zeros(a.shape[0]), a).linear_map()

    @jax.jit
    def go(lm, v0):
        state, mv = _krylov.start(lm, v0, cols, acc), _krylov.flat_product(lm)
        return _krylov.run(state, mv, cols, batching="map", acc=acc, breakdown_tol=1e-12, **kw)

    return go(lm, v0)


def _flat_basis(state, rows):
    return np.asarray(state.basis)[:rows]  # one leaf: (rows, n)


def test_projected_matrix_is_q_transpose_a_q_and_basis_is_orthonormal():
    a = sym_with_spectrum(np.linspace(-2, 3, 40), 1)
    v0 = jnp.asarray(np.random.default_rng(0).normal(size=(1, 40)))
    state = _run(a, v0, 12)
    assert int(state.num_columns) == 12 and int(state.status) == _krylov.RUNNING
    q = _flat_basis(state, 13)
    np.testing.assert_allclose(q @ q.T, np.eye(13), atol=1e-12)
    t = np.asarray(_krylov.padded_projection(state))
    np.testing.assert_allclose(t, q[:12] @ np.asarray(a) @ q[:12].T, atol=1e-12)
    # the basis spans the Krylov space: each A q_j lies in span(q_0..q_j+1)
    aq = q[:12] @ np.asarray(a)
    resid = aq - (aq @ q.T) @ q
    np.testing.assert_allclose(resid, 0, atol=1e-11)


def test_block_lanczos_spans_the_block_krylov_space():
    rng = np.random.default_rng(2)
    a = sym_with_spectrum(rng.uniform(-1, 1, 50), 2)
    s = rng.normal(size=(3, 50))
    state = _run(a, jnp.asarray(s), 12)  # blocks of 3, depth 4
    q = _flat_basis(state, 12)
    np.testing.assert_allclose(q @ q.T, np.eye(12), atol=1e-12)
    krylov = np.concatenate([s @ np.linalg.matrix_power(np.asarray(a), j) for j in range(4)])
    # span{S, AS, A^2 S, A^3 S} equals span(Q)
    np.testing.assert_allclose(krylov - (krylov @ q.T) @ q, 0, atol=1e-8 * np.abs(krylov).max())
    t = np.asarray(_krylov.padded_projection(state))
    np.testing.assert_allclose(t, q @ np.asarray(a) @ q.T, atol=1e-12)


def test_breakdown_on_an_invariant_subspace_stops_and_masks():
    a = jnp.diag(jnp.array([1.0, 2.0, 3.0] + [0.0] * 17))
    v0 = jnp.zeros((1, 20)).at[0, :3].set(1.0)
    state = _run(a, v0, 10)
    assert int(state.status) == _krylov.BREAKDOWN and int(state.num_columns) == 3
    theta, _, res = _krylov.ritz(state)
    np.testing.assert_allclose(np.asarray(theta)[:3], [1, 2, 3], atol=1e-12)
    np.testing.assert_allclose(np.asarray(res)[:3], 0, atol=1e-12)
    assert np.all(np.asarray(theta)[3:] > 3)  # the padded rows sort last


def test_ritz_residuals_equal_true_residuals():
    a = sym_with_spectrum(np.concatenate([[10.0, 9.0], np.linspace(-1, 1, 58)]), 3)
    v0 = jnp.ones((1, 60))
    state = _run(a, v0, 15)
    theta, u, res = _krylov.ritz(state)
    y = np.asarray(_krylov.ritz_vectors(state, u[:, :15]))
    true = np.linalg.norm(y @ np.asarray(a) - np.asarray(theta)[:15, None] * y, axis=1)
    np.testing.assert_allclose(np.asarray(res)[:15], true, atol=1e-11)


def test_under_jit_and_vmap_with_a_nested_pytree_basis():
    n = 30
    a = sym_with_spectrum(np.linspace(-4, 5, n), 4)
    op = HessianOperator(quad_loss, nested_params(n), a)
    lm = op.linear_map()
    layout = lm.layout
    starts = jax.random.normal(jax.random.PRNGKey(0), (3, n))

    @jax.jit
    def many(lm, starts):
        def one(v):
            state, mv = (
                _krylov.start(lm, jax.tree.map(lambda x: x[None], v), 8, jnp.float64),
                _krylov.flat_product(lm),
            )
            state = _krylov.run(state, mv, 8, batching="map", acc=jnp.float64, breakdown_tol=1e-12)
            return state.basis, _krylov.ritz(state)[0]

        return jax.vmap(one)(layout.unravel(starts))

    basis, theta = many(lm, starts)
    # on one CPU device the leaves are stored joined, (probes, rows, n);
    # as vectors they get the params' structure and shapes back
    assert flat_stacks() and basis.shape == (3, 9, n)
    vectors = jax.vmap(lambda b: _krylov.as_vectors(b, layout))(basis)
    assert vectors["layer"]["w"].shape == (3, 9, 4, 5) and vectors["b"].shape == (3, 9, n - 20)
    for i in range(3):
        rows = np.asarray(basis[i])
        np.testing.assert_allclose(rows @ rows.T, np.eye(9), atol=1e-12)
        np.testing.assert_array_equal(
            layout.ravel(jax.tree.map(operator.itemgetter(i), vectors)), rows
        )
        # the largest Ritz value after 8 steps approaches 5 from below
        assert 4.0 < float(theta[i][7]) <= 5.0 + 1e-12


def test_as_vectors_restores_the_params_shapes():
    params = nested_params(30)
    layout = Layout.of(params)
    stack = layout.flatten_leaves(jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params))
    back = _krylov.as_vectors(stack, layout)
    np.testing.assert_allclose(back["layer"]["w"][1], 2 * params["layer"]["w"])
    assert back["b"].shape == (2, 10)


def test_nonfinite_product_sets_the_status():
    a = sym_with_spectrum(np.linspace(1, 2, 10))
    lm = HessianOperator(lambda x, a: 0.5 * x @ (a @ x), jnp.zeros(10), a).linear_map()

    @jax.jit
    def go(lm):
        state, mv = _krylov.start(lm, jnp.ones((1, 10)), 5, jnp.float64), _krylov.flat_product(lm)
        bad = lambda v: jax.tree.map(lambda x: x * jnp.nan, mv(v))
        return _krylov.run(state, bad, 5, batching="map", acc=jnp.float64, breakdown_tol=1e-12)

    state = go(lm)
    assert int(state.status) == _krylov.NONFINITE and int(state.num_columns) == 1
