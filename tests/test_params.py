"""Which leaves are the variables (hessian_tools._params): model state
(batch statistics) is held fixed and named, never silently a variable."""

import flax.linen as linen
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import hessian_tools as ht

X = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3)))
Y = jnp.asarray(np.random.default_rng(1).normal(size=(16, 2)))


class LinenNet(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.Dense(4, param_dtype=jnp.float64)(x)
        x = linen.BatchNorm(use_running_average=True, param_dtype=jnp.float64)(x)
        return linen.Dense(2, param_dtype=jnp.float64)(jnp.tanh(x))


def test_linen_batch_stats_are_held_fixed_and_named():
    net = LinenNet()
    variables = net.init(jax.random.PRNGKey(0), X)
    variables = jax.tree.map(lambda a: a + 0.1, variables)  # nonzero statistics

    def loss(v, x, y):
        return jnp.mean((net.apply(v, x) - y) ** 2)

    with pytest.warns(ht.ModelStateWarning, match=r"\['batch_stats'\].*mean.*nnx.split"):
        op = ht.HessianOperator(loss, variables, X, Y)  # the whole variables dict
    assert op.n == ravel_pytree(variables["params"])[0].size  # 14 + 8 + 10 = 32, not 40

    def split(p, stats, x, y):
        return loss({"params": p, "batch_stats": stats}, x, y)

    clean = ht.HessianOperator(split, variables["params"], variables["batch_stats"], X, Y)
    np.testing.assert_allclose(
        np.asarray(ht.eigenpairs(op, 2, method="dense").values),
        np.asarray(ht.eigenpairs(clean, 2, method="dense").values),
        rtol=1e-10,
    )
    # selected on purpose with wrt=: curvature in the statistics too, no warning
    with_stats = ht.HessianOperator(loss, variables, X, Y, wrt=lambda path: True)
    assert with_stats.n == ravel_pytree(variables)[0].size
    # a block beside model state: the masked map of all the floating leaves
    # (statistics included, masked out) is the sub-block of the full Hessian
    block = ht.HessianOperator(loss, variables, X, Y, wrt=lambda path: "Dense_0" in path)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables)]
    sizes = [x.size for x in jax.tree.leaves(variables)]
    edges = np.cumsum([0, *sizes])
    idx = np.concatenate(
        [np.arange(edges[i], edges[i + 1]) for i, p in enumerate(paths) if "Dense_0" in p]
    )
    assert block.n == idx.size == 16
    np.testing.assert_allclose(
        block.to_dense(), with_stats.to_dense()[np.ix_(idx, idx)], rtol=1e-10, atol=1e-13
    )


def test_a_block_moves_between_its_leaves_and_all_the_variables():
    params = {"a": jnp.ones(3), "b": (jnp.zeros((2, 2)), 7), "c": jnp.arange(4.0)}
    space = ht._params.Partition.everything(params)
    block = ht._params.Partition.of(params, wrt=lambda path: "c" in path or "b" in path)
    assert block.within(space) == (False, True, True)
    vector = {"a": jnp.full(3, 1.0), "b": (jnp.full((2, 2), 2.0), None), "c": jnp.full(4, 3.0)}
    taken = block.take(space, vector)
    assert taken["a"] is None and taken["b"][0] is vector["b"][0] and taken["c"] is vector["c"]
    back = block.put(space, taken, [np.zeros(3), None, None])
    assert back["b"][1] is None and np.all(back["a"] == 0) and back["c"] is vector["c"]


def test_nnx_batch_stat_variables_are_held_fixed():
    model = nnx.Sequential(
        nnx.Linear(3, 4, rngs=nnx.Rngs(0)),
        nnx.BatchNorm(4, use_running_average=True, rngs=nnx.Rngs(1)),
        nnx.Linear(4, 2, rngs=nnx.Rngs(2)),
    )
    graph, state = nnx.split(model)

    def loss(s, x, y):
        return jnp.mean((nnx.merge(graph, s)(x) - y) ** 2)

    with pytest.warns(ht.ModelStateWarning, match="mean.*var"):
        op = ht.HessianOperator(loss, state, X.astype(jnp.float32), Y.astype(jnp.float32))
    params = nnx.split(model, nnx.Param, ...)[1]
    assert op.n == ravel_pytree(params)[0].size


def test_a_string_wrt_is_a_key_path_pattern():
    # before: a string was a pytree prefix, bool("a") is True, and
    # wrt="a" silently selected every variable
    params = {"attn": {"query": jnp.ones(3), "key": jnp.ones(2)}, "mlp": jnp.ones(4)}
    by_pattern = ht._params.Partition.of(params, wrt="query|mlp")
    by_predicate = ht._params.Partition.of(params, wrt=lambda p: "query" in p or "mlp" in p)
    assert by_pattern == by_predicate
    assert by_pattern.kinds.count(ht._params.VAR) == 2
    # a typo selects nothing: the message lists the key paths to choose from
    with pytest.raises(ValueError, match=r"selected by wrt.*\['attn'\]\['query'\]"):
        ht._params.Partition.of(params, wrt="qeury")
    with pytest.raises(ValueError, match=r"key-path pattern.*does not compile"):
        ht._params.Partition.of(params, wrt="attn[")
