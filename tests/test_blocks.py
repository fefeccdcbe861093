"""Blocks of the Hessian (wrt=, hessian_tools.blocks) against the dense
float64 Hessian's sub-blocks; a block is data, not a new program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import counting_compilations, dense_reference, mlp_loss, mlp_problem

import hessian_tools as ht


@pytest.fixture(scope="module")
def mlp():
    return mlp_problem((6, 5, 3), samples=40, dtype=jnp.float64)


@pytest.fixture
def compilations():
    with counting_compilations() as handler:
        yield handler


def test_block_operator_is_the_dense_sub_block(mlp):
    params, x, y = mlp
    full = dense_reference(mlp_loss, params, x, y)
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]  # w0, b0, w1, b1
    edges = np.cumsum([0, *sizes])
    # the first layer by a boolean prefix, both weights by a predicate on
    # paths (two blocks above the basis size: one compiled solve serves both)
    first = ht.HessianOperator(mlp_loss, params, x, y, wrt=[True, False])
    weights = ht.HessianOperator(mlp_loss, params, x, y, wrt=lambda path: path.endswith("[0]"))
    w_idx = np.r_[edges[0] : edges[1], edges[2] : edges[3]]
    for op, idx in ((first, np.arange(edges[0], edges[2])), (weights, w_idx)):
        block = full[np.ix_(idx, idx)]
        assert op.n == idx.size
        np.testing.assert_allclose(op.to_dense(), block, rtol=1e-10, atol=1e-12)
        # Lanczos on the block's masked map: the block's eigenvalues, within bounds
        top = ht.eigenpairs(op, 3, method="lanczos", rtol=1e-10)
        w = np.linalg.eigvalsh(block)
        np.testing.assert_allclose(top.values, w[::-1][:3], rtol=1e-9)
        assert np.all(np.abs(top.values - w[::-1][:3]) <= top.error_bounds + 1e-12)
        assert top.converged and top.vectors.shape == (op.n, 3)
        # eigenvectors in the block's layout, with the residuals reported
        res = np.linalg.norm(block @ top.vectors - top.vectors * top.values[None, :], axis=0)
        assert np.all(res <= 2 * np.asarray(top.residuals) + 1e-12)
    # a single leaf; vectors come back with None where a leaf is held fixed
    only = ht.HessianOperator(mlp_loss, params, x, y, wrt=[(True, False), (False, False)])
    assert only.n == sizes[0]
    out = only @ jax.tree.map(jnp.ones_like, params)  # a full-shaped vector: its block is used
    assert out[0][1] is None and out[1] == (None, None)
    np.testing.assert_allclose(out[0][0].ravel(), full[: sizes[0], : sizes[0]].sum(1), rtol=1e-10)
    flat = only @ jnp.ones(sizes[0])  # flat in, flat out; and (n, k) columns
    np.testing.assert_allclose(flat, full[: sizes[0], : sizes[0]].sum(1), rtol=1e-10)
    cols = only @ jnp.eye(sizes[0])[:, :3]
    np.testing.assert_allclose(cols, full[: sizes[0], :3], rtol=1e-10, atol=1e-12)
    # a start vector in the block's layout (and the same compiled solve)
    top = ht.eigenpairs(only, 3, method="lanczos", v0=jnp.ones(sizes[0]), rtol=1e-10)
    w0 = np.linalg.eigvalsh(full[: sizes[0], : sizes[0]])
    np.testing.assert_allclose(top.values, w0[::-1][:3], rtol=1e-9)


def _signed(p, a):
    """A quadratic whose x-block is negative definite (eigenvalues -a, all
    far from 0) and y-block positive definite, the two coupled."""
    coupling = jnp.sum(p["x"][:5]) * p["y"][0]
    return -0.5 * jnp.sum(a * p["x"] ** 2) + 0.5 * jnp.sum(p["y"] ** 2) + coupling


def test_a_block_never_sees_the_zeros_of_the_rest():
    # the masked map has n - n_block zero eigenvalues outside the block: no
    # top eigenvalue, trace or density of the block may show them
    a = jnp.linspace(1.0, 3.0, 40, dtype=jnp.float64)
    p = {"x": jnp.ones(40, jnp.float64), "y": jnp.ones(50, jnp.float64)}
    op = ht.HessianOperator(_signed, p, a, wrt=lambda path: "x" in path)
    assert op.n == 40
    top = ht.eigenpairs(op, 2, method="lanczos", rtol=1e-10)  # largest: -1, not 0
    np.testing.assert_allclose(top.values, [-1.0, -a[1]], rtol=1e-9)
    est = ht.trace(op, key=1, num_matvecs=20)  # an estimate below n: Krylov deflation
    assert abs(float(est.value) + float(jnp.sum(a))) <= 3 * float(est.stderr) + 1e-8
    np.testing.assert_allclose(ht.trace(op, key=1, num_matvecs=40).value, -jnp.sum(a))
    np.testing.assert_allclose(ht.diagonal(op, key=1, num_matvecs=40).value, -a)
    dens = ht.spectral_density(op, key=1, num_steps=12, num_probes=2)
    assert float(jnp.max(dens.nodes)) <= -1.0 + 1e-8 and float(jnp.min(dens.nodes)) >= -3 - 1e-8
    # both ends (classify's Lanczos) at the critical point 0: a maximum in
    # the block, from -3 to -1 (a 0 from outside would make it degenerate)
    zero = jax.tree.map(jnp.zeros_like, p)
    point = ht.classify(_signed, zero, a, wrt=lambda path: "x" in path, method="lanczos")
    assert point.num_variables == 40 and point.kind == "maximum"
    np.testing.assert_allclose(np.sort(point.eigenvalues)[[0, -1]], [-3.0, -1.0], rtol=1e-6)


def test_blocks_reuse_the_compiled_solvers(compilations):
    # the compile count of block_spectra does not grow with the number of
    # blocks: 2 blocks compile what 6 do (each block above the dense path's
    # size, of different sizes and leaves)
    params, x, y = mlp_problem((8, 10, 12, 9, 3), samples=30, seed=1, dtype=jnp.float64)
    blocks = {
        "w0": r"^\[0\]\[0\]",
        "w1": r"^\[1\]\[0\]",
        "w2": r"^\[2\]\[0\]",
        "layer0": r"^\[0\]",
        "layer1": r"^\[1\]",
        "w0+w2": r"^\[[02]\]\[0\]",
    }
    names = list(blocks)
    # an operator's first check of a loss compiles a cheap program, the
    # second the optimised one (_hessian.checked_value_and_grad): once per
    # loss, not per block; done here so that only the solvers are counted
    ht.HessianOperator(mlp_loss, params, x, y)
    before = compilations.count
    first = ht.block_spectra(
        mlp_loss,
        params,
        x,
        y,
        blocks={k: blocks[k] for k in names[:2]},
        k=1,
        trace_matvecs=40,
        method="lanczos",  # the dense path, chosen for small blocks, compiles per size
    )
    two = compilations.count - before
    assert two > 0  # the counter sees compilations
    rest = ht.block_spectra(
        mlp_loss,
        params,
        x,
        y,
        blocks={k: blocks[k] for k in names[2:]},
        k=1,
        trace_matvecs=40,
        method="lanczos",
    )
    assert compilations.count - before == two  # 6 blocks: no more than 2
    # small blocks on the dense path (and exact traces): after the first, a
    # block of a new size compiles nothing either (no eigh, reshape or
    # chunk program per size)
    biases = {"b0": r"^\[0\]\[1\]", "b1": r"^\[1\]\[1\]", "b2": r"^\[2\]\[1\]"}
    small = ht.block_spectra(mlp_loss, params, x, y, blocks={"b0": biases["b0"]}, k=2)
    after_first = compilations.count
    small += ht.block_spectra(
        mlp_loss, params, x, y, blocks={k: biases[k] for k in ("b1", "b2")}, k=2
    )
    assert compilations.count == after_first
    assert [b.n for b in small] == [10, 12, 9]
    assert all(b.trace.method == "exact" for b in small)
    assert [b.n for b in first + rest] == [80, 120, 108, 90, 132, 188]
    full = dense_reference(mlp_loss, params, x, y)
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]
    edges = np.cumsum([0, *sizes])
    spans = {"w0": [0], "w1": [2], "w2": [4], "layer0": [0, 1], "layer1": [2, 3], "w0+w2": [0, 4]}
    spans.update(b0=[1], b1=[3], b2=[5])
    for b in first + rest + small:
        idx = np.concatenate([np.arange(edges[i], edges[i + 1]) for i in spans[b.name]])
        top = np.linalg.eigvalsh(full[np.ix_(idx, idx)])[-1]
        assert abs(float(b.values[0]) - top) <= float(b.error_bounds[0]) + 1e-10 * abs(top)


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
    # a wrt that selects nothing lists the key paths there are
    with pytest.raises(ValueError, match=r"selected by wrt.*\[0\]\[0\], \[0\]\[1\], \[1\]\[0\]"):
        ht.HessianOperator(mlp_loss, params, x, y, wrt=lambda path: False)
    with pytest.raises(ValueError, match=r"selected by wrt.*\[1\]\[1\]"):
        ht.HessianOperator(mlp_loss, params, x, y, wrt=[False, False])
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
