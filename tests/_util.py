"""Shared test helpers: matrices with a given spectrum, float64 references,
the MLPs used across the suite, and a trace counter for compile-reuse tests."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def sym_with_spectrum(w, seed=0, dtype=np.float64):
    """Symmetric matrix with eigenvalues ``w`` and Haar-random eigenvectors."""
    w = np.asarray(w, np.float64)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(len(w), len(w))))
    return jnp.asarray((q * w) @ q.T, dtype)


def select_reference(w, k, which):
    """The k wanted values of ascending ``w`` in the library's order."""
    w = np.sort(np.asarray(w, np.float64))
    if which == "largest":
        return w[::-1][:k]
    if which == "smallest":
        return w[:k]
    top = (k + 1) // 2
    return np.concatenate([w[: k - top], w[len(w) - top :]])


def eigh_reference(a, k, which):
    return select_reference(np.linalg.eigvalsh(np.asarray(a, np.float64)), k, which)


def dense_reference(f, params, *args):
    """The float64 Hessian of ``f`` by ``jax.hessian`` (the independent reference)."""
    flat, unravel = ravel_pytree(params)
    flat64 = flat.astype(jnp.float64)
    args64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), args)
    g = lambda z: f(jax.tree.map(lambda a: a.astype(jnp.float64), unravel(z)), *args64)
    return np.asarray(jax.hessian(g)(flat64))


def nested_params(n, seed=0):
    """A nested dict of n parameters: a (4, 5) matrix and a vector."""
    rng = np.random.default_rng(seed)
    return {
        "layer": {"w": jnp.asarray(rng.normal(size=(4, 5)) * 0.3)},
        "b": jnp.asarray(rng.normal(size=n - 20) * 0.3),
    }


def flatten_nested(p):
    return jnp.concatenate([p["layer"]["w"].ravel(), p["b"]])


def quad_loss(p, a):
    """``x^T A x / 2`` of the flattened nested params: Hessian A."""
    x = flatten_nested(p)
    return 0.5 * x @ (a @ x)


def quartic_loss(p, a):
    """A non-quadratic loss on nested params (Hessian depends on the point)."""
    x = flatten_nested(p)
    return 0.5 * x @ (a @ x) + 0.25 * jnp.sum(x**4)


class TraceCounter:
    """Wraps a loss and counts how often JAX traces it (each compilation of
    a new program traces it again; a cached program does not)."""

    def __init__(self, f):
        self.f, self.count = f, 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.f(*args, **kwargs)

    def __hash__(self):
        return id(self)


# --------------------------------------------------------------------------
# MLPs on digits-shaped data (uniform inputs, random labels: no download)

MLP_SIZES = (64, 256, 256, 10)  # n = 85,002: the size of the loop guards


def mlp_loss(params, x, y):
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w + b[None, :]
        if i < len(params) - 1:
            h = jnp.tanh(h)
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(h), -1))


def mlp_problem(sizes=MLP_SIZES, samples=1797, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(0, 1, (samples, sizes[0])), dtype)
    y = jax.nn.one_hot(jnp.asarray(rng.integers(0, sizes[-1], samples)), sizes[-1], dtype=dtype)
    params = []
    for i, o in itertools.pairwise(sizes):
        b = 1 / np.sqrt(i)
        params.append(
            (
                jnp.asarray(rng.uniform(-b, b, (i, o)), dtype),
                jnp.asarray(rng.uniform(-b, b, o), dtype),
            )
        )
    return params, x, y
