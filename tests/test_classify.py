"""classify() against analytic values and hypothesis properties."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import hessian_tools as ht
from hessian_tools import problems


def test_himmelblau_minimum_eigenvalues():
    cp = ht.classify(problems.himmelblau, jnp.array([3.0, 2.0]))
    assert cp.kind == "minimum" and cp.index == 0 and cp.num_zero == 0
    np.testing.assert_allclose(cp.eigenvalues, [54 - 20 * np.sqrt(2), 54 + 20 * np.sqrt(2)])
    assert cp.definiteness == "positive definite"
    assert float(cp.value) == 0.0 and float(cp.grad_norm) == 0.0


def test_rosenbrock_hessian_at_minimum():
    H = ht.hessian(problems.rosenbrock, jnp.array([1.0, 1.0]))
    np.testing.assert_array_equal(H, [[802.0, -400.0], [-400.0, 200.0]])
    assert ht.classify(problems.rosenbrock, jnp.array([1.0, 1.0])).kind == "minimum"


@pytest.mark.parametrize(
    "f,definiteness",
    [
        (problems.monkey_saddle, "zero"),
        (lambda x: x[0] ** 4 + x[1] ** 4, "zero"),
        (lambda x: x[0] ** 4 + x[1] ** 2, "positive semidefinite"),
        (lambda x: -(x[0] ** 4) - x[1] ** 2, "negative semidefinite"),
    ],
)
def test_degenerate_points(f, definiteness):
    cp = ht.classify(f, jnp.zeros(2))
    assert cp.kind == "degenerate"
    assert cp.definiteness == definiteness


def test_saddle_with_a_zero_eigenvalue():
    cp = ht.classify(lambda x: x[0] ** 2 - x[1] ** 2 + x[2] ** 4, jnp.zeros(3))
    assert (cp.kind, cp.index, cp.num_zero) == ("saddle", 1, 1)


def test_not_critical_whatever_the_hessian():
    cp = ht.classify(problems.saddle, jnp.array([1.0, 0.0]))
    assert cp.kind == "not_critical" and cp.index == 1
    # minimum-like Hessian, but a gradient: still not critical
    assert ht.classify(lambda x: jnp.sum((x - 1.0) ** 2), jnp.zeros(3)).kind == "not_critical"


def quadratic_with_inertia(neg, zero, pos, seed):
    rng = np.random.default_rng(seed)
    mags = rng.uniform(0.1, 10.0, neg + zero + pos)
    lam = np.concatenate([-mags[:neg], np.zeros(zero), mags[neg + zero :]])
    a = problems.random_symmetric(jnp.asarray(lam), jax.random.PRNGKey(seed))
    return a


inertia = st.tuples(st.integers(0, 4), st.integers(0, 2), st.integers(0, 4)).filter(
    lambda t: sum(t) > 0
)


@given(inertia=inertia, seed=st.integers(0, 10_000))
def test_quadratic_form_classified_by_its_inertia(inertia, seed):
    neg, zero, pos = inertia
    a = quadratic_with_inertia(neg, zero, pos, seed)
    cp = ht.classify(problems.quadratic_form, jnp.zeros(a.shape[0]), a)
    assert (cp.index, cp.num_zero) == (neg, zero)
    expected = (
        "saddle" if neg and pos else "degenerate" if zero else "minimum" if pos else "maximum"
    )
    assert cp.kind == expected


@given(inertia=inertia, seed=st.integers(0, 10_000), log_c=st.floats(-6, 6))
def test_label_invariant_under_positive_scaling(inertia, seed, log_c):
    a = quadratic_with_inertia(*inertia, seed)
    x = jnp.zeros(a.shape[0])
    base = ht.classify(problems.quadratic_form, x, a)
    scaled = ht.classify(problems.quadratic_form, x, 10.0**log_c * a)
    assert (scaled.kind, scaled.index, scaled.num_zero) == (base.kind, base.index, base.num_zero)


@given(log_c=st.floats(-8, 8), seed=st.integers(0, 10_000))
def test_not_critical_invariant_under_positive_scaling(log_c, seed):
    # a point at distance ~1 from the minimum of a quadratic stays
    # not_critical however the loss is scaled (the tolerance scales with it)
    a = quadratic_with_inertia(0, 0, 3, seed)
    x = jnp.ones(3)
    cp = ht.classify(problems.quadratic_form, x, 10.0**log_c * a)
    assert cp.kind == "not_critical"


@given(neg=st.integers(0, 4), pos=st.integers(0, 4), seed=st.integers(0, 10_000))
def test_negation_swaps_minimum_and_maximum(neg, pos, seed):
    if neg + pos == 0:
        return
    a = quadratic_with_inertia(neg, 0, pos, seed)
    n = a.shape[0]
    x = jnp.zeros(n)
    cp = ht.classify(problems.quadratic_form, x, a)
    neg_cp = ht.classify(problems.quadratic_form, x, -a)
    assert neg_cp.index == n - cp.index
    swap = {"minimum": "maximum", "maximum": "minimum", "saddle": "saddle"}
    assert neg_cp.kind == swap[cp.kind]


@pytest.mark.parametrize("dtype,digits", [(jnp.float64, 10), (jnp.float32, 5)])
def test_points_known_to_working_precision_count_as_critical(dtype, digits):
    prob = problems.TOY_2D["himmelblau"]
    rng = np.random.default_rng(0)
    for point, kind in prob.critical_points:
        delta = rng.normal(size=2) * 10.0**-digits * np.maximum(1, np.abs(point))
        cp = ht.classify(prob.f, jnp.asarray(point + delta, dtype))
        assert cp.kind == kind, (point, cp)


def test_gradient_flat_point_is_not_critical():
    # f'(x) = x^2 + 1 never vanishes; |f'|^2 has its minimum at x = 0, where
    # f''(0) f'(0) = 0: a gradient-flat point.
    f = lambda x: jnp.sum(x**3 / 3 + x)
    assert ht.classify(f, jnp.zeros(1)).kind == "not_critical"
    found = ht.find_critical_points(f, jnp.linspace(-2, 2, 9)[:, None])
    assert found == []
    flat = ht.find_critical_points(f, jnp.linspace(-2, 2, 9)[:, None], include_not_critical=True)
    assert [cp.kind for cp in flat] == ["not_critical"]
    np.testing.assert_allclose(flat[0].x, [0.0], atol=1e-6)


def test_linear_autoencoder_on_pytree_points():
    lam = [4.0, 3.0, 2.0, 1.0]
    p = 2
    seen = []
    for r in range(p + 1):
        for subset in itertools.combinations(range(len(lam)), r):
            params, s, loss = problems.linear_autoencoder_critical_point(lam, subset, p)
            cp = ht.classify(problems.linear_autoencoder, params, s)
            np.testing.assert_allclose(cp.value, loss, rtol=1e-12)
            if len(subset) == p:
                # Baldi & Hornik: one negative direction per pair i in I, j not in I
                # with lambda_j > lambda_i.
                pairs = sum(lam[j] > lam[i] for i in subset for j in range(4) if j not in subset)
                assert cp.index == pairs
                assert cp.num_zero == p * p  # the GL(p) symmetry
            if subset == (0, 1):
                assert cp.kind == "degenerate"
                assert cp.definiteness == "positive semidefinite"
            else:
                assert cp.kind == "saddle"
            seen.append((loss, cp.index))
    seen.sort()
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(seen)), seen


def test_escape_direction_and_saddle_free_step():
    a = problems.random_symmetric(jnp.array([-3.0, -1.0, 2.0, 5.0]), jax.random.PRNGKey(4))
    x = jnp.array([0.1, -0.2, 0.3, 0.05])
    esc = ht.escape_direction(problems.quadratic_form, x, a)
    w, v = np.linalg.eigh(np.asarray(a))
    np.testing.assert_allclose(esc.curvature, -3.0, rtol=1e-10)
    np.testing.assert_allclose(abs(np.dot(esc.direction, v[:, 0])), 1.0, rtol=1e-10)
    assert float(esc.slope) <= 0
    t = 0.5
    change = problems.quadratic_form(x + t * esc.direction, a) - problems.quadratic_form(x, a)
    np.testing.assert_allclose(change, esc.predicted_change(t), rtol=1e-10)
    assert change < 0

    step = ht.saddle_free_newton_step(problems.quadratic_form, x, a)
    g = np.asarray(a) @ np.asarray(x)
    expect = -(v @ ((v.T @ g) / np.abs(w)))
    np.testing.assert_allclose(step, expect, rtol=1e-10)
    # on a positive-definite quadratic it is Newton's step to the minimum
    b = problems.random_symmetric(jnp.array([1.0, 2.0, 7.0]), jax.random.PRNGKey(5))
    y = jnp.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(ht.saddle_free_newton_step(problems.quadratic_form, y, b), -y)


def test_saddle_free_step_krylov_matches_dense_in_full_subspace():
    a = problems.random_symmetric(jnp.array([-4.0, -0.5, 1.0, 3.0, 9.0]), jax.random.PRNGKey(6))
    x = jnp.array([0.3, -0.1, 0.2, 0.5, -0.4])
    dense = ht.saddle_free_newton_step(problems.quadratic_form, x, a, method="dense")
    krylov = ht.saddle_free_newton_step(problems.quadratic_form, x, a, method="lanczos")
    np.testing.assert_allclose(krylov, dense, rtol=1e-8, atol=1e-10)
    with pytest.warns(DeprecationWarning, match="lanczos"):
        old = ht.saddle_free_newton_step(problems.quadratic_form, x, a, method="krylov")
    np.testing.assert_allclose(old, krylov, rtol=1e-12)
    with pytest.raises(ValueError, match="method"):
        ht.saddle_free_newton_step(problems.quadratic_form, x, a, method="newton")
