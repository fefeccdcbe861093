"""GGN and empirical Fisher operators against dense float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import TraceCounter
from jax.flatten_util import ravel_pytree

from hessian_tools.dense import hessian
from hessian_tools.estimators import trace
from hessian_tools.ggn import EmpiricalFisherOperator, GGNOperator

N, D, H, C = 13, 4, 5, 3


def make_problem(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((N, D)))
    y = jax.nn.one_hot(jnp.asarray(rng.integers(0, C, N)), C)
    params = {
        "hidden": {
            "w": jnp.asarray(rng.standard_normal((D, H))),
            "b": jnp.asarray(rng.normal(size=H)),
        },
        "out": {"w": jnp.asarray(rng.standard_normal((H, C))), "b": jnp.zeros(C)},
    }
    return params, x, y


def mlp(p, x):
    h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"][None, :])
    return h @ p["out"]["w"] + p["out"]["b"][None, :]


def cross_entropy(logits, y):
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=-1))


def dense_ggn(params, x, y):
    flat, unravel = ravel_pytree(params)
    out = mlp(params, x)
    jac = jax.jit(jax.jacobian(lambda f: mlp(unravel(f), x).reshape(-1)))(flat)
    h_out = jax.jit(jax.hessian(lambda o: cross_entropy(o.reshape(out.shape), y)))(out.reshape(-1))
    return jac.T @ h_out @ jac


def dense_fisher(params, x, y):
    flat, unravel = ravel_pytree(params)
    grad_i = lambda xi, yi: jax.grad(lambda f: cross_entropy(mlp(unravel(f), xi[None]), yi[None]))(
        flat
    )
    g = jax.vmap(grad_i)(x, y)  # (N, n) per-sample gradients
    return sum(jnp.outer(gi, gi) for gi in g) / x.shape[0]


UNEVEN = [slice(0, 6), slice(6, 8), slice(8, N)]


def test_ggn_equals_dense_jt_h_j():
    params, x, y = make_problem()
    op = GGNOperator(mlp, cross_entropy, params, x, y)
    ref = dense_ggn(params, x, y)
    np.testing.assert_allclose(op.to_dense(), ref, rtol=1e-10, atol=1e-13)
    # pytree in, pytree out; flat in, flat out; (n, k) in, (n, k) out
    v = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), params)
    out = op @ v
    assert jax.tree.structure(out) == jax.tree.structure(params)
    vf = ravel_pytree(v)[0]
    np.testing.assert_allclose(ravel_pytree(out)[0], ref @ vf, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(op @ vf, ref @ vf, rtol=1e-10, atol=1e-13)
    vs = jnp.stack([vf, 2 * vf, -vf], axis=1)
    np.testing.assert_allclose(op @ vs, ref @ vs, rtol=1e-10, atol=1e-12)
    lin = op.as_linear_operator()
    np.testing.assert_allclose(lin.matvec(np.asarray(vf)), ref @ vf, rtol=1e-10, atol=1e-13)
    assert op.shape == (vf.size, vf.size) and op.dtype == jnp.float64


def test_ggn_is_psd_and_not_the_hessian():
    params, x, y = make_problem(1)
    ggn = GGNOperator(mlp, cross_entropy, params, x, y).to_dense()
    w = np.linalg.eigvalsh(np.asarray(ggn))
    assert w.min() >= -1e-12 * w.max()
    hess = hessian(lambda p, x, y: cross_entropy(mlp(p, x), y), params, x, y)
    assert np.abs(np.asarray(hess) - np.asarray(ggn)).max() > 1e-3  # the tanh layer curves


def test_ggn_equals_hessian_for_linear_model_with_squared_loss():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((20, 4)))
    y = jnp.asarray(rng.standard_normal((20, 2)))
    params = {"w": jnp.asarray(rng.standard_normal((4, 2))), "b": jnp.zeros(2)}
    model = lambda p, x: x @ p["w"] + p["b"][None, :]
    mse = lambda o, y: jnp.mean((o - y) ** 2)
    ggn = GGNOperator(model, mse, params, x, y).to_dense()
    hess = hessian(lambda p, x, y: mse(model(p, x), y), params, x, y)
    np.testing.assert_allclose(ggn, hess, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("cls", [GGNOperator, EmpiricalFisherOperator])
def test_uneven_batches_equal_full_data(cls):
    params, x, y = make_problem(3)
    full = cls(mlp, cross_entropy, params, x, y).to_dense()
    batches = [(x[s], y[s]) for s in UNEVEN]
    op = cls(mlp, cross_entropy, params, batches=batches)
    assert op.num_batches == 3
    np.testing.assert_allclose(op.to_dense(), full, rtol=1e-10, atol=1e-13)


def test_empirical_fisher_equals_mean_outer_product_of_per_sample_gradients():
    params, x, y = make_problem(4)
    op = EmpiricalFisherOperator(mlp, cross_entropy, params, x, y)
    ref = dense_fisher(params, x, y)
    np.testing.assert_allclose(op.to_dense(), ref, rtol=1e-10, atol=1e-13)
    w = np.linalg.eigvalsh(np.asarray(ref))
    assert np.sum(w > 1e-10 * w.max()) <= N  # rank at most N


def test_new_params_reuse_the_compiled_product():
    params, x, y = make_problem(5)
    model = TraceCounter(mlp)
    v = ravel_pytree(params)[0]
    GGNOperator(model, cross_entropy, params, x, y) @ v
    GGNOperator(model, cross_entropy, params, x, y).matmat(jnp.stack([v, v], 1))
    traced = model.count
    moved = jax.tree.map(lambda a: a + 0.1, params)
    GGNOperator(model, cross_entropy, moved, x + 1.0, y) @ v
    GGNOperator(model, cross_entropy, moved, x, y).matmat(jnp.stack([v, v], 1))
    assert model.count == traced


def test_linear_map_matches_products_under_jit():
    params, x, y = make_problem(6)
    op = GGNOperator(mlp, cross_entropy, params, x, y)
    v = jnp.linspace(-1.0, 1.0, op.n)
    for linearize in (False, True):
        lm = op.linear_map(linearize=linearize)
        out = jax.jit(lambda lm, v: lm.bind()(v))(lm, op.unravel(v))
        np.testing.assert_allclose(op.ravel(out), op @ v, rtol=1e-12)


def test_estimators_accept_ggn():
    params, x, y = make_problem(7)
    op = GGNOperator(mlp, cross_entropy, params, x, y)
    est = trace(op, key=jax.random.PRNGKey(0), num_matvecs=op.n)
    np.testing.assert_allclose(float(est.value), float(jnp.trace(dense_ggn(params, x, y))))


def test_bad_input():
    params, x, y = make_problem()
    with pytest.raises(ValueError, match="scalar"):
        GGNOperator(mlp, lambda o, y: (o - y) ** 2, params, x, y)
    with pytest.raises(ValueError, match="not both"):
        GGNOperator(mlp, cross_entropy, params, x, y, batches=[(x, y)])
    with pytest.raises(ValueError, match="x and y"):
        GGNOperator(mlp, cross_entropy, params, x)
    with pytest.raises(TypeError, match="re-iterable"):
        GGNOperator(mlp, cross_entropy, params, batches=iter([(x, y)]))
    with pytest.raises(ValueError, match="empty"):
        EmpiricalFisherOperator(mlp, cross_entropy, params, batches=[])
    bad = jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), params)
    with pytest.raises(FloatingPointError, match="loss"):
        GGNOperator(mlp, cross_entropy, bad, x, y)
