"""eigenpairs(): exact dense path and thick-restart Lanczos against float64 eigh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessian_tools.eigen import _cycle_jit, check_symmetric, eigenpairs, select
from hessian_tools.operators import CurvatureOperator, HessianOperator


def sym_with_spectrum(w, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(len(w), len(w))))
    return jnp.asarray((q * np.asarray(w)) @ q.T, dtype)


def reference(a, k, which):
    w = np.linalg.eigvalsh(np.asarray(a, np.float64))
    return w[select(w, k, which)]


# clustered (1e-3 apart), negative, and a bulk
SPECTRUM = np.concatenate(
    [[9.0, 8.0, 7.999, 7.998, -6.0, -5.999, -4.0], np.random.default_rng(0).uniform(-1, 1, 193)]
)


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
@pytest.mark.parametrize("k", [1, 4])
def test_lanczos_matches_eigh(which, k):
    a = sym_with_spectrum(SPECTRUM)
    r = eigenpairs(a, k, which=which, method="lanczos", tol=1e-10)
    assert r.converged and not r.exact
    np.testing.assert_allclose(np.asarray(r.values), reference(a, k, which), atol=1e-8)
    v = np.asarray(r.vectors)
    assert v.shape == (200, k)
    np.testing.assert_allclose(v.T @ v, np.eye(k), atol=1e-8)
    true = np.linalg.norm(np.asarray(a) @ v - v * np.asarray(r.values), axis=0)
    np.testing.assert_allclose(np.asarray(r.residuals), true, atol=1e-10)
    assert np.all(true <= 1e-10 * 9 * 1.01)
    assert r.norm_estimate == pytest.approx(9.0)


def test_largest_is_algebraic_and_smallest_is_most_negative():
    a = sym_with_spectrum(np.concatenate([[-20.0, 3.0, 2.0], np.linspace(-1, 1, 197)]))
    top = eigenpairs(a, 2, method="lanczos")
    np.testing.assert_allclose(np.asarray(top.values), [3.0, 2.0], rtol=1e-7)
    bottom = eigenpairs(a, 1, which="smallest", method="lanczos")
    np.testing.assert_allclose(np.asarray(bottom.values), [-20.0], rtol=1e-7)
    both = eigenpairs(a, 2, which="both", method="lanczos")
    np.testing.assert_allclose(np.asarray(both.values), [-20.0, 3.0], rtol=1e-7)
    assert both.converged


def test_no_ghosts_of_outlier_float32():
    rng = np.random.default_rng(1)
    a = sym_with_spectrum(np.concatenate([[50.0], rng.uniform(-1, 1, 199)]), 1, np.float32)
    r = eigenpairs(a, 5, method="lanczos", max_matvecs=400)
    values = np.asarray(r.values)
    assert abs(values[0] - 50) < 1e-4 * 50
    assert np.all(values[1:] < 1.0 + 1e-3)  # no second copy of the outlier


def test_low_rank_and_zero_matrix_continue_after_breakdown():
    rng = np.random.default_rng(2)
    b = rng.normal(size=(200, 2))
    a = jnp.asarray(b @ b.T)
    r = eigenpairs(a, 4, method="lanczos", tol=1e-10)
    assert r.converged
    np.testing.assert_allclose(np.asarray(r.values), reference(a, 4, "largest"), atol=1e-9)
    z = eigenpairs(jnp.zeros((200, 200)), 3, which="both", method="lanczos")
    assert z.converged and np.all(np.asarray(z.values) == 0)
    assert np.all(np.isfinite(np.asarray(z.vectors)))


def test_budget_exhausted_reports_not_converged():
    a = sym_with_spectrum(np.linspace(0, 1, 200))  # no gaps: slow convergence
    r = eigenpairs(a, 3, method="lanczos", max_matvecs=12, tol=1e-12)
    assert not r.converged and r.num_matvecs == 12
    assert np.all(np.asarray(r.residuals) > 0)


class CountingOperator(CurvatureOperator):
    def __init__(self, a):
        super().__init__(jnp.zeros(a.shape[0], a.dtype))
        self.a, self.calls = a, 0

    def _matvec_flat(self, v):
        self.calls += 1
        return self.a @ v


def test_num_matvecs_is_honest_and_true_residuals_agree():
    a = sym_with_spectrum(SPECTRUM, 3)
    op = CountingOperator(a)  # no jittable(): the Python-loop path
    r = eigenpairs(op, 3, which="both", method="lanczos", max_basis=12, true_residuals=True)
    assert r.num_restarts > 0
    assert r.num_matvecs == op.calls
    np.testing.assert_allclose(np.asarray(r.values), reference(a, 3, "both"), atol=1e-7)
    est = eigenpairs(op, 3, which="both", method="lanczos", max_basis=12)
    np.testing.assert_allclose(np.asarray(est.residuals), np.asarray(r.residuals), atol=1e-12)


def nested_loss(p, a):
    x = jnp.concatenate([p["layer"]["w"].ravel(), p["b"]])
    return 0.5 * x @ (a @ x) + 0.25 * jnp.sum(x**4)


def test_hessian_operator_with_nested_params():
    n = 60
    rng = np.random.default_rng(4)
    a = sym_with_spectrum(np.linspace(-3, 4, n), 4)
    params = {"layer": {"w": jnp.asarray(rng.normal(size=(4, 5)) * 0.3)}, "b": jnp.zeros(n - 20)}
    op = HessianOperator(nested_loss, params, a)
    exact = np.linalg.eigvalsh(np.asarray(op.to_dense()))
    r = eigenpairs(op, 3, which="smallest", method="lanczos", tol=1e-10)
    np.testing.assert_allclose(np.asarray(r.values), exact[:3], atol=1e-8)
    assert np.all(np.asarray(r.values) < 0)
    tree = op.unravel(r.vectors[:, 0])
    assert jax.tree.structure(tree) == jax.tree.structure(params)
    dense = eigenpairs(op, 3, which="smallest")  # small n: exact path
    assert dense.exact and dense.num_matvecs == n
    np.testing.assert_allclose(np.asarray(dense.values), exact[:3], atol=1e-10)
    # a new operator at another point reuses the compiled loop
    size = _cycle_jit._cache_size()
    op2 = HessianOperator(nested_loss, jax.tree.map(lambda x: x + 0.1, params), a)
    eigenpairs(op2, 3, which="smallest", method="lanczos", tol=1e-10)
    assert _cycle_jit._cache_size() == size


def test_dense_path_repeated_eigenvalues():
    w = np.array([5.0, 5.0, 5.0, 1.0, -2.0, -2.0])
    a = sym_with_spectrum(w)
    r = eigenpairs(a, 4)
    assert r.exact and r.converged
    np.testing.assert_allclose(np.asarray(r.values), [5, 5, 5, 1], atol=1e-12)


def test_symmetry_check():
    a = sym_with_spectrum(np.linspace(1, 2, 200))
    assert check_symmetric(a) < 1e-12
    r = eigenpairs(a, 1, method="lanczos", check_symmetry=True)
    plain = eigenpairs(a, 1, method="lanczos")
    assert r.num_matvecs == plain.num_matvecs + 2
    skew = a.at[0, 1].add(1.0)
    with pytest.raises(ValueError, match="not symmetric"):
        eigenpairs(skew, 1, method="lanczos", check_symmetry=True)


def test_bad_input():
    a = jnp.eye(10)
    with pytest.raises(ValueError, match="dense"):
        eigenpairs(a, 10, method="lanczos")
    with pytest.raises(ValueError, match="1 <= k"):
        eigenpairs(a, 0)
    with pytest.raises(ValueError, match="which"):
        eigenpairs(a, 1, which="top")
    with pytest.raises(ValueError, match="method"):
        eigenpairs(a, 1, method="arpack")
    with pytest.raises(ValueError, match="max_matvecs"):
        eigenpairs(a, 3, method="lanczos", max_matvecs=2)
    with pytest.raises(ValueError, match="square"):
        eigenpairs(jnp.ones((3, 4)), 1)
