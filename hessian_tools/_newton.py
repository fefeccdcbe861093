"""Newton-MR: Newton's method for ``grad f = 0`` that converges to saddles
and maxima as readily as to minima.

Each step solves ``H p = -g`` in the least-squares sense (MINRES, or a dense
pseudo-inverse for small n), then backtracks on ``||grad f||^2`` with the
Armijo condition ``||g(x + a p)||^2 <= ||g||^2 + 2 rho a <p, H g>``
(Roosta, Liu, Xu & Mahoney 2022, "Newton-MR: inexact Newton method with
minimum residual sub-problem solver"; Frye et al. 2019 use it to find
critical points of neural networks). MINRES iterates from 0 always satisfy
``<p, H g> <= 0``, so the direction descends on ``||g||^2`` even where H is
indefinite; should rounding break that, the step falls back to ``-H g``,
the gradient of ``||g||^2 / 2``.

Everything runs on flat vectors inside one ``lax.while_loop``, so the
solver is jitted and ``vmap``-ed over many starting points.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from hessian_tools._compile import jit
from hessian_tools._minres import minres

PyTree = Any
Loss = Callable[..., jax.Array]


def _dense_step(hess: jax.Array, g: jax.Array) -> jax.Array:
    # Minimum-norm least-squares solution of H p = -g: the limit of MINRES
    # on a consistent system, and well defined on singular Hessians.
    w, v = jnp.linalg.eigh((hess + hess.T) / 2)
    cut = jnp.finfo(g.dtype).eps * jnp.max(jnp.abs(w))
    inv = jnp.where(jnp.abs(w) > cut, 1 / jnp.where(w == 0, 1, w), 0)
    return -v @ (inv * (v.T @ g))


@functools.partial(jit, static_argnums=(0, 3, 4, 5, 6))
def newton_mr(
    flat_loss: Callable,
    z0: jax.Array,
    args: tuple,
    max_iter: int,
    solver: str,
    minres_maxiter: int,
    max_backtracks: int,
    minres_rtol: float = 1e-6,
    rho: float = 1e-4,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Run Newton-MR from each row of ``z0`` (m, n).

    Stops a start when its gradient vanishes, when no step along the search
    direction decreases ``||g||^2`` (it has reached rounding level, or a
    gradient-flat point), when steps shrink to rounding level, or after
    ``max_iter`` steps.

    Returns:
        ``(z, grad_norm, iterations, last_step)``, each with leading axis m;
        ``last_step`` is the length of the last step taken.
    """
    grad = jax.grad(flat_loss)

    def run(z):
        g = grad(z, *args)

        def cond(s):
            it, z, _, gn2, stalled, last = s
            # steps at rounding level: converged (or stuck); nothing more to gain
            moving = last > 4 * jnp.finfo(z.dtype).eps * jnp.maximum(1, jnp.linalg.norm(z))
            return (it < max_iter) & ~stalled & (gn2 > 0) & moving

        def body(s):
            it, z, g, gn2, _, last = s
            lin = jax.linearize(lambda u: grad(u, *args), z)[1]
            if solver == "dense":
                hess = jax.vmap(lin)(jnp.eye(z.shape[0], dtype=z.dtype))
                p = _dense_step(hess, g)
            else:
                p = minres(lin, -g, maxiter=minres_maxiter, rtol=minres_rtol)[0]
            hg = lin(g)
            slope = 2 * jnp.vdot(p, hg)  # d/da ||g(z + a p)||^2 at a = 0
            bad = ~(slope < 0) | ~jnp.all(jnp.isfinite(p))
            p = jnp.where(bad, -hg, p)
            slope = jnp.where(bad, -2 * jnp.vdot(hg, hg), slope)

            def gn2_at(a):
                gz = grad(z + a * p, *args)
                return jnp.vdot(gz, gz)

            def armijo_fails(a, val):
                return ~(val <= gn2 + rho * a * slope)  # NaN fails too

            def ls_cond(t):
                a, k, val = t
                return armijo_fails(a, val) & (k < max_backtracks)

            def ls_body(t):
                a, k, _ = t
                return a / 2, k + 1, gn2_at(a / 2)

            one = jnp.ones((), z.dtype)
            a, _, val = lax.while_loop(ls_cond, ls_body, (one, 0, gn2_at(one)))
            ok = ~armijo_fails(a, val) & (slope < 0)
            z_new = jnp.where(ok, z + a * p, z)
            g_new = jnp.where(ok, grad(z_new, *args), g)
            last = jnp.where(ok, a * jnp.linalg.norm(p), last)
            return it + 1, z_new, g_new, jnp.vdot(g_new, g_new), ~ok, last

        inf = jnp.asarray(jnp.inf, z.dtype)
        init = (jnp.asarray(0), z, g, jnp.vdot(g, g), jnp.asarray(False), inf)
        it, z, g, gn2, _, last = lax.while_loop(cond, body, init)
        return z, jnp.sqrt(gn2), it, last

    return jax.vmap(run)(z0)


# --------------------------------------------------------------------------
# Starts, deduplication and the flat loss of find_critical_points


def as_batch(starts: PyTree) -> tuple[jax.Array, PyTree]:
    """The starts as flat rows (m, n), and the first start as a pytree."""
    if isinstance(starts, (list, np.ndarray)):
        starts = jnp.asarray(starts)
    starts = jax.tree.map(jnp.asarray, starts)
    leaves = jax.tree.leaves(starts)
    if not leaves:
        raise ValueError("starts must have at least one array leaf; got none.")
    if any(leaf.ndim < 1 for leaf in leaves):
        raise ValueError(
            "starts must carry a leading batch axis on every leaf (one row per start)."
        )
    sizes = {int(leaf.shape[0]) for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"every leaf of starts must have the same leading length; got {sizes}.")
    if sizes.pop() == 0:
        raise ValueError("starts must hold at least one start; got an empty batch.")
    flat = jax.vmap(lambda point: ravel_pytree(point)[0])(starts)
    bad = ~np.all(np.isfinite(np.asarray(flat)), axis=1)
    if bad.any():
        raise ValueError(
            f"starts must be finite; rows {np.flatnonzero(bad)[:10].tolist()} hold NaN or inf."
        )
    return flat, jax.tree.map(lambda leaf: leaf[0], starts)


def dedup(points: np.ndarray, order: np.ndarray, tol: float) -> list[int]:
    """Indices (in ``order``) of points farther than ``tol * max(1, |x|)`` from
    every point kept before them."""
    keep: list[int] = []
    for i in order:
        scale = max(1.0, float(np.linalg.norm(points[i])))
        if all(np.linalg.norm(points[i] - points[j]) > tol * scale for j in keep):
            keep.append(int(i))
    return keep


class _FlatLoss:
    """``f(unravel(z), *args)`` as a hashable callable, cached per (f, layout)
    so the jitted Newton-MR loop compiles once per loss and shape."""

    def __init__(self, f: Loss, unravel: Any, signature: Any):
        self.f, self.unravel, self.signature = f, unravel, signature

    def __call__(self, z: jax.Array, *args: Any) -> jax.Array:
        return self.f(self.unravel(z), *args)

    def __hash__(self) -> int:
        return hash((self.f, self.signature))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _FlatLoss) and self.f is other.f and self.signature == other.signature
        )


def flat_loss(f: Loss, example: PyTree) -> _FlatLoss:
    """``f`` as a function of flat vectors in ``example``'s layout."""
    _, unravel = ravel_pytree(example)
    leaves = jax.tree.leaves(example)
    signature = (
        jax.tree.structure(example),
        tuple((jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves),
    )
    return _FlatLoss(f, unravel, signature)
