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


def test_block_densities_patterns_and_heterogeneity(mlp):
    params, x, y = mlp
    full = dense_reference(mlp_loss, params, x, y)
    named = {"weights": r"\[\d\]\[0\]", "biases": r"\[\d\]\[1\]"}  # key-path patterns
    blocks = ht.block_spectra(
        mlp_loss, params, x, y, blocks=named, trace_matvecs=200, density=True, key=1
    )
    assert [b.n for b in blocks] == [30 + 15, 5 + 3]
    # the blocks partition the variables: their exact traces add up to the full one
    np.testing.assert_allclose(
        sum(float(b.trace.value) for b in blocks), np.trace(full), rtol=1e-10
    )
    for b in blocks:  # each density integrates to 1 and covers its block's spectrum
        np.testing.assert_allclose(np.trapezoid(b.density.density, b.density.grid), 1, atol=2e-3)
        assert b.num_matvecs >= int(b.density.num_matvecs) > 0
    mean, dist = ht.block_heterogeneity(blocks)
    assert dist.shape == (2, 2) and np.allclose(dist, dist.T) and np.all(np.diag(dist) == 0)
    assert 0 < mean <= 1 and mean == dist[0, 1]
    # identical spectra are at distance 0; disjoint ones at distance 1
    assert ht.block_heterogeneity([blocks[0], blocks[0]])[0] == pytest.approx(0, abs=1e-12)
    far = blocks[1].density
    shifted = type(blocks[1])(
        "shifted", 8, blocks[1].values, blocks[1].error_bounds, blocks[1].trace, 0,
        type(far)(far.grid, far.density, far.nodes + 1e3, far.weights, far.sigma, 0),
    )  # fmt: skip
    assert ht.block_heterogeneity([blocks[1], shifted])[0] == pytest.approx(1, abs=1e-6)
    ax = ht.plotting.plot_block_densities(blocks)
    assert len(ax.lines) == 2 and "Jensen-Shannon" in ax.get_title()
    with pytest.raises(ValueError, match="no density"):
        ht.block_heterogeneity(ht.block_spectra(mlp_loss, params, x, y, blocks=named))
    with pytest.raises(ValueError, match=r"\[0\]\[0\]"):  # nothing matches: the paths are listed
        ht.block_spectra(mlp_loss, params, x, y, blocks={"Q": "query"})
