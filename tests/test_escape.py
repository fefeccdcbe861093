"""Leaving a saddle (hessian_tools.escape): escape_direction() and
saddle_free_newton_step() against the eigendecomposition of quadratics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import flatten_nested, nested_params, quad_loss, sym_with_spectrum

import hessian_tools as ht
from hessian_tools import problems


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
    with pytest.raises(ValueError, match="lanczos"):  # the old name is gone
        ht.saddle_free_newton_step(problems.quadratic_form, x, a, method="krylov")
    with pytest.raises(ValueError, match="method"):
        ht.saddle_free_newton_step(problems.quadratic_form, x, a, method="newton")


def test_escape_direction_on_nested_params():
    # the direction comes back as a pytree like x and is the eigenvector of
    # the most negative eigenvalue of the flattened Hessian
    n = 30
    w = np.concatenate([[-2.5], np.linspace(0.5, 4.0, n - 1)])
    a = sym_with_spectrum(w, seed=2)
    x = nested_params(n, seed=1)
    esc = ht.escape_direction(quad_loss, x, a)
    assert jax.tree.structure(esc.direction) == jax.tree.structure(x)
    d = np.asarray(flatten_nested(esc.direction))
    _, v = np.linalg.eigh(np.asarray(a))
    np.testing.assert_allclose(float(esc.curvature), -2.5, rtol=1e-9)
    np.testing.assert_allclose(abs(d @ v[:, 0]), 1.0, rtol=1e-9)
    g = np.asarray(a) @ np.asarray(flatten_nested(x))
    np.testing.assert_allclose(float(esc.slope), g @ d, rtol=1e-9, atol=1e-12)
    assert float(esc.slope) <= 0 and float(esc.residual) < 1e-8


def test_no_negative_curvature_reports_it():
    a = problems.random_symmetric(jnp.array([0.5, 1.0, 3.0]), jax.random.PRNGKey(7))
    esc = ht.escape_direction(problems.quadratic_form, jnp.array([1.0, 0.0, -1.0]), a)
    # a minimum-like Hessian: the smallest curvature is positive, nothing to escape along
    np.testing.assert_allclose(float(esc.curvature), 0.5, rtol=1e-10)
    assert float(esc.slope) <= 0


def test_saddle_free_step_is_zero_at_a_critical_point():
    a = problems.random_symmetric(jnp.array([-2.0, 1.0, 3.0]), jax.random.PRNGKey(8))
    for method in ("dense", "lanczos"):
        step = ht.saddle_free_newton_step(problems.quadratic_form, jnp.zeros(3), a, method=method)
        np.testing.assert_array_equal(step, np.zeros(3))


def test_damping_floors_small_eigenvalues():
    # eigenvalues -2, 1e-9, 4 on the axes: with damping 1e-3 the step along
    # the nearly flat axis is -g / 1e-3, not -g / 1e-9
    a = jnp.diag(jnp.array([-2.0, 1e-9, 4.0]))
    x = jnp.array([0.5, 0.3, -0.2])
    g = np.asarray(a) @ np.asarray(x)
    step = ht.saddle_free_newton_step(problems.quadratic_form, x, a, damping=1e-3)
    np.testing.assert_allclose(step, -g / np.array([2.0, 1e-3, 4.0]), rtol=1e-10)
    lanczos = ht.saddle_free_newton_step(
        problems.quadratic_form, x, a, damping=1e-3, method="lanczos"
    )
    np.testing.assert_allclose(lanczos, step, rtol=1e-8, atol=1e-12)


def test_saddle_free_step_on_nested_params_is_a_pytree():
    n = 24
    a = sym_with_spectrum(np.linspace(-3.0, 5.0, n) + 0.1, seed=3)
    x = nested_params(n, seed=2)
    step = ht.saddle_free_newton_step(quad_loss, x, a, method="lanczos", num_matvecs=n)
    assert jax.tree.structure(step) == jax.tree.structure(x)
    w, v = np.linalg.eigh(np.asarray(a))
    g = np.asarray(a) @ np.asarray(flatten_nested(x))
    expect = -(v @ ((v.T @ g) / np.abs(w)))
    np.testing.assert_allclose(flatten_nested(step), expect, rtol=1e-7, atol=1e-9)
