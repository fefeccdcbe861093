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
    apply_block,
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
    assert lm.block == "vmap" and lm.n == 5
    np.testing.assert_allclose(apply_linear_map(lm, jnp.eye(5)), a, rtol=1e-12)
    assert as_linear_map(lm) is lm


def test_map_and_vmap_give_the_same_block_product():
    params, x = _problem()
    op = ht.HessianOperator(_loss, params, x)
    lm = op.linear_map()
    vs = lm.layout.unravel(jax.random.normal(jax.random.PRNGKey(0), (4, op.n)))
    mapped = apply_block(lm.bind(), vs, "map")
    vmapped = apply_block(lm.bind(), vs, "vmap")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), mapped, vmapped)
    op.block = "vmap"
    assert op.linear_map().block == "vmap"


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
