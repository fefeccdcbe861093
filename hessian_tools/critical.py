"""Critical points: classification by Hessian inertia, and finding them.

A critical point has zero gradient; the signs of its Hessian's eigenvalues
tell its kind: all positive, a minimum; all negative, a maximum; both signs,
a saddle (its *index* is the number of negative eigenvalues); and when some
eigenvalues are zero and the rest share a sign, the second-order test is
inconclusive (degenerate).

Tolerances are relative: an eigenvalue counts as zero when
``|lambda| <= max(atol, rtol * ||H||)``. Defaults scale with the dtype's
machine epsilon, so a point known to about 10 digits (float64) or 5 digits
(float32) counts as critical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from hessian_tools._newton import newton_mr
from hessian_tools._tree import norm
from hessian_tools.eigen import eigenpairs
from hessian_tools.operators import HessianOperator, Loss, PyTree, check_scalar_loss

__all__ = ["CriticalPoint", "classify", "find_critical_points"]

KINDS = ("minimum", "maximum", "saddle", "degenerate", "not_critical")

#: largest n for which classify() forms the Hessian densely by default
DENSE_MAX = 2000


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CriticalPoint:
    """A point with its second-order classification.

    Attributes:
        x: the point, a pytree like the input.
        value: loss at x.
        grad_norm: Euclidean norm of the gradient at x.
        eigenvalues: Hessian eigenvalues, ascending: all n of them when
            ``exact``, else the extreme ones that were computed.
        kind: "minimum", "maximum", "saddle", "degenerate" or "not_critical".
        index: number of eigenvalues below ``-tol`` (the Morse index at a
            non-degenerate critical point). A lower bound when not ``exact``.
        num_zero: number of eigenvalues with ``|lambda| <= tol`` (a lower
            bound when not ``exact``).
        definiteness: "positive definite", "negative definite", "positive
            semidefinite" (a possible minimum), "negative semidefinite" (a
            possible maximum), "indefinite" or "zero".
        tol: the eigenvalue tolerance used, ``max(atol, rtol * ||H||)``.
        grad_tol: the gradient tolerance used.
        exact: True when the whole spectrum was computed (dense Hessian).
    """

    x: PyTree
    value: jax.Array
    grad_norm: jax.Array
    eigenvalues: jax.Array
    kind: str = dataclasses.field(metadata=dict(static=True))
    index: int = dataclasses.field(metadata=dict(static=True))
    num_zero: int = dataclasses.field(metadata=dict(static=True))
    definiteness: str = dataclasses.field(metadata=dict(static=True))
    tol: float = dataclasses.field(metadata=dict(static=True))
    grad_tol: float = dataclasses.field(metadata=dict(static=True))
    exact: bool = dataclasses.field(default=True, metadata=dict(static=True))

    @property
    def n(self) -> int:
        return int(sum(np.size(leaf) for leaf in jax.tree.leaves(self.x)))

    @property
    def index_fraction(self) -> float:
        """index / n, the fraction of negative eigenvalues (Dauphin et al. 2014)."""
        return self.index / self.n

    def __repr__(self) -> str:
        return (
            f"CriticalPoint(kind={self.kind!r}, index={self.index}, num_zero={self.num_zero}, "
            f"value={float(self.value):.6g}, grad_norm={float(self.grad_norm):.3g}, "
            f"definiteness={self.definiteness!r}, exact={self.exact})"
        )


def _eps(dtype: Any) -> float:
    return float(np.finfo(np.dtype(dtype)).eps)


def default_rtol(dtype: Any) -> float:
    """sqrt(eps): 1.5e-8 in float64, 3.5e-4 in float32."""
    return float(np.sqrt(_eps(dtype)))


def default_grad_tol(dtype: Any, hess_norm: float, x_norm: float) -> float:
    """``eps^0.6 * ||H|| * max(1, ||x||)``.

    A point at relative distance delta from a critical point has a gradient
    of at most about ``||H|| ||x|| delta``. eps^0.6 is 4.3e-10 in float64
    and 7.1e-5 in float32, so points known to ~10 resp. ~5 digits pass,
    while points where a solver stalled short of convergence (relative
    gradients of 1e-4 and more) do not. It scales with the loss, so labels
    are invariant under f -> c f; where ``||H|| = 0`` only an exactly zero
    gradient passes. Pass ``grad_tol`` to choose another threshold.
    """
    return float(_eps(dtype) ** 0.6 * hess_norm * max(1.0, x_norm))


def _inertia(eigs: np.ndarray, tol: float) -> tuple[int, int, int]:
    neg = int(np.sum(eigs < -tol))
    pos = int(np.sum(eigs > tol))
    return neg, eigs.size - neg - pos, pos


def _definiteness(neg: int, zero: int, pos: int) -> str:
    if neg and pos:
        return "indefinite"
    if not neg and not pos:
        return "zero"
    sign = "positive" if pos else "negative"
    return f"{sign} {'semidefinite' if zero else 'definite'}"


def _kind(neg: int, zero: int, pos: int) -> str:
    if neg and pos:
        return "saddle"
    if zero:
        return "degenerate"
    return "minimum" if pos else "maximum"


def classify(
    f: Loss,
    x: PyTree,
    *args: Any,
    grad_tol: float | None = None,
    rtol: float | None = None,
    atol: float = 0.0,
    batches: Iterable | None = None,
    method: str = "auto",
    k: int = 6,
    key: jax.Array | None = None,
) -> CriticalPoint:
    """Classify ``x`` as a minimum, maximum, saddle, degenerate or not critical.

    Rules (DESIGN.md): with ``tol = max(atol, rtol * ||H||)``, eigenvalues
    below ``-tol`` are negative, above ``tol`` positive, the rest zero.
    Both signs present: saddle (even when some are zero); all positive:
    minimum; all negative: maximum; otherwise degenerate, and
    ``definiteness`` says whether the Hessian is positive or negative
    semidefinite (a possible minimum or maximum; minima of networks with
    symmetries are of this kind). A gradient norm above ``grad_tol`` makes
    the point "not_critical" whatever its Hessian; the eigenvalues and
    index are still reported. Gradient-flat points (``H g ~ 0`` but
    ``g != 0``), where minimising ``||grad f||^2`` often ends, are therefore
    never reported as critical.

    Args:
        f: scalar loss ``f(x, *args)``.
        x: the point, any pytree of floating arrays.
        *args: data for ``f``.
        grad_tol: gradient-norm threshold (default ``default_grad_tol``).
        rtol: eigenvalue tolerance relative to ``||H||`` (default sqrt(eps)).
        atol: absolute eigenvalue tolerance (default 0, which keeps labels
            invariant under f -> c f).
        batches: as in ``HessianOperator``: classify the mean loss.
        method: "dense" (all n eigenvalues, n HVPs), "iterative" (k extreme
            eigenpairs at each end; the kind is decided by lambda_min and
            lambda_max, the index and num_zero become lower bounds, and
            ``exact`` is False) or "auto" (dense for n <= 2000).
        k: eigenpairs per end for the iterative method.
        key: PRNG key for the iterative method.

    Returns:
        A ``CriticalPoint``.

    Cost: one gradient plus n HVPs (dense) or the eigenpairs' HVPs.

    Raises:
        ValueError: non-scalar loss or bad method.
        FloatingPointError: loss or gradient NaN/inf at x.
    """
    if method not in ("auto", "dense", "iterative"):
        raise ValueError(f'method must be "auto", "dense" or "iterative", got {method!r}.')
    op = HessianOperator(f, x, *args, batches=batches)
    value, grad = op.value_and_grad()
    grad_norm = norm(grad)
    dense = method == "dense" or (method == "auto" and op.n <= DENSE_MAX)
    if dense:
        eigs = jnp.linalg.eigvalsh(op.to_dense())
    else:
        kk = min(k, op.n // 2)
        ep = eigenpairs(op, 2 * kk, which="both", key=key)
        eigs = jnp.sort(ep.values)
    eigs_np = np.asarray(eigs, dtype=float)
    hess_norm = float(np.max(np.abs(eigs_np)))
    rtol = default_rtol(op.dtype) if rtol is None else float(rtol)
    tol = max(float(atol), rtol * hess_norm)
    if grad_tol is None:
        grad_tol = default_grad_tol(op.dtype, hess_norm, float(norm(x)))
    neg, zero, pos = _inertia(eigs_np, tol)
    kind = _kind(neg, zero, pos) if float(grad_norm) <= grad_tol else "not_critical"
    return CriticalPoint(
        x=x,
        value=value,
        grad_norm=grad_norm,
        eigenvalues=eigs,
        kind=kind,
        index=neg,
        num_zero=zero,
        definiteness=_definiteness(neg, zero, pos),
        tol=tol,
        grad_tol=float(grad_tol),
        exact=dense,
    )


# --------------------------------------------------------------------------
# Finding critical points


def _as_batch(starts: PyTree) -> tuple[jax.Array, PyTree]:
    if isinstance(starts, (list, np.ndarray)):
        starts = jnp.asarray(starts)
    starts = jax.tree.map(jnp.asarray, starts)
    leaves = jax.tree.leaves(starts)
    if not leaves:
        raise ValueError("starts has no array leaves.")
    if any(leaf.ndim < 1 for leaf in leaves):
        raise ValueError("starts needs a leading batch axis on every leaf (one row per start).")
    sizes = {int(leaf.shape[0]) for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"every leaf of starts must have the same leading length, got {sizes}.")
    if sizes.pop() == 0:
        raise ValueError("starts is empty.")
    flat = jax.vmap(lambda point: ravel_pytree(point)[0])(starts)
    bad = ~np.all(np.isfinite(np.asarray(flat)), axis=1)
    if bad.any():
        raise ValueError(f"starts contain NaN or inf (rows {np.flatnonzero(bad)[:10].tolist()}).")
    return flat, jax.tree.map(lambda leaf: leaf[0], starts)


def _dedup(points: np.ndarray, order: np.ndarray, tol: float) -> list[int]:
    keep: list[int] = []
    for i in order:
        scale = max(1.0, float(np.linalg.norm(points[i])))
        if all(np.linalg.norm(points[i] - points[j]) > tol * scale for j in keep):
            keep.append(int(i))
    return keep


def find_critical_points(
    f: Loss,
    starts: PyTree,
    *args: Any,
    method: str = "newton-mr",
    max_iter: int = 200,
    solver: str = "auto",
    dedup_tol: float = 1e-4,
    include_not_critical: bool = False,
    grad_tol: float | None = None,
    rtol: float | None = None,
    atol: float = 0.0,
    minres_maxiter: int | None = None,
) -> list[CriticalPoint]:
    """Find the critical points reached from a batch of starts, classified.

    Runs Newton-MR (``method="newton-mr"``, the only method so far):
    Newton steps on ``grad f = 0`` solved in the least-squares sense by
    MINRES, globalised by backtracking on ``||grad f||^2``, which works on
    indefinite Hessians, so saddles and maxima are found as readily as
    minima (Roosta et al. 2022; Frye et al. 2019). Gradient descent cannot
    do this: it only finds minima. All starts run at once under ``vmap`` in
    one jitted loop.

    Minimising ``||grad f||^2`` can also end at gradient-flat points
    (``H g = 0``, ``g != 0``); ``classify`` labels them "not_critical" and
    they are dropped unless ``include_not_critical``. So are starts that
    used all ``max_iter`` steps while still moving (steps longer than
    ``100 eps max(1, ||x||)``: not converged, e.g. along Rosenbrock's
    curved valley). Starts that diverge (non-finite) are always dropped.

    Args:
        f: scalar loss ``f(x, *args)``.
        starts: a batch of points: an (m, d) array for array points, or a
            pytree whose leaves all carry a leading axis of length m.
        *args: data for ``f`` (shared by all starts).
        method: "newton-mr".
        max_iter: Newton steps per start.
        solver: "dense" (pseudo-inverse of the dense Hessian, n HVPs per
            step; robust on singular Hessians), "minres" (at most
            ``minres_maxiter`` HVPs per step; scales to large n) or "auto"
            (dense for n <= 200).
        dedup_tol: two points closer than ``dedup_tol * max(1, ||x||)`` are
            one; the one with the smaller gradient is kept.
        include_not_critical: keep points classified "not_critical".
        grad_tol, rtol, atol: passed to ``classify``.
        minres_maxiter: MINRES products per Newton step (default 100; at
            most n).

    Returns:
        Deduplicated ``CriticalPoint`` s, sorted by loss value.

    Cost per start and step: one HVP per MINRES iteration (or n for the
    dense solver), one more HVP, and one gradient per line-search trial.
    """
    if method != "newton-mr":
        raise ValueError(f'method must be "newton-mr", got {method!r}.')
    if solver not in ("auto", "dense", "minres"):
        raise ValueError(f'solver must be "auto", "dense" or "minres", got {solver!r}.')
    z0, first = _as_batch(starts)
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}.")
    if not dedup_tol >= 0:
        raise ValueError(f"dedup_tol must be >= 0, got {dedup_tol}.")
    try:
        check_scalar_loss(f, first, args)
    except (TypeError, IndexError, ValueError) as err:
        shapes = jax.tree.map(jnp.shape, first)
        raise ValueError(
            f"f cannot be evaluated at a start: one row of starts has shape {shapes} "
            f"(starts carries a leading batch axis, one row per start). {err}"
        ) from err
    n = z0.shape[1]
    solver = ("dense" if n <= 200 else "minres") if solver == "auto" else solver
    # Past n iterations MINRES only accumulates rounding (and on singular,
    # incompatible systems drifts off along the null space): cap at n.
    minres_maxiter = min(int(minres_maxiter or 100), n)
    flat_loss = _flat_loss(f, first)
    unravel = flat_loss.unravel
    z, gnorm, its, last = newton_mr(
        flat_loss, z0, tuple(args), int(max_iter), solver, minres_maxiter, 40
    )
    z_np, g_np = np.asarray(z, dtype=float), np.asarray(gnorm, dtype=float)
    finite = np.isfinite(g_np) & np.all(np.isfinite(z_np), axis=1)
    # A start that used every step while still moving has not converged: its
    # small-but-nonzero gradient says nothing about a critical point nearby.
    step_tol = 100 * np.finfo(np.dtype(z.dtype)).eps * np.maximum(1.0, np.linalg.norm(z_np, axis=1))
    converged = (np.asarray(its) < max_iter) | (np.asarray(last, dtype=float) <= step_tol)
    keep = finite & (converged | include_not_critical)
    order = [i for i in np.argsort(np.where(keep, g_np, np.inf)) if keep[i]]
    points = []
    for i in _dedup(z_np, np.asarray(order, dtype=int), dedup_tol):
        cp = classify(f, unravel(z[i]), *args, grad_tol=grad_tol, rtol=rtol, atol=atol)
        if include_not_critical or cp.kind != "not_critical":
            points.append(cp)
    return sorted(points, key=lambda cp: float(cp.value))


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


def _flat_loss(f: Loss, example: PyTree) -> _FlatLoss:
    _, unravel = ravel_pytree(example)
    leaves = jax.tree.leaves(example)
    signature = (
        jax.tree.structure(example),
        tuple((jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves),
    )
    return _FlatLoss(f, unravel, signature)
