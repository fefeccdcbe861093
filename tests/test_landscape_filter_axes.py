"""Filter axes read from the model (ht.landscape.filter_axes): the
contraction that consumes each weight tells its layout, whatever its name."""

import equinox as eqx
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht

L = ht.landscape
X = jnp.ones((5, 4))


def test_dense_layouts_whatever_the_name():
    def loss(p, x):
        h = jnp.tanh(x @ p["a"]["w"] + p["a"]["b"][None])  # (in, out): Haiku's w
        return jnp.sum(h @ p["c"]["w"].T)  # (out, in): a PyTorch-style w

    params = {"a": {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}, "c": {"w": jnp.ones((2, 3))}}
    axes = L.filter_axes(loss, params, X)
    assert axes == {"a": {"w": (1,), "b": None}, "c": {"w": (0,)}}


def test_convolutions_nhwc_and_nchw():
    x = jnp.ones((2, 6, 6, 3))

    def nhwc(p, x):
        y = jax.lax.conv_general_dilated(
            x, p["k"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(y)

    def nchw(p, x):
        y = jax.lax.conv_general_dilated(
            jnp.transpose(x, (0, 3, 1, 2)), p["k"], (1, 1), "SAME"
        )  # OIHW
        return jnp.sum(y)

    assert L.filter_axes(nhwc, {"k": jnp.ones((3, 3, 3, 8))}, x) == {"k": (3,)}
    assert L.filter_axes(nchw, {"k": jnp.ones((8, 3, 3, 3))}, x) == {"k": (0,)}


def test_einsum_attention_kernel_has_two_filter_axes():
    def loss(p, x):
        q = jnp.einsum("bd,dhk->bhk", x, p["q"])  # (in, heads, head_dim)
        return jnp.sum(jnp.einsum("bhk,hkd->bd", q, p["o"]))  # (heads, head_dim, out)

    params = {"q": jnp.ones((4, 2, 3)), "o": jnp.ones((2, 3, 4))}
    assert L.filter_axes(loss, params, X) == {"q": (1, 2), "o": (2,)}


def test_a_head_with_larger_weights_keeps_its_scale():
    # (in, heads, head_dim) with head 1 ten times larger: with the model's two
    # filter axes each head's direction takes its own norm (one axis pooled them)
    def loss(p, x):
        return jnp.sum(jnp.einsum("bd,dhk->bhk", x, p["q"]) ** 2)

    q = jnp.concatenate([jnp.ones((4, 1, 3)), 10 * jnp.ones((4, 1, 3))], axis=1)
    params = {"q": q}
    d = L.random_direction(
        jax.random.PRNGKey(0), params, filter_axis=L.filter_axes(loss, params, X)
    )
    norms = np.linalg.norm(np.asarray(d["q"]), axis=(0, 2))
    np.testing.assert_allclose(norms / np.linalg.norm(np.asarray(q), axis=(0, 2)), 1, rtol=1e-5)


def _axes_by_path(axes):
    is_axes = lambda t: isinstance(t, tuple) and all(isinstance(i, int) for i in t)
    leaves = jax.tree_util.tree_leaves_with_path(axes, is_leaf=is_axes)
    return {jax.tree_util.keystr(p): a for p, a in leaves}


def test_flax_nnx_and_equinox_models():
    model = nnx.Sequential(
        nnx.Linear(4, 6, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(6, 2, rngs=nnx.Rngs(1))
    )
    graph, state = nnx.split(model)
    axes = _axes_by_path(L.filter_axes(lambda s, x: jnp.sum(nnx.merge(graph, s)(x)), state, X))
    assert sorted(a for p, a in axes.items() if "kernel" in p) == [(1,), (1,)]  # (in, out)
    mlp = eqx.nn.MLP(4, 2, 6, 1, key=jax.random.PRNGKey(0))
    eqx_axes = _axes_by_path(L.filter_axes(lambda m, x: jnp.sum(jax.vmap(m)(x)), mlp, X))
    assert sorted(a for p, a in eqx_axes.items() if "weight" in p) == [(0,), (0,)]  # (out, in)


def test_embeddings_and_shared_weights_are_named_not_guessed():
    tokens = jnp.array([[0, 2, 1]])

    def loss(p, t):
        h = p["embed"][t]  # a gather
        return jnp.sum(h @ p["embed"].T)  # the same table, tied output

    params = {"embed": jnp.ones((3, 4))}
    with pytest.raises(ValueError, match=r"\['embed'\] \(3, 4\).*gather") as info:
        L.filter_axes(loss, params, tokens)
    assert "given=" in str(info.value)
    assert L.filter_axes(loss, params, tokens, given={"['embed']": 0}) == {"embed": (0,)}

    def pos(p, x):  # a positional table added to the activations
        return jnp.sum((x + p["pos"]) @ p["w"])

    with pytest.raises(ValueError, match=r"\['pos'\].*add"):
        L.filter_axes(pos, {"pos": jnp.ones((5, 4)), "w": jnp.ones((4, 2))}, X)
    with pytest.raises(ValueError, match="not variables"):
        L.filter_axes(
            pos, {"pos": jnp.ones((5, 4)), "w": jnp.ones((4, 2))}, X, given={"['nope']": 0}
        )
