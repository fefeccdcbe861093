"""find_critical_points() on problems whose critical points are known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools import problems


def grid_starts(bounds, num):
    (x0, x1), (y0, y1) = bounds
    xs, ys = np.meshgrid(np.linspace(x0, x1, num), np.linspace(y0, y1, num))
    return jnp.asarray(np.stack([xs.ravel(), ys.ravel()], axis=1))


def inside(x, bounds, slack=1e-6):
    return all(lo - slack <= xi <= hi + slack for xi, (lo, hi) in zip(x, bounds, strict=True))


def match_known(found, prob, atol):
    """Pair every found point inside the box with a known one; return unmatched lists."""
    known = list(prob.critical_points)
    extra = []
    for cp in found:
        x = np.asarray(cp.x, float)
        if not inside(x, prob.bounds):
            continue
        dists = [np.linalg.norm(x - p) for p, _ in known]
        j = int(np.argmin(dists)) if dists else -1
        if j < 0 or dists[j] > atol:
            extra.append((x, cp.kind))
            continue
        assert cp.kind == known[j][1], (x, cp.kind, known[j])
        known.pop(j)
    return known, extra


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_himmelblau_all_nine(dtype):
    prob = problems.TOY_2D["himmelblau"]
    found = ht.find_critical_points(prob.f, grid_starts(prob.bounds, 12).astype(dtype))
    assert len(found) == 9
    missing, extra = match_known(found, prob, atol=1e-4 if dtype == jnp.float32 else 1e-9)
    assert missing == [] and extra == []
    kinds = [cp.kind for cp in found]
    assert kinds.count("minimum") == 4 and kinds.count("saddle") == 4
    assert kinds.count("maximum") == 1
    values = [float(cp.value) for cp in found]
    assert values == sorted(values)


@pytest.mark.parametrize(
    "name", ["six_hump_camel", "three_hump_camel", "styblinski_tang", "rastrigin", "saddle"]
)
def test_toy_problems_recover_known_points(name):
    prob = problems.TOY_2D[name]
    found = ht.find_critical_points(prob.f, grid_starts(prob.bounds, 25))
    missing, extra = match_known(found, prob, atol=1e-8)
    assert missing == [], missing
    assert extra == [], extra


def test_degenerate_monkey_saddle_is_located():
    found = ht.find_critical_points(problems.monkey_saddle, grid_starts(((-1, 1), (-1, 1)), 6))
    assert len(found) == 1
    np.testing.assert_allclose(found[0].x, [0.0, 0.0], atol=1e-8)
    # at the exact origin the second-order test is inconclusive; near it the
    # Hessian shows the saddle shape around the point.
    assert found[0].kind in ("degenerate", "saddle")


def test_minres_solver_matches_dense_solver():
    prob = problems.TOY_2D["himmelblau"]
    starts = grid_starts(prob.bounds, 8)
    dense = ht.find_critical_points(prob.f, starts, solver="dense")
    krylov = ht.find_critical_points(prob.f, starts, solver="minres")
    assert len(dense) == len(krylov)
    for a, b in zip(dense, krylov, strict=True):
        np.testing.assert_allclose(a.x, b.x, atol=1e-8)
        assert a.kind == b.kind


def test_minres_solver_on_a_larger_indefinite_problem():
    # 40 parameters, where MINRES runs many iterations per Newton step:
    # Styblinski-Tang in 40-D from random starts; every critical point has
    # coordinates in the three 1-D roots and index = number of middle roots.
    roots = np.array([-2.903534027771, 0.156731256780, 2.746802770991])
    key = jax.random.PRNGKey(0)
    starts = jax.random.uniform(key, (6, 40), minval=-4, maxval=4)
    found = ht.find_critical_points(problems.styblinski_tang, starts, solver="minres")
    assert found
    for cp in found:
        x = np.asarray(cp.x)
        nearest = roots[np.argmin(np.abs(x[:, None] - roots[None, :]), axis=1)]
        np.testing.assert_allclose(x, nearest, atol=1e-8)
        assert cp.index == int(np.sum(nearest == roots[1]))


def test_pytree_starts_linear_autoencoder():
    lam = [4.0, 3.0, 2.0]
    params, s, _ = problems.linear_autoencoder_critical_point(lam, [0], 1)
    key = jax.random.PRNGKey(0)
    m = 24
    starts = {
        "W1": jax.random.normal(key, (m, 1, 3)),
        "W2": jax.random.normal(jax.random.fold_in(key, 1), (m, 3, 1)),
    }
    found = ht.find_critical_points(problems.linear_autoencoder, starts, s)
    losses = {round(float(cp.value), 8) for cp in found}
    closed_form = {0.5 * (sum(lam) - lam[i]) for i in range(3)} | {0.5 * sum(lam)}
    assert losses <= {round(v, 8) for v in closed_form}
    assert 2.5 in losses  # the minimum, I = {0}: 0.5 * (3 + 2)
    for cp in found:
        assert jax.tree.structure(cp.x) == jax.tree.structure(params)
        expected = "degenerate" if round(float(cp.value), 8) == 2.5 else "saddle"
        assert cp.kind == expected


def test_numpy_and_list_starts():
    prob = problems.TOY_2D["three_hump_camel"]
    starts = np.asarray(grid_starts(prob.bounds, 10))
    a = ht.find_critical_points(prob.f, starts)
    b = ht.find_critical_points(prob.f, starts.tolist())
    assert len(a) == len(b) == 5


def test_no_recompile_for_new_starts_of_the_same_shape():
    traces = []

    def f(x):
        traces.append(1)
        return problems.himmelblau(x)

    ht.find_critical_points(f, grid_starts(((-5, 5), (-5, 5)), 4))
    first = len(traces)
    ht.find_critical_points(f, grid_starts(((-4, 4), (-4, 4)), 4))
    assert len(traces) == first


def test_float32_linear_autoencoder_finds_only_closed_form_levels():
    lam = [5.0, 4.0, 3.0, 2.0, 1.0]
    _, s, _ = problems.linear_autoencoder_critical_point(lam, [0, 1], 2, dtype=jnp.float32)
    key = jax.random.PRNGKey(0)
    starts = {
        "W1": 0.8 * jax.random.normal(key, (128, 2, 5), jnp.float32),
        "W2": 0.8 * jax.random.normal(jax.random.fold_in(key, 1), (128, 5, 2), jnp.float32),
    }
    found = ht.find_critical_points(problems.linear_autoencoder, starts, s, dedup_tol=1e-3)
    levels = {
        0.5 * (15 - sum(lam[i] for i in subset))
        for subset in [
            (),
            *[(i,) for i in range(5)],
            *[(i, j) for i in range(5) for j in range(i + 1, 5)],
        ]
    }
    assert found
    for cp in found:
        assert min(abs(float(cp.value) - v) for v in levels) < 1e-4, float(cp.value)


class TestBadInput:
    def test_starts_without_batch_axis(self):
        with pytest.raises(ValueError, match="leading batch axis"):
            ht.find_critical_points(problems.himmelblau, jnp.zeros(2))

    def test_wrong_trailing_shape(self):
        with pytest.raises(ValueError, match=r"shape \(3,\)"):
            ht.find_critical_points(problems.himmelblau, jnp.zeros((4, 3)))

    def test_empty_starts(self):
        with pytest.raises(ValueError, match="empty"):
            ht.find_critical_points(problems.himmelblau, jnp.zeros((0, 2)))

    def test_non_finite_starts_and_bad_options(self):
        with pytest.raises(ValueError, match="NaN"):
            ht.find_critical_points(problems.himmelblau, jnp.array([[0.0, jnp.nan]]))
        with pytest.raises(ValueError, match="max_iter"):
            ht.find_critical_points(problems.himmelblau, jnp.zeros((1, 2)), max_iter=0)
        with pytest.raises(ValueError, match="dedup_tol"):
            ht.find_critical_points(problems.himmelblau, jnp.zeros((1, 2)), dedup_tol=-1.0)

    def test_k_out_of_range(self):
        a = jnp.eye(3)
        with pytest.raises(ValueError, match="k"):
            ht.eigenpairs(a, 4)
        with pytest.raises(ValueError, match="k"):
            ht.eigenpairs(a, 0)
