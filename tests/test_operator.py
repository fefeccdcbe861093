"""The operator protocol (hessian_tools._operator): normal forms of every
operator, block application, and the dense-or-iterative cost rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import sym_with_spectrum

import hessian_tools as ht
from hessian_tools._operator import (
    LinearMap,
    apply_batched,
    apply_linear_map,
    as_linear_map,
    dense_is_cheaper,
)


def _loss(p, x):
    return jnp.mean(jnp.tanh(x @ p["w"]) ** 2) + jnp.sum(p["c"] ** 4)


def _problem():
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.normal(size=(3, 2))), "c": jnp.ones(2)}, jnp.asarray(
        rng.normal(size=(7, 3))
    )


def test_every_operator_has_one_normal_form_that_agrees_with_its_products():
    params, x = _problem()
    ops = [
        ht.HessianOperator(_loss, params, x),
        ht.HessianOperator(_loss, params, batches=[(x[:4],), (x[4:],)]),
        ht.MatvecOperator(lambda v, a: a @ v, jnp.zeros(8), sym_with_spectrum(np.arange(8.0))),
    ]
    for op in ops:
        dense = np.asarray(op.to_dense())
        for linearize in (True, False):
            lm = as_linear_map(op, linearize=linearize)
            assert isinstance(lm, LinearMap) and lm.n == op.n
            vs = jnp.eye(op.n)[:3]
            out = apply_linear_map(lm, lm.layout.unravel(vs))
            np.testing.assert_allclose(lm.layout.ravel(out), vs @ dense, rtol=1e-10, atol=1e-12)
    a = sym_with_spectrum(np.arange(5.0))
    lm = as_linear_map(a)
    assert lm.batching == "vmap" and lm.n == 5
    np.testing.assert_allclose(apply_linear_map(lm, jnp.eye(5)), a, rtol=1e-12)
    assert as_linear_map(lm) is lm


def test_map_and_vmap_give_the_same_block_product():
    params, x = _problem()
    op = ht.HessianOperator(_loss, params, x)
    lm = op.linear_map()
    vs = lm.layout.unravel(jax.random.normal(jax.random.PRNGKey(0), (4, op.n)))
    mapped = apply_batched(lm.bind(), vs, "map")
    vmapped = apply_batched(lm.bind(), vs, "vmap")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), mapped, vmapped)
    op.batching = "vmap"
    assert op.linear_map().batching == "vmap"


def test_refuses_what_is_not_an_operator():
    with pytest.raises(TypeError, match="MatvecOperator"):
        as_linear_map(lambda v: v)
    with pytest.raises(ValueError, match="square"):
        as_linear_map(jnp.ones((2, 3)))
    with pytest.raises(FloatingPointError, match="NaN"):
        as_linear_map(jnp.full((2, 2), jnp.nan))
    with pytest.raises(TypeError, match="function"):
        ht.MatvecOperator(3.0, jnp.zeros(2))


def test_dense_rule_counts_products():
    assert dense_is_cheaper(20, 30, explicit=False)
    assert not dense_is_cheaper(1500, 60, explicit=False)  # eigenpairs(op, 1) at n = 1500
    assert dense_is_cheaper(2000, 1, explicit=True) and not dense_is_cheaper(5000, 1, explicit=True)


def _conv_loss(p, x):
    h = jax.lax.conv_general_dilated(
        x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.mean(jnp.tanh(h) ** 2) + 0.1 * jnp.sum(p["k"] ** 2)


def test_schedule_rule_separates_convolutions_on_cpu():
    params, x = _problem()
    mlp = ht.HessianOperator(_loss, params, x).linear_map()
    k = {"k": jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 1, 2)))}
    images = jnp.asarray(np.random.default_rng(2).normal(size=(4, 5, 5, 1)))
    conv = ht.HessianOperator(_conv_loss, k, images).linear_map()
    assert jax.default_backend() == "cpu"
    assert (mlp.batching, mlp.loop) == ("map", "device")
    assert (conv.batching, conv.loop) == ("vmap", "host")
    op = ht.HessianOperator(_conv_loss, k, images)
    op.loop, op.batching = "device", "map"  # the user's setting wins
    assert (op.linear_map().loop, op.linear_map().batching) == ("device", "map")


def test_host_and_device_loops_agree():
    # every solver, iterated from Python (one compiled step each) and in a
    # compiled loop, on the same operator
    params, x = _problem()
    results = {}
    for loop in ("host", "device"):
        op = ht.HessianOperator(_loss, params, x)
        op.loop = loop
        key = jax.random.PRNGKey(0)
        results[loop] = (
            ht.lanczos(op, 6).alphas,
            ht.eigenpairs(op, 2, which="both", method="lanczos", max_basis=5, rtol=1e-10).values,
            ht.trace(op, key=key, num_matvecs=7).value,
            ht.diagonal(op, key=key, num_matvecs=7).value,
            ht.spectral_density(op, key=key, num_matvecs=12, num_probes=3).nodes,
        )
    for host, device in zip(*results.values(), strict=True):
        np.testing.assert_allclose(host, device, rtol=1e-10, atol=1e-12)
