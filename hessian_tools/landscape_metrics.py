"""Curvature metrics for landscape grids: the extreme Hessian eigenvalues at
every point of a slice.

A metric is a function ``(params, *args) -> scalar`` that ``slice_1d`` and
``slice_2d`` evaluate, vectorised, at every grid point. The one here runs a
fixed number of Lanczos steps so that it compiles to one static program and
vmaps over grid points. Re-exported by ``hessian_tools.landscape``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

__all__ = ["extreme_eigenvalue_metric"]


def _lanczos_extreme(hvp_flat: Callable, v0: jax.Array, num_steps: int, which: str) -> jax.Array:
    """Extreme Ritz value after ``num_steps`` Lanczos steps with full
    reorthogonalisation (two Gram-Schmidt passes).

    On breakdown (an invariant subspace, beta small relative to |T|) the
    remaining steps are masked: their diagonal entries repeat alpha_0, a
    Rayleigh quotient that lies inside the range of the leading block's
    Ritz values, so the extreme Ritz values are unchanged.
    """
    n = v0.shape[0]
    dtype = v0.dtype
    eps = jnp.finfo(dtype).eps
    basis = jnp.zeros((num_steps, n), dtype)
    q = v0 / jnp.linalg.norm(v0)

    def step(carry, k):
        basis, q, q_prev, beta_prev, scale, alive = carry
        basis = basis.at[k].set(q)
        w = hvp_flat(q) - beta_prev * q_prev
        alpha = jnp.vdot(q, w)
        w = w - alpha * q
        for _ in range(2):  # full reorthogonalisation against the filled rows
            w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
        ok = alive & (beta > 10 * n * eps * scale)
        q_next = jnp.where(ok, w / jnp.where(ok, beta, 1), 0)
        out = (alpha, jnp.where(ok, beta, 0), alive)
        return (basis, q_next, q, jnp.where(ok, beta, 0), scale, ok), out

    init = (basis, q, jnp.zeros_like(q), jnp.zeros((), dtype), jnp.zeros((), dtype), True)
    _, (alphas, betas, alive) = jax.lax.scan(step, init, jnp.arange(num_steps))
    alphas = jnp.where(alive, alphas, alphas[0])
    tri = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    ritz = jnp.linalg.eigvalsh(tri)
    return ritz[-1] if which == "largest" else ritz[0]


def extreme_eigenvalue_metric(
    f: Callable[..., jax.Array],
    which: Literal["largest", "smallest"] = "largest",
    *,
    num_steps: int = 20,
    seed: int = 0,
) -> Callable[..., jax.Array]:
    """A metric ``(params, *args) -> lambda`` giving the largest (algebraic)
    or smallest Hessian eigenvalue of ``f`` at each grid point.

    Use as ``slice_2d(f, params, dirs, xs, ys, *args, metrics={"lmax":
    extreme_eigenvalue_metric(f), "lmin": extreme_eigenvalue_metric(f,
    "smallest")})`` to map where the landscape is convex (Li et al. 2018,
    Fig. 7, plot |lmin / lmax|).

    Args:
        f: the loss ``f(params, *args) -> scalar``.
        which: "largest" or "smallest" (most negative).
        num_steps: Lanczos steps (= HVPs) per grid point, at most n; more
            steps, more accuracy. Extreme Ritz values converge first; with
            batches= the metric is the batch-weighted mean of per-batch
            eigenvalues, not the eigenvalue of the mean Hessian.
        seed: seed of the fixed starting vector (the same at every point).

    Returns:
        A function usable in ``metrics=``. Cost: ``num_steps`` HVPs and
        ``num_steps`` stored vectors of size n per grid point (vmapped over
        a chunk: choose ``chunk_size`` accordingly).
    """
    if which not in ("largest", "smallest"):
        raise ValueError(f'which must be "largest" or "smallest", got {which!r}.')
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
    return functools.partial(_extreme_eigenvalue, f, which, num_steps, seed)


def _extreme_eigenvalue(f, which, num_steps, seed, params: Any, *args: Any) -> jax.Array:
    flat, unravel = ravel_pytree(params)
    grad_flat = lambda x: ravel_pytree(jax.grad(f)(unravel(x), *args))[0]
    hvp_flat = lambda v: jax.jvp(grad_flat, (flat,), (v,))[1]
    v0 = jax.random.normal(jax.random.PRNGKey(seed), flat.shape, flat.dtype)
    return _lanczos_extreme(hvp_flat, v0, min(num_steps, flat.size), which)
