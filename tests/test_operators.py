"""hvp and HessianOperator (hessian_tools.operators) against dense float64 references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg as sla
from _util import TraceCounter, dense_reference, nested_mlp_loss, nested_mlp_problem
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import hessian_tools as ht


@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-10), (jnp.float32, 1e-4)])
def test_hvp_matches_dense_hessian_on_nested_pytree(dtype, tol):
    params, x, y = nested_mlp_problem(jax.random.PRNGKey(0), dtype)
    v = jax.tree.map(lambda p: jnp.ones_like(p) * 0.3, params)
    hv = ht.hvp(nested_mlp_loss, params, v, x, y)
    assert jax.tree.structure(hv) == jax.tree.structure(params)
    assert all(a.dtype == dtype for a in jax.tree.leaves(hv))
    H = dense_reference(nested_mlp_loss, params, x, y)
    expect = H @ np.asarray(ravel_pytree(v)[0], np.float64)
    got = np.asarray(ravel_pytree(hv)[0], np.float64)
    np.testing.assert_allclose(got, expect, rtol=tol, atol=tol * np.abs(expect).max())


def test_hvp_under_jit_and_vmap():
    params, x, y = nested_mlp_problem(jax.random.PRNGKey(1))
    n = ravel_pytree(params)[0].size
    _, unravel = ravel_pytree(params)
    basis = jnp.eye(n)
    cols = jax.jit(
        jax.vmap(lambda e: ravel_pytree(ht.hvp(nested_mlp_loss, params, unravel(e), x, y))[0])
    )(basis)
    np.testing.assert_allclose(
        cols, dense_reference(nested_mlp_loss, params, x, y), rtol=1e-10, atol=1e-10
    )


@settings(max_examples=6)  # every new d compiles afresh (~1.4 s each)
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 5))
def test_hvp_agrees_with_dense_hessian_times_v(seed, d):
    key = jax.random.PRNGKey(seed)
    k1, k2, k3 = jax.random.split(key, 3)
    a = jax.random.normal(k1, (d, d))
    params = {"u": jax.random.normal(k2, (d,)), "t": (jax.random.normal(k3, ()),)}
    f = lambda p, a: jnp.sum(jnp.sin(a @ p["u"]) * p["t"][0] ** 2) + jnp.sum(p["u"] ** 4)
    v = {"u": jnp.arange(d, dtype=jnp.float64) - 1.5, "t": (jnp.asarray(0.5),)}
    got = ravel_pytree(ht.hvp(f, params, v, a))[0]
    H = dense_reference(f, params, a)
    np.testing.assert_allclose(got, H @ ravel_pytree(v)[0], rtol=1e-9, atol=1e-9)


def test_operator_products_dense_and_scipy():
    params, x, y = nested_mlp_problem(jax.random.PRNGKey(2))
    op = ht.HessianOperator(nested_mlp_loss, params, x, y)
    H = dense_reference(nested_mlp_loss, params, x, y)
    n = H.shape[0]
    assert op.shape == (n, n) and op.dtype == jnp.float64
    v = np.linspace(-1, 1, n)
    np.testing.assert_allclose(op @ jnp.asarray(v), H @ v, rtol=1e-10, atol=1e-12)
    tree = op @ op.unravel(jnp.asarray(v))
    np.testing.assert_allclose(ravel_pytree(tree)[0], H @ v, rtol=1e-10, atol=1e-12)
    V = np.stack([v, v**2, np.ones(n)], axis=1)
    np.testing.assert_allclose(op @ jnp.asarray(V), H @ V, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(op.to_dense(), H, rtol=1e-10, atol=1e-12)
    top = sla.eigsh(op.as_linear_operator(), k=3, which="LA", return_eigenvectors=False)
    np.testing.assert_allclose(np.sort(top), np.linalg.eigvalsh(H)[-3:], rtol=1e-8)


@settings(max_examples=5)  # every new batch shape compiles afresh (~2.5 s each)
@given(
    seed=st.integers(0, 1000),
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
)
def test_batched_operator_equals_full_data_hessian(seed, sizes):
    n_samples = sum(sizes)
    params, x, y = nested_mlp_problem(jax.random.PRNGKey(seed), n_samples=n_samples)
    edges = np.cumsum([0, *sizes])
    batches = [(x[a:b], y[a:b]) for a, b in itertools.pairwise(edges)]
    op = ht.HessianOperator(nested_mlp_loss, params, batches=batches)
    H = dense_reference(nested_mlp_loss, params, x, y)
    np.testing.assert_allclose(op.to_dense(), H, rtol=1e-9, atol=1e-11)
    value, _ = op.value_and_grad()
    np.testing.assert_allclose(value, nested_mlp_loss(params, x, y), rtol=1e-12)


def test_new_operator_for_same_loss_and_shapes_does_not_recompile():
    loss = TraceCounter(lambda p, x: jnp.sum(jnp.tanh(x @ p) ** 2))
    x = jnp.ones((5, 3))
    for i in range(3):  # e.g. three training checkpoints
        op = ht.HessianOperator(loss, jnp.full(3, 0.1 * i), x)
        op @ jnp.ones(3)
        if i == 0:
            first = loss.count
    assert loss.count == first


class TestBadInput:
    def test_non_scalar_loss(self):
        with pytest.raises(ValueError, match="scalar"):
            ht.hvp(lambda p: p**2, jnp.ones(3), jnp.ones(3))
        with pytest.raises(ValueError, match="scalar"):
            ht.HessianOperator(lambda p: p**2, jnp.ones(3))

    def test_non_finite_loss_or_gradient(self):
        with pytest.raises(FloatingPointError, match="loss"):
            ht.HessianOperator(lambda p: jnp.sum(jnp.log(p)), -jnp.ones(2))
        with pytest.raises(FloatingPointError, match="gradient"):
            ht.HessianOperator(lambda p: jnp.sum(jnp.sqrt(p)), jnp.zeros(2))

    def test_mismatched_structure(self):
        params = {"a": jnp.ones(2), "b": jnp.ones(3)}
        with pytest.raises(ValueError, match="structure"):
            ht.hvp(lambda p: jnp.sum(p["a"]) ** 2, params, {"a": jnp.ones(2)})
        with pytest.raises(ValueError, match="shape"):
            ht.hvp(lambda p: jnp.sum(p["a"]) ** 2, params, {"a": jnp.ones(2), "b": jnp.ones(4)})
        op = ht.HessianOperator(lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 2), params)
        with pytest.raises(ValueError, match="structure"):
            op @ (jnp.ones(2), jnp.ones(3))

    def test_empty_or_one_shot_batches(self):
        f = lambda p, x: jnp.mean((x * p) ** 2)
        with pytest.raises(ValueError, match="empty"):
            ht.HessianOperator(f, jnp.ones(2), batches=[])
        with pytest.raises(ValueError, match="empty"):
            ht.HessianOperator(f, jnp.ones(2), batches=[(jnp.ones((0, 2)),)])
        with pytest.raises(TypeError, match="re-iterable"):
            ht.HessianOperator(f, jnp.ones(2), batches=((jnp.ones((3, 2)),) for _ in range(2)))
        # *args next to batches= are arguments shared by every batch, first
        g = lambda p, scale, x: scale * jnp.mean((x * p[None, :]) ** 2)
        x = jnp.arange(6.0).reshape(3, 2)
        shared = ht.HessianOperator(g, jnp.ones(2), 3.0, batches=[(x[:1],), (x[1:],)])
        np.testing.assert_allclose(
            shared.to_dense(), ht.HessianOperator(g, jnp.ones(2), 3.0, x).to_dense(), rtol=1e-12
        )

    def test_integer_params(self):
        with pytest.raises(TypeError, match="floating"):
            ht.HessianOperator(lambda p: jnp.sum(p**2.0), jnp.arange(3))


@pytest.mark.parametrize("shape", [(3,), (2, 3)])
def test_matmat_with_single_array_params(shape):
    params = jnp.linspace(0.5, 1.5, int(np.prod(shape))).reshape(shape)
    f = lambda p: jnp.sum(jnp.sin(p) * p**2)
    op = ht.HessianOperator(f, params)
    H = dense_reference(f, params)
    n = H.shape[0]
    V = np.arange(2 * n, dtype=float).reshape(n, 2)
    np.testing.assert_allclose(op @ jnp.asarray(V), H @ V, rtol=1e-10)
    v = np.linspace(-1, 1, n)
    np.testing.assert_allclose(op @ jnp.asarray(v), H @ v, rtol=1e-10, atol=1e-12)
    tree = op @ jnp.asarray(v).reshape(shape)  # the pytree reading
    np.testing.assert_allclose(np.ravel(tree), H @ v, rtol=1e-10, atol=1e-12)


def test_batch_arrays_must_agree_on_sample_axis():
    f = lambda p, a, x: jnp.mean((x @ a @ p) ** 2)
    batches = [(jnp.eye(2), jnp.ones((10, 2))), (jnp.eye(2), jnp.ones((1, 2)))]
    with pytest.raises(ValueError, match="leading"):
        ht.HessianOperator(f, jnp.ones(2), batches=batches)


def test_batches_given_as_lists():
    params, x, y = nested_mlp_problem(jax.random.PRNGKey(7), n_samples=5)
    op = ht.HessianOperator(nested_mlp_loss, params, batches=[[x[:2], y[:2]], [x[2:], y[2:]]])
    np.testing.assert_allclose(
        op.to_dense(), dense_reference(nested_mlp_loss, params, x, y), rtol=1e-9, atol=1e-11
    )


# --------------------------------------------------------------------------
# The JAX model libraries: Flax NNX (with BatchNorm statistics) and Equinox


def _dense_of(loss_of_flat, flat):
    return np.asarray(jax.jit(jax.hessian(loss_of_flat))(flat))


def test_flax_nnx_cnn_with_batchnorm_against_jax_hessian():
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(1, 2, (3, 3), rngs=rngs, param_dtype=jnp.float64)
            self.bn = nnx.BatchNorm(2, use_running_average=True, rngs=rngs, param_dtype=jnp.float64)
            self.lin = nnx.Linear(2 * 16, 3, rngs=rngs, param_dtype=jnp.float64)

        def __call__(self, x):
            h = nnx.relu(self.bn(self.conv(x)))
            return self.lin(h.reshape(h.shape[0], -1))

    model = CNN(nnx.Rngs(0))
    graphdef, params, stats = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(10, 4, 4, 1)))
    y = jax.nn.one_hot(jnp.asarray(rng.integers(0, 3, 10)), 3, dtype=jnp.float64)

    def loss(params, stats, x, y):
        logits = nnx.merge(graphdef, params, stats)(x)
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), -1))

    op = ht.HessianOperator(loss, params, stats, x, y)  # statistics as data, fixed
    flat, unravel = ravel_pytree(params)
    assert op.n == flat.size
    ref = _dense_of(lambda z: loss(unravel(z), stats, x, y), flat)
    np.testing.assert_allclose(op.to_dense(), ref, rtol=1e-10, atol=1e-12)
    top = ht.eigenpairs(op, 3, method="lanczos", rtol=1e-10)
    np.testing.assert_allclose(top.values, np.linalg.eigvalsh(ref)[::-1][:3], rtol=1e-9)
    assert jax.tree.structure(top.tree_vectors) == jax.tree.structure(params)


def test_equinox_module_whole_equals_partitioned():
    import equinox as eqx

    model = eqx.nn.MLP(3, 2, 5, 2, activation=jnp.tanh, key=jax.random.PRNGKey(0))
    model = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)
    rng = np.random.default_rng(1)
    x, y = jnp.asarray(rng.normal(size=(8, 3))), jnp.asarray(rng.normal(size=(8, 2)))

    def loss(m, x, y):
        return jnp.mean((jax.vmap(m)(x) - y) ** 2)

    whole = ht.HessianOperator(loss, model, x, y)  # activation functions held fixed
    params, static = eqx.partition(model, eqx.is_inexact_array)
    parted = ht.HessianOperator(lambda p, x, y: loss(eqx.combine(p, static), x, y), params, x, y)
    flat, unravel = ravel_pytree(params)
    assert whole.n == parted.n == flat.size
    ref = _dense_of(lambda z: loss(eqx.combine(unravel(z), static), x, y), flat)
    np.testing.assert_allclose(whole.to_dense(), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(parted.to_dense(), ref, rtol=1e-10, atol=1e-12)
    top = ht.eigenpairs(whole, 2, which="both", method="lanczos", rtol=1e-10)
    np.testing.assert_allclose(top.values, np.linalg.eigvalsh(ref)[[0, -1]], rtol=1e-9)
    # vectors are pytrees of the variables: the module's structure, None elsewhere
    assert jax.tree.structure(top.tree_vectors) == jax.tree.structure(params)
    hv = whole @ jax.tree.map(jnp.ones_like, params)
    np.testing.assert_allclose(ravel_pytree(hv)[0], ref @ np.ones(flat.size), rtol=1e-10)


def test_unsupported_dtypes_and_closed_over_nnx_modules_get_named_errors():
    with pytest.raises(TypeError, match="float32 or float64"):
        ht.HessianOperator(lambda p: jnp.sum(p.astype(jnp.float32) ** 2), jnp.ones(3, jnp.bfloat16))
    from flax import nnx

    bn = nnx.BatchNorm(2, rngs=nnx.Rngs(0))  # train mode: updates its statistics
    graphdef, state = nnx.split(bn)

    def loss(state, x):
        nnx.merge(graphdef, state)
        return jnp.mean(bn(x) ** 2)  # closes over the module: not allowed under a trace

    with (  # the whole state: its statistics are named and held fixed first
        pytest.warns(ht.ModelStateWarning),
        pytest.raises(TypeError, match=r"closes over.*copy=True.*docs/recipes\.md"),
    ):
        ht.HessianOperator(loss, state, jnp.ones((4, 2), jnp.float32))


def test_the_first_check_of_a_loss_compiles_cheaply_later_ones_the_optimised_program(
    monkeypatch,
):
    # the construction's finiteness check runs in tiers
    # (_hessian.checked_value_and_grad): a program compiled without
    # optimisation the first time a process checks a loss, the optimised one
    # after that; the loss and gradient it computed are kept by the operator
    from hessian_tools import _hessian

    calls = []

    class counted:  # a program's calls (the first check compiles ahead: lower)
        def __init__(self, name, program):
            self.name, self.program = name, program

        def __call__(self, *args):
            calls.append(self.name)
            return self.program(*args)

        def lower(self, *args):
            calls.append(self.name)
            return self.program.lower(*args)

    monkeypatch.setattr(
        _hessian, "_value_and_grad_once", counted("once", _hessian._value_and_grad_once)
    )
    monkeypatch.setattr(_hessian, "value_and_grad", counted("optimised", _hessian.value_and_grad))
    params, x, y = nested_mlp_problem(jax.random.PRNGKey(3), jnp.float64)

    def loss(p, x, y):  # a new function object: never checked before
        return nested_mlp_loss(p, x, y)

    ops = [ht.HessianOperator(loss, params, x, y) for _ in range(3)]
    assert calls == ["once", "optimised", "optimised"]
    # value_and_grad() returns the check's values: nothing computed again,
    # equal to an independent jax.value_and_grad
    calls.clear()
    value, grad = ops[0].value_and_grad()
    assert calls == []
    want_value, want_grad = jax.value_and_grad(loss)(params, x, y)
    np.testing.assert_allclose(value, want_value, rtol=1e-12)
    np.testing.assert_allclose(
        ravel_pytree(grad)[0], ravel_pytree(want_grad)[0], rtol=1e-10, atol=1e-14
    )

    # the first (cheap) check still names a non-finite loss
    def bad(p, x, y):
        return nested_mlp_loss(p, x, y) * jnp.nan

    with pytest.raises(FloatingPointError, match="loss"):
        ht.HessianOperator(bad, params, x, y)
    assert calls == ["once"]
