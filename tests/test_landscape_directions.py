"""Directions in parameter space (hessian_tools.landscape): filter
normalisation against the parameters' filter norms, Hessian eigenvectors,
gradients, interpolation planes and PCA of trajectories."""

import importlib

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from _util import asym_loss, asym_problem, at

from hessian_tools import landscape as L
from hessian_tools.dense import hessian
from hessian_tools.operators import HessianOperator


@pytest.fixture
def problem():
    return asym_problem()


def filter_norms(x, axis=-1):
    x = np.asarray(x)
    axis = axis % x.ndim
    return np.sqrt(np.sum(x**2, axis=tuple(i for i in range(x.ndim) if i != axis)))


def conv_params():
    k = jax.random.split(jax.random.PRNGKey(3), 4)
    return {
        "conv": {"kernel": jax.random.normal(k[0], (3, 3, 2, 5)), "bias": jnp.ones(5)},
        "dense": {"kernel": jax.random.normal(k[1], (7, 4)) * 3, "bias": jnp.arange(4.0)},
        "norm": {"scale": jnp.full(4, 2.0)},
    }


def test_filter_normalisation_matches_param_filter_norms():
    params = conv_params()
    d = L.random_direction(jax.random.PRNGKey(0), params)  # filter, 1-D zeroed
    for layer in ("conv", "dense"):
        np.testing.assert_allclose(
            filter_norms(d[layer]["kernel"]), filter_norms(params[layer]["kernel"]), rtol=1e-12
        )
        assert not np.any(d[layer]["bias"])
    assert not np.any(d["norm"]["scale"])
    # PyTorch layout: filters along axis 0
    d0 = L.random_direction(jax.random.PRNGKey(1), params, filter_axis=0)
    np.testing.assert_allclose(
        filter_norms(d0["conv"]["kernel"], 0), filter_norms(params["conv"]["kernel"], 0)
    )
    assert not np.allclose(
        filter_norms(d0["conv"]["kernel"]), filter_norms(params["conv"]["kernel"])
    )


def test_filter_axis_read_off_each_library_layout():
    import equinox as eqx
    import flax.linen as nn
    from flax import nnx

    key = jax.random.PRNGKey(0)  # the models are float32: norms agree to ~1e-7
    # Equinox: weights (out, in) and OIHW, filters along axis 0; its conv
    # bias is (out, 1, 1) and counts as a bias
    model = eqx.nn.Sequential(
        [eqx.nn.Conv2d(2, 4, 3, key=key), eqx.nn.Lambda(jnp.tanh), eqx.nn.Linear(6, 3, key=key)]
    )
    d = L.random_direction(jax.random.PRNGKey(1), model)
    for layer in (0, 2):
        w, dw = model.layers[layer].weight, d.layers[layer].weight
        np.testing.assert_allclose(filter_norms(dw, 0), filter_norms(w, 0), rtol=1e-6)
        assert not np.allclose(filter_norms(dw, -1), filter_norms(w, -1))
        assert not np.any(d.layers[layer].bias)
    assert d.layers[1].fn is None  # not a variable: no direction there
    # Flax Linen: kernels (in, out) and HWIO, filters along the last axis
    linen = nn.Sequential([nn.Conv(4, (3, 3)), nn.Dense(3)])
    variables = linen.init(key, jnp.ones((1, 5, 5, 2)))
    d = L.random_direction(jax.random.PRNGKey(2), variables)
    for name in ("layers_0", "layers_1"):
        w, dw = variables["params"][name]["kernel"], d["params"][name]["kernel"]
        np.testing.assert_allclose(filter_norms(dw), filter_norms(w), rtol=1e-6)
    # Flax NNX: the same kernels, under .value
    lin = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
    state = nnx.split(lin)[1]
    d = L.random_direction(jax.random.PRNGKey(3), state)
    np.testing.assert_allclose(
        filter_norms(d["kernel"][...]), filter_norms(state["kernel"][...]), rtol=1e-6
    )
    # a weight whose layout cannot be told from its name: an error, not a guess
    with pytest.raises(ValueError, match="filter_axis"):
        L.random_direction(key, {"w": jnp.ones((3, 2)), "b": jnp.ones(2)})


def test_leaves_1d_keep_and_other_normalisations():
    params = conv_params()
    key = jax.random.PRNGKey(2)
    d = L.random_direction(key, params, leaves_1d="keep")
    for path in (("conv", "bias"), ("dense", "bias"), ("norm", "scale")):
        leaf_d, leaf_p = d[path[0]][path[1]], params[path[0]][path[1]]
        assert np.linalg.norm(leaf_d) == pytest.approx(float(np.linalg.norm(leaf_p)))
        assert not np.allclose(leaf_d, leaf_p)  # random, not a copy of params
    layer = L.random_direction(key, params, "layer")
    for name in ("conv", "dense"):
        assert np.linalg.norm(layer[name]["kernel"]) == pytest.approx(
            float(np.linalg.norm(params[name]["kernel"]))
        )
    model = L.random_direction(key, params, "model", leaves_1d="keep")
    flat_p = jax.flatten_util.ravel_pytree(params)[0]
    flat_d = jax.flatten_util.ravel_pytree(model)[0]
    assert float(jnp.linalg.norm(flat_d)) == pytest.approx(float(jnp.linalg.norm(flat_p)))
    raw = L.random_direction(key, params, None, leaves_1d="keep")
    raw_again = L.random_direction(key, params, None, leaves_1d="keep")
    jax.tree.map(np.testing.assert_array_equal, raw, raw_again)  # deterministic in the key
    with pytest.raises(ValueError, match="normalization"):
        L.random_direction(key, params, "unit")
    with pytest.raises(ValueError, match="leaves_1d"):
        L.random_direction(key, params, leaves_1d="drop")
    with pytest.raises(ValueError, match="identically zero"):
        L.random_direction(key, jnp.ones(2))  # a 2-D toy: its only leaf is 1-D
    assert np.linalg.norm(L.random_direction(key, jnp.ones(2), leaves_1d="keep")) > 0


def test_eigen_directions_are_hessian_eigenvectors(problem):
    params, a, _, _ = problem
    op = HessianOperator(asym_loss, params, a)
    dense = np.asarray(hessian(asym_loss, params, a))
    w = np.linalg.eigvalsh(dense)
    for which, expected in (("largest", w[::-1][:2]), ("smallest", w[:2])):
        dirs = L.eigen_directions(op, 2, which=which)
        assert len(dirs) == 2
        for d, lam in zip(dirs, expected, strict=True):
            v = np.asarray(jax.flatten_util.ravel_pytree(d)[0])
            np.testing.assert_allclose(dense @ v, lam * v, atol=1e-10)
            assert np.linalg.norm(v) == pytest.approx(1.0)
    with pytest.raises(TypeError, match="unravel"):
        L.eigen_directions(dense, 1)


def test_gradient_direction(problem):
    params, a, _, _ = problem
    g = jax.grad(asym_loss)(params, a)
    gn = float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g))))
    d = L.gradient_direction(asym_loss, params, a)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v / gn, rtol=1e-12), d, g)
    raw = L.gradient_direction(asym_loss, params, a, normalization=None)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-12), raw, g)
    # batches: the gradient of the size-weighted mean
    data = np.random.default_rng(1).normal(size=(5, 3))
    f = lambda p, x: jnp.mean((x @ p["w"].T) ** 2) + jnp.sum(p["b"] ** 2)
    db = L.gradient_direction(f, params, batches=[(data[:2],), (data[2:],)], normalization=None)
    gf = jax.grad(f)(params, data)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-12), db, gf)
    with pytest.raises(ValueError, match="zero"):
        L.gradient_direction(lambda p: jnp.sum(p**2), jnp.zeros(3))


def test_interpolation_line_and_plane(problem):
    params, a, d1, d2 = problem
    pb, pc = at(params, (1.0,), (d1,)), at(params, (1.0,), (d2,))
    line = L.interpolation(params, pb)
    s = L.slice_1d(asym_loss, line.origin, line.directions[0], [0.0, 1.0], a)
    np.testing.assert_allclose(s.values, [asym_loss(params, a), asym_loss(pb, a)], rtol=1e-12)
    plane = L.interpolation(params, pb, pc)
    np.testing.assert_array_equal(plane.coords, [[0, 0], [1, 0], [0, 1]])
    ortho = L.interpolation(params, pb, pc, orthonormalize=True)
    u = [np.asarray(jax.flatten_util.ravel_pytree(d)[0]) for d in ortho.directions]
    np.testing.assert_allclose(np.array([[x @ y for y in u] for x in u]), np.eye(2), atol=1e-12)
    # each point is reproduced by its coordinates
    for point, c in zip((params, pb, pc), ortho.coords, strict=True):
        rebuilt = at(ortho.origin, c, ortho.directions)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-12), rebuilt, point)
    with pytest.raises(ValueError, match="collinear"):
        L.interpolation(params, pb, at(params, (2.0,), (d1,)))
    with pytest.raises(ValueError, match="identical"):
        L.interpolation(params, params)


def test_pca_directions_recover_a_planar_trajectory(problem):
    params, _, d1, d2 = problem
    t = np.linspace(0, 1, 12)
    path_xy = np.stack([3 * t, np.sin(3 * t)], axis=1)  # a curve in span(d1, d2)
    traj = [at(params, xy, (d1, d2)) for xy in path_xy]
    sub = L.pca_directions(traj)
    assert np.sum(sub.explained_variance) == pytest.approx(1.0)
    assert sub.explained_variance[0] >= sub.explained_variance[1]
    assert sub.coords.shape == (12, 2)
    np.testing.assert_allclose(sub.coords[-1], 0, atol=1e-12)  # origin: the last point
    for point, c in zip(traj, sub.coords, strict=True):  # in-plane: projection is exact
        rebuilt = at(sub.origin, c, sub.directions)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-10), rebuilt, point)
    assert sub.coords[0, 0] < sub.coords[-1, 0]  # runs towards +
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *traj)
    sub2 = L.pca_directions(stacked)
    np.testing.assert_allclose(sub2.coords, sub.coords, atol=1e-10)
    # off-plane noise shows up as unexplained variance
    rng = np.random.default_rng(0)
    noisy = [jax.tree.map(lambda x: x + 0.3 * rng.normal(size=x.shape), p) for p in traj]
    assert np.sum(L.pca_directions(noisy).explained_variance) < 0.99
    with pytest.raises(ValueError, match="at least 2"):
        L.pca_directions([params])


def test_random_direction_does_not_mutate_params(problem):
    params = jax.tree.map(lambda x: np.array(x), problem[0])
    before = jax.tree.map(np.copy, params)
    L.random_direction(jax.random.PRNGKey(0), params, filter_axis=-1)
    jax.tree.map(np.testing.assert_array_equal, params, before)


def fixed_direction():
    """A deterministic direction for conv_params(), with one all-zero filter."""
    k = jax.random.split(jax.random.PRNGKey(11), 3)
    return {
        "conv": {
            "kernel": jax.random.normal(k[0], (3, 3, 2, 5)).at[..., 2].set(0.0),
            "bias": jnp.arange(5.0) - 2,
        },
        "dense": {"kernel": jax.random.normal(k[1], (7, 4)), "bias": jnp.ones(4)},
        "norm": {"scale": jax.random.normal(k[2], (4,))},
    }


def test_normalize_direction_filter_rescales_each_filter_and_keeps_its_direction():
    params, d = conv_params(), fixed_direction()
    out = L.normalize_direction(d, params)
    for layer in ("conv", "dense"):
        got, raw, p = (np.asarray(t[layer]["kernel"]) for t in (out, d, params))
        target = filter_norms(p)
        target[filter_norms(raw) == 0] = 0  # a zero filter stays zero
        np.testing.assert_allclose(filter_norms(got), target, rtol=1e-12)
        # each filter is the input filter times a positive factor
        scale = filter_norms(got) / np.where(filter_norms(raw) > 0, filter_norms(raw), 1)
        np.testing.assert_allclose(got, raw * scale, rtol=1e-12)
        assert not np.any(out[layer]["bias"])
    assert not np.any(out["norm"]["scale"])
    # leaves_1d="keep": a 1-D leaf counts as one filter
    kept = L.normalize_direction(d, params, leaves_1d="keep")
    for path in (("conv", "bias"), ("dense", "bias"), ("norm", "scale")):
        leaf, p = kept[path[0]][path[1]], params[path[0]][path[1]]
        assert np.linalg.norm(leaf) == pytest.approx(float(np.linalg.norm(p)), rel=1e-12)


def test_normalize_direction_layer_model_and_none():
    params, d = conv_params(), fixed_direction()
    layer = L.normalize_direction(d, params, "layer", leaves_1d="keep")
    for a, b in zip(jax.tree.leaves(layer), jax.tree.leaves(params), strict=True):
        assert np.linalg.norm(a) == pytest.approx(float(np.linalg.norm(b)), rel=1e-12)
    # "model" with 1-D leaves zeroed: the norm of the kernels of params
    model = L.normalize_direction(d, params, "model")
    kernels = [params["conv"]["kernel"], params["dense"]["kernel"]]
    target = np.sqrt(sum(float(jnp.sum(k**2)) for k in kernels))
    flat = jax.flatten_util.ravel_pytree(model)[0]
    assert float(jnp.linalg.norm(flat)) == pytest.approx(target, rel=1e-12)
    # the same multiple of the direction everywhere, its 1-D leaves zeroed
    zeroed = jax.tree.map(lambda x: x if x.ndim > 1 else jnp.zeros_like(x), d)
    raw = jax.flatten_util.ravel_pytree(zeroed)[0]
    np.testing.assert_allclose(flat, raw * target / float(jnp.linalg.norm(raw)), rtol=1e-12)
    same = L.normalize_direction(d, params, None, leaves_1d="keep")
    jax.tree.map(np.testing.assert_array_equal, same, d)


def test_normalize_direction_casts_to_the_params_dtype_and_checks_structure():
    params = jax.tree.map(lambda x: x.astype(jnp.float32), conv_params())
    out = L.normalize_direction(fixed_direction(), params)
    assert {leaf.dtype for leaf in jax.tree.leaves(out)} == {jnp.dtype(jnp.float32)}
    with pytest.raises(ValueError, match="structure"):
        L.normalize_direction({"conv": fixed_direction()["conv"]}, params)
    with pytest.raises(ValueError, match="normalization"):
        L.normalize_direction(fixed_direction(), params, "unit")


def test_one_import_path_per_public_function():
    import hessian_tools as ht

    for package in (ht.landscape, ht.plotting):
        for name in package.__all__:
            obj = getattr(package, name)
            if callable(obj) and hasattr(obj, "__module__"):
                # defined in a private module of the package, public only here
                assert obj.__module__.startswith(package.__name__ + "._"), (name, obj.__module__)
    for gone in ("directions", "landscape_metrics", "_filters", "_plot_spectrum", "_plot_common"):
        with pytest.raises(ImportError):
            importlib.import_module(f"hessian_tools.{gone}")
