"""The curvature metric of landscape slices (hessian_tools.landscape)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessian_tools import landscape as L


def _loss(p, a):
    return 0.5 * p @ (a @ p) + 0.1 * jnp.sum(p**4)


def test_metric_equals_the_extreme_eigenvalues_of_the_dense_hessian():
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    a = jnp.asarray((q * np.linspace(-2, 3, 12)) @ q.T)
    top = L.extreme_eigenvalue_metric(_loss, num_matvecs=12)
    bottom = L.extreme_eigenvalue_metric(_loss, "smallest", num_matvecs=12)
    for p in (jnp.zeros(12), jnp.asarray(rng.normal(size=12))):
        w = np.linalg.eigvalsh(np.asarray(jax.hessian(_loss)(p, a)))
        np.testing.assert_allclose(jax.jit(top)(p, a), w[-1], rtol=1e-10)
        np.testing.assert_allclose(jax.jit(bottom)(p, a), w[0], rtol=1e-10)
    # vmapped over points, and past a breakdown (a rank-2 Hessian)
    low = lambda p, b: 0.5 * (b @ p) @ (b @ p)
    b = jnp.asarray(rng.normal(size=(2, 12)))
    vals = jax.vmap(L.extreme_eigenvalue_metric(low, num_matvecs=10), (0, None))(
        jnp.ones((3, 12)), b
    )
    np.testing.assert_allclose(vals, np.linalg.eigvalsh(np.asarray(b.T @ b))[-1], rtol=1e-10)


def test_bad_options():
    with pytest.raises(ValueError, match="which"):
        L.extreme_eigenvalue_metric(_loss, "top")
    with pytest.raises(ValueError, match="num_matvecs must be >= 1"):
        L.extreme_eigenvalue_metric(_loss, num_matvecs=0)
    with pytest.raises(TypeError, match="num_steps"):  # no deprecation shims before 1.0
        L.extreme_eigenvalue_metric(_loss, num_steps=3)
