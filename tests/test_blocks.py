"""Blocks of the Hessian (wrt=, hessian_tools.blocks) against the dense
float64 Hessian's sub-blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import dense_reference, mlp_loss, mlp_problem

import hessian_tools as ht


@pytest.fixture(scope="module")
def mlp():
    return mlp_problem((6, 5, 3), samples=40, dtype=jnp.float64)


def test_block_operator_is_the_dense_sub_block(mlp):
    params, x, y = mlp
    full = dense_reference(mlp_loss, params, x, y)
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]  # w0, b0, w1, b1
    edges = np.cumsum([0, *sizes])
    # the first layer by a boolean prefix, the second by a predicate on paths
    first = ht.HessianOperator(mlp_loss, params, x, y, wrt=[True, False])
    second = ht.HessianOperator(mlp_loss, params, x, y, wrt=lambda path: path.startswith("[1]"))
    for op, (lo, hi) in ((first, (edges[0], edges[2])), (second, (edges[2], edges[4]))):
        block = full[lo:hi, lo:hi]
        assert op.n == hi - lo
        np.testing.assert_allclose(op.to_dense(), block, rtol=1e-10, atol=1e-12)
        top = ht.eigenpairs(op, 3, method="lanczos", rtol=1e-10)
        np.testing.assert_allclose(top.values, np.linalg.eigvalsh(block)[::-1][:3], rtol=1e-9)
    # a single leaf; vectors come back with None where a leaf is held fixed
    only = ht.HessianOperator(mlp_loss, params, x, y, wrt=[(True, False), (False, False)])
    assert only.n == sizes[0]
    out = only @ jax.tree.map(jnp.ones_like, params)  # a full-shaped vector: its block is used
    assert out[0][1] is None and out[1] == (None, None)
    np.testing.assert_allclose(out[0][0].ravel(), full[: sizes[0], : sizes[0]].sum(1), rtol=1e-10)


def test_per_layer_traces_sum_to_the_full_trace(mlp):
    params, x, y = mlp
    full = dense_reference(mlp_loss, params, x, y)
    blocks = ht.block_spectra(mlp_loss, params, x, y, k=2, trace_matvecs=200)
    assert [b.name for b in blocks] == ["[0]", "[1]"]
    assert [b.n for b in blocks] == [35, 18]
    np.testing.assert_allclose(
        sum(float(b.trace.value) for b in blocks), np.trace(full), rtol=1e-10
    )
    w0 = np.linalg.eigvalsh(full[:35, :35])
    np.testing.assert_allclose(blocks[0].values, w0[::-1][:2], rtol=1e-9)
    assert all(b.num_matvecs >= b.n for b in blocks)  # small blocks: exact paths
    ax = ht.plotting.plot_block_spectra(blocks, quantity="trace")
    assert len(ax.patches) == 2
    # keyword arguments pass through to ax.bar and override its defaults
    ax = ht.plotting.plot_block_spectra(blocks, quantity="trace", color="k", capsize=0)
    assert all(p.get_facecolor() == (0.0, 0.0, 0.0, 1.0) for p in ax.patches)
    # named blocks, and the default grouping of a flat dict: one block per leaf
    flat = {"w": params[0][0], "v": params[1][0]}
    f = lambda p, x, y: mlp_loss([(p["w"], params[0][1]), (p["v"], params[1][1])], x, y)
    names = [b.name for b in ht.block_spectra(f, flat, x, y)]
    assert names == ["['v']", "['w']"]


def test_wrt_errors(mlp):
    params, x, y = mlp
    with pytest.raises(ValueError, match="selected by wrt"):
        ht.HessianOperator(mlp_loss, params, x, y, wrt=lambda path: False)
    with pytest.raises(ValueError, match="does not match params"):
        ht.HessianOperator(mlp_loss, params, x, y, wrt={"layer": True})
    with pytest.raises(ValueError, match="selected by wrt"):
        ht.block_spectra(mlp_loss, params, x, y, blocks={"none": lambda path: False})
