"""The toy problems (hessian_tools.problems): the listed critical points
against autodiff gradients, classify() and the closed forms they come from."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools import problems

NAMES = sorted(problems.TOY_2D)
ST_ROOTS = np.sort(np.roots([2.0, 0.0, -16.0, 2.5]).real)  # Styblinski-Tang, per axis


def grad_scale(hess, x):
    """``max(1, ||H||) * max(1, ||x||)``: a gradient this big is a relative
    error of 1 in x (the scale classify's gradient tolerance uses too)."""
    h = np.asarray(hess(jnp.asarray(x)))
    return max(1.0, np.abs(np.linalg.eigvalsh(h)).max()) * max(1.0, np.linalg.norm(x))


# --------------------------------------------------------------------------
# TOY_2D: every listed point is critical, of the listed kind


@pytest.mark.parametrize("name", NAMES)
def test_listed_points_have_zero_gradient(name):
    prob = problems.TOY_2D[name]
    assert prob.name == name and prob.critical_points
    grad, hess = jax.jit(jax.grad(prob.f)), jax.jit(jax.hessian(prob.f))
    for x, _ in prob.critical_points:
        assert x.shape == (2,) and x.dtype == np.float64
        g = np.asarray(grad(jnp.asarray(x)))
        # listed to 12 digits, the worst at 5e-13 of the scale: 1e-10 leaves a
        # margin of 200 and still catches a slip in the 8th digit of a coordinate
        assert np.linalg.norm(g) <= 1e-10 * grad_scale(hess, x), (x, g)


@pytest.mark.parametrize("name", NAMES)
def test_classify_gives_the_listed_kind(name):
    prob = problems.TOY_2D[name]
    for x, kind in prob.critical_points:
        cp = ht.classify(prob.f, jnp.asarray(x))
        assert cp.kind == kind, (x, cp)
        expected_index = {"minimum": 0, "saddle": 1, "maximum": 2, "degenerate": 0}[kind]
        assert cp.index == expected_index, (x, cp)


@pytest.mark.parametrize("name", NAMES)
def test_listed_points_are_distinct_and_inside_the_box(name):
    prob = problems.TOY_2D[name]
    (x0, x1), (y0, y1) = prob.bounds
    pts = np.array([x for x, _ in prob.critical_points])
    assert np.all((pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1))
    gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(pts, 2)]
    assert not gaps or min(gaps) > 1e-3


# (minima, saddles, maxima) from the analysis in each docstring: Himmelblau
# 4 + 4 + 1; the camels by their symmetry; Styblinski-Tang and Rastrigin are
# separable, so the kinds are products of the per-axis roots in the box
# (3 roots: 2 minima, 1 maximum; Rastrigin in [-1.2, 1.2]: 3 minima, 2 maxima).
KIND_COUNTS = {
    "himmelblau": (4, 4, 1),
    "rosenbrock": (1, 0, 0),
    "six_hump_camel": (6, 7, 2),
    "three_hump_camel": (3, 2, 0),
    "styblinski_tang": (2 * 2, 2 * 2 * 1, 1),
    "rastrigin": (3 * 3, 2 * 3 * 2, 2 * 2),
    "saddle": (0, 1, 0),
    "monkey_saddle": (0, 0, 0),
}


@pytest.mark.parametrize("name", NAMES)
def test_kind_counts_match_the_analysis(name):
    kinds = [kind for _, kind in problems.TOY_2D[name].critical_points]
    counts = tuple(kinds.count(k) for k in ("minimum", "saddle", "maximum"))
    assert counts == KIND_COUNTS[name]
    assert kinds.count("degenerate") == (name == "monkey_saddle")


def test_documented_values():
    def values(name, kind):
        prob = problems.TOY_2D[name]
        return sorted(float(prob.f(jnp.asarray(x))) for x, k in prob.critical_points if k == kind)

    np.testing.assert_allclose(values("himmelblau", "minimum"), 0.0, atol=1e-20)
    np.testing.assert_allclose(values("rosenbrock", "minimum"), 0.0, atol=0)
    six = values("six_hump_camel", "minimum")
    np.testing.assert_allclose(six[:2], -1.031628453490, atol=1e-11)
    np.testing.assert_allclose(six[2:4], -0.215463824384, atol=1e-11)
    np.testing.assert_allclose(six[4:], 2.104250310311, atol=1e-11)
    np.testing.assert_allclose(values("six_hump_camel", "maximum"), 2.496295351024, atol=1e-11)
    three = values("three_hump_camel", "minimum")
    np.testing.assert_allclose(three, [0.0, 0.298638442237, 0.298638442237], atol=1e-11)
    np.testing.assert_allclose(values("three_hump_camel", "saddle"), 0.877361557763, atol=1e-11)
    st = values("styblinski_tang", "minimum")
    np.testing.assert_allclose(st[0], 2 * -39.166165703771, atol=1e-10)
    np.testing.assert_allclose(values("rastrigin", "minimum")[0], 0.0, atol=1e-14)


def test_six_hump_camel_symmetric_under_negation():
    prob = problems.TOY_2D["six_hump_camel"]
    listed = {tuple(np.round(x, 9)): kind for x, kind in prob.critical_points}
    for x, kind in listed.items():
        assert listed[tuple(-np.asarray(x) + 0.0)] == kind
        np.testing.assert_allclose(
            prob.f(jnp.asarray(x)), prob.f(-jnp.asarray(x)), rtol=1e-14, atol=1e-15
        )


# --------------------------------------------------------------------------
# N-D problems


def test_styblinski_tang_in_3d_index_counts_middle_roots():
    np.testing.assert_allclose(
        ST_ROOTS, [-2.903534027771, 0.156731256780, 2.746802770991], atol=1e-12
    )
    points = np.array(list(itertools.product(ST_ROOTS, repeat=3)))
    grads = np.asarray(jax.vmap(jax.grad(problems.styblinski_tang))(jnp.asarray(points)))
    assert np.abs(grads).max() < 1e-12
    for x in points[[0, 4, 13, 26]]:  # index 0, 1, 3 and 1
        cp = ht.classify(problems.styblinski_tang, jnp.asarray(x))
        assert cp.index == int(np.sum(np.isclose(x, ST_ROOTS[1])))
    low = problems.styblinski_tang(jnp.full(3, ST_ROOTS[0]))
    np.testing.assert_allclose(low, 3 * -39.166165703771, atol=1e-10)


def test_rastrigin_in_nd():
    # the origin is the global minimum, value 0, Hessian (2 + 4 pi^2 A) I
    for n in (1, 5):
        cp = ht.classify(problems.rastrigin, jnp.zeros(n))
        assert cp.kind == "minimum" and float(cp.value) == 0.0
        np.testing.assert_allclose(cp.eigenvalues, 2 + 4 * np.pi**2 * 10, rtol=1e-12)
    # the root near 1/2 of x + pi A sin(2 pi x) = 0, on one axis: index 1
    half = problems.TOY_2D["rastrigin"].critical_points
    r = max(x[0] for x, _ in half if 0.25 < x[0] < 0.75)
    g, dg = r + np.pi * 10 * np.sin(2 * np.pi * r), 1 + 2 * np.pi**2 * 10 * np.cos(2 * np.pi * r)
    assert abs(g) <= 1e-9 * abs(dg)  # a root to ~12 digits
    cp = ht.classify(problems.rastrigin, jnp.array([0.0, r, 0.0]))
    assert (cp.kind, cp.index) == ("saddle", 1)


@pytest.mark.parametrize("n", [3, 6])
def test_rosenbrock_minimum_at_ones(n):
    x = jnp.ones(n)
    assert float(problems.rosenbrock(x)) == 0.0
    assert not np.any(np.asarray(jax.grad(problems.rosenbrock)(x)))
    cp = ht.classify(problems.rosenbrock, x)
    assert cp.kind == "minimum" and cp.index == 0


def test_rosenbrock_other_minima():
    # N = 2 with a, b: the minimum sits at (a, a^2)
    f = lambda x: problems.rosenbrock(x, 2.0, 10.0)
    assert float(f(jnp.array([2.0, 4.0]))) == 0.0
    assert ht.classify(f, jnp.array([2.0, 4.0])).kind == "minimum"
    # N = 4: the local minimum listed to 4 digits (Kok & Sandrock 2009)
    listed = np.array([-0.7757, 0.6131, 0.3820, 0.1459])
    (cp,) = ht.find_critical_points(problems.rosenbrock, jnp.asarray(listed)[None])
    assert cp.kind == "minimum" and float(cp.value) > 3.0
    np.testing.assert_allclose(cp.x, listed, atol=1e-4)
    with pytest.raises(ValueError, match="N >= 2"):
        problems.rosenbrock(jnp.ones(1))


# --------------------------------------------------------------------------
# The linear autoencoder's closed-form critical points (Baldi & Hornik 1989)


def autoencoder_subsets(d, p):
    return [s for r in range(p + 1) for s in itertools.combinations(range(d), r)]


def test_linear_autoencoder_closed_form_points_are_critical():
    lam = [4.0, 3.0, 2.0, 1.0]
    p = 2
    grad = jax.jit(jax.grad(problems.linear_autoencoder))
    for subset in autoencoder_subsets(len(lam), p):
        params, s, loss = problems.linear_autoencoder_critical_point(lam, subset, p)
        assert params["W1"].shape == (p, 4) and params["W2"].shape == (4, p)
        np.testing.assert_allclose(np.asarray(s) @ np.asarray(s), np.diag(lam), rtol=1e-15)
        left_out = 0.5 * sum(lam[i] for i in range(len(lam)) if i not in subset)
        assert loss == pytest.approx(left_out, rel=1e-15)
        value = problems.linear_autoencoder(params, s)
        np.testing.assert_allclose(value, left_out, rtol=1e-14)
        g = grad(params, s)
        assert max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(g)) < 1e-13
        # the GL(p) symmetry W1 -> C W1, W2 -> W2 C^-1 keeps the point critical
        c = jnp.array([[2.0, 0.5], [-0.3, 1.5]])
        moved = {"W1": c @ params["W1"], "W2": params["W2"] @ jnp.linalg.inv(c)}
        np.testing.assert_allclose(problems.linear_autoencoder(moved, s), left_out, rtol=1e-12)
        g = grad(moved, s)
        assert max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(g)) < 1e-12


def test_linear_autoencoder_a_perturbed_point_is_not_critical():
    # the check above can fail: off the closed form the gradient is not zero
    params, s, _ = problems.linear_autoencoder_critical_point([3.0, 2.0, 1.0], [1], 1)
    bumped = {"W1": params["W1"].at[0, 0].add(0.1), "W2": params["W2"]}
    g = jax.grad(problems.linear_autoencoder)(bumped, s)
    assert max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(g)) > 0.1


def test_linear_autoencoder_critical_point_bad_subsets():
    lam = [3.0, 2.0, 1.0]
    for subset in ([0, 1], [0, 0], [3], [-1]):
        with pytest.raises(ValueError, match="subset"):
            problems.linear_autoencoder_critical_point(lam, subset, 1 if len(subset) > 1 else 2)
    params, s, _ = problems.linear_autoencoder_critical_point(lam, [2], 1, dtype=jnp.float32)
    assert params["W1"].dtype == jnp.float32 and s.dtype == jnp.float32


# --------------------------------------------------------------------------
# random_symmetric and quadratic_form


@pytest.mark.parametrize("seed", [0, 1])
def test_random_symmetric_has_the_requested_spectrum(seed):
    lam = np.array([-3.0, 7.5, 0.0, 1e-3, 2.0, 2.0, -0.25])
    a = np.asarray(problems.random_symmetric(lam, jax.random.PRNGKey(seed)))
    assert a.shape == (7, 7) and a.dtype == np.float64
    np.testing.assert_allclose(a, a.T, rtol=0, atol=1e-14 * 7.5)
    np.testing.assert_allclose(np.linalg.eigvalsh(a), np.sort(lam), rtol=0, atol=1e-13 * 7.5)
    # not diagonal: the eigenvectors are random, and reproducible from the key
    assert np.abs(a - np.diag(np.diag(a))).max() > 0.1
    again = problems.random_symmetric(lam, jax.random.PRNGKey(seed))
    np.testing.assert_array_equal(again, a)
    other = problems.random_symmetric(lam, jax.random.PRNGKey(seed + 10))
    assert not np.allclose(other, a)


def test_random_symmetric_without_key_dtypes_and_bad_input():
    np.testing.assert_array_equal(problems.random_symmetric([1, 2, 3]), np.diag([1.0, 2.0, 3.0]))
    assert jnp.issubdtype(problems.random_symmetric([1, 2]).dtype, jnp.floating)
    a32 = problems.random_symmetric(jnp.array([1.0, -2.0], jnp.float32), jax.random.PRNGKey(0))
    assert a32.dtype == jnp.float32
    with pytest.raises(ValueError, match="1-D"):
        problems.random_symmetric([])
    with pytest.raises(ValueError, match="1-D"):
        problems.random_symmetric(np.eye(2))


def test_quadratic_form_hessian_is_the_matrix():
    a = problems.random_symmetric(jnp.array([-1.0, 0.5, 4.0]), jax.random.PRNGKey(3))
    x = jnp.array([0.3, -2.0, 1.0])
    np.testing.assert_allclose(ht.hessian(problems.quadratic_form, x, a), a, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(problems.quadratic_form(x, a), 0.5 * x @ a @ x, rtol=1e-14)
    assert not np.any(np.asarray(jax.grad(problems.quadratic_form)(jnp.zeros(3), a)))


@pytest.mark.parametrize("name", NAMES)
def test_2d_problems_check_the_point_shape(name):
    match = "N >= 2" if name == "rosenbrock" else r"shape"
    with pytest.raises(ValueError, match=match):
        problems.TOY_2D[name].f(jnp.zeros((2, 2)))
