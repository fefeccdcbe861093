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

from hessian_tools._checks import (
    as_key,
    check_choice,
    check_int,
)
from hessian_tools._hessian import Loss, PyTree, check_scalar_loss
from hessian_tools._newton import as_batch, dedup, flat_loss, newton_mr
from hessian_tools._operator import dense_is_cheaper, prefer_dense
from hessian_tools._params import is_variable
from hessian_tools._thick_restart import basis_size
from hessian_tools._tree import norm
from hessian_tools.density import spectral_density
from hessian_tools.eigen import eigenpairs, lanczos_cost
from hessian_tools.operators import HessianOperator

__all__ = ["CriticalPoint", "classify", "find_critical_points"]

KINDS = ("minimum", "maximum", "saddle", "degenerate", "not_critical")


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
            non-degenerate critical point). When not ``exact``, at a saddle,
            an estimate from the spectral density (``index_stderr`` gives its
            standard error), never below the negative eigenvalues found.
        num_zero: number of eigenvalues with ``|lambda| <= tol`` (a lower
            bound when not ``exact``).
        definiteness: "positive definite", "negative definite", "positive
            semidefinite" (a possible minimum), "negative semidefinite" (a
            possible maximum), "indefinite" or "zero".
        tol: the eigenvalue tolerance used, ``max(atol, rtol * ||H||)``.
        grad_tol: the gradient tolerance used.
        exact: True when the whole spectrum was computed (dense Hessian).
        index_stderr: uncertainty of ``index`` (0 when it is exact: on the
            dense path, or when the extreme eigenvalues settle it): the
            standard error over probes plus half the quadrature's bias
            bracket (``index_bracket``), so ``index +- 2 index_stderr``
            covers the exact index (calibrated on three models, see
            ``tests/test_critical.py``). ``inf`` when the index was not
            estimated (by default at a not-critical point on the Lanczos
            path): ``index`` is then the count of negative eigenvalues
            found, a lower bound.
        num_variables: n, the number of variables (see ``n``).
        num_matvecs: HVPs spent in all (the dense Hessian's n, or the
            eigenpairs' plus the index estimate's).
        index_matvecs: HVPs of them spent on the index estimate (its
            spectral density); 0 when there was none.
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
    index_stderr: float = dataclasses.field(default=0.0, metadata=dict(static=True))
    num_variables: int | None = dataclasses.field(default=None, metadata=dict(static=True))
    num_matvecs: int = dataclasses.field(default=0, metadata=dict(static=True))
    index_matvecs: int = dataclasses.field(default=0, metadata=dict(static=True))

    @property
    def n(self) -> int:
        """Number of variables the Hessian was taken in (the floating-point
        array leaves of x, or the block selected by ``wrt``)."""
        if self.num_variables is not None:
            return self.num_variables
        return int(sum(np.size(leaf) for leaf in jax.tree.leaves(self.x) if is_variable(leaf)))

    @property
    def index_fraction(self) -> float:
        """index / n, the fraction of negative eigenvalues (Dauphin et al. 2014)."""
        return self.index / self.n

    def __repr__(self) -> str:
        index = f"{self.index}" if self.exact else f"{self.index}±{self.index_stderr:.2g}"
        return (
            f"CriticalPoint(kind={self.kind!r}, index={index}, num_zero={self.num_zero}, "
            f"value={float(self.value):.6g}, grad_norm={float(self.grad_norm):.3g}, "
            f"definiteness={self.definiteness!r}, exact={self.exact})"
        )


def _eps(dtype: Any) -> float:
    return float(np.finfo(np.dtype(dtype)).eps)


def default_zero_rtol(dtype: Any) -> float:
    """The default threshold below which an eigenvalue counts as zero,
    relative to ||H||: sqrt(eps), 1.5e-8 in float64, 3.5e-4 in float32."""
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


def index_bracket(nodes: Any, weights: Any, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per probe, the midpoint and half-width of an interval that holds the
    probe's spectral measure below ``threshold``.

    Gauss quadrature brackets a distribution function (the
    Chebyshev-Markov-Stieltjes inequalities; Golub & Meurant 2010, "Matrices,
    Moments and Quadrature", sec. 6.5): with nodes ``x_j < t <= x_(j+1)``,
    the mass below t lies between ``sum_(i<j) w_i`` and ``sum_(i<=j+1) w_i``,
    so the plain count ``sum_(i<=j) w_i`` can be off by the weight of either
    node next to the threshold: the quadrature's bias, which a stderr over
    probes does not see.
    """
    x, w = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    below = x < threshold
    count = np.sum(w * below, axis=-1)
    last = np.max(np.where(below, x, -np.inf), axis=-1, keepdims=True)
    first = np.min(np.where(below, np.inf, x), axis=-1, keepdims=True)
    w_low = np.sum(np.where(below & (x == last), w, 0), axis=-1)
    w_high = np.sum(np.where(~below & (x == first), w, 0), axis=-1)
    return count + (w_high - w_low) / 2, (w_low + w_high) / 2


def _index_estimate(op, tol: float, key: Any, progress: bool) -> tuple[float, float, int]:
    """(estimated negative count, its uncertainty, HVPs) from the spectral
    density: the midpoint of the quadrature's bracket averaged over probes,
    and ``n (stderr + mean half-width / 2)``, so that two of it cover the
    bracket plus two standard errors of the sampling."""
    density = spectral_density(op, key=key, progress=progress)
    mid, half = index_bracket(density.nodes, density.weights, -tol)
    stderr = mid.std(ddof=1) / np.sqrt(mid.size) if mid.size > 1 else np.inf
    return mid.mean() * op.n, (stderr + half.mean() / 2) * op.n, density.num_matvecs


def classify_cost(n: int, k_per_end: int) -> int:
    """HVPs of ``classify``'s Lanczos path: ``k_per_end`` eigenpairs at each end plus the
    default spectral density (for the index estimate)."""
    kk = max(1, min(k_per_end, n // 2))
    return lanczos_cost(n, 2 * kk, "both") + 1536


def classify(
    f: Loss,
    x: PyTree,
    *args: Any,
    grad_tol: float | None = None,
    rtol: float | None = None,
    atol: float = 0.0,
    batches: Iterable | None = None,
    method: str = "auto",
    k_per_end: int = 6,
    key: jax.Array | None = None,
    progress: bool = False,
    wrt: Any = None,
    estimate_index: bool | None = None,
) -> CriticalPoint:
    """Classify ``x`` as a minimum, maximum, saddle, degenerate or not critical.

    Rules: with ``tol = max(atol, rtol * ||H||)``, eigenvalues below
    ``-tol`` are negative, above ``tol`` positive, the rest zero. Both signs
    present: saddle (even when some are zero); all positive: minimum; all
    negative: maximum; otherwise degenerate, and ``definiteness`` says
    whether the Hessian is positive or negative semidefinite (a possible
    minimum or maximum; minima of networks with symmetries are of this
    kind). A gradient norm above ``grad_tol`` makes the point
    "not_critical" whatever its Hessian; the eigenvalues are still reported,
    and the index is estimated only when asked (``estimate_index=True``).
    Gradient-flat points (``H g ~ 0`` but ``g != 0``), where minimising
    ``||grad f||^2`` often ends, are therefore never reported as critical.

    Args:
        f: scalar loss ``f(x, *args)``.
        x: the point, any pytree of floating arrays.
        *args: data for ``f``.
        grad_tol: gradient-norm threshold (default ``default_grad_tol``).
        rtol: eigenvalue tolerance relative to ``||H||`` (default sqrt(eps)).
        atol: absolute eigenvalue tolerance (default 0, which keeps labels
            invariant under f -> c f).
        batches: as in ``HessianOperator``: classify the mean loss.
        method: "dense" (all n eigenvalues, n HVPs), "lanczos" (``k_per_end``
            eigenpairs at each end decide the kind; the index is estimated
            from the spectral density, ``index_stderr`` gives its standard
            error, ``num_zero`` is a lower bound and ``exact`` is False) or
            "auto" (dense only where it is predicted to take no more time
            than the Lanczos path: ``hessian_tools._operator.dense_is_cheaper``
            with the HVP's flops against ``classify_cost`` products).
        k_per_end: eigenpairs at each end for the Lanczos path (``2 k_per_end``
            in all, ``eigenpairs(..., which="both")``).
        key: PRNG key for the Lanczos path.
        progress: show progress bars (the dense Hessian, or the Lanczos and
            density work).
        wrt: classify with respect to a block of the variables only (as in
            ``HessianOperator``), the others held fixed.
        estimate_index: on the Lanczos path, where the extremes show both
            signs, estimate the index from the spectral density (about 1,536
            HVPs, reported in ``index_matvecs``). None (default): only at a
            critical point, where the index means something; at a
            not-critical point ``index`` is then the negative count found
            (a lower bound, ``index_stderr = inf``). True: always; False:
            never.

    Returns:
        A ``CriticalPoint``.

    Cost: one gradient plus n HVPs (dense), or the eigenpairs' HVPs plus,
    at a critical saddle, the index estimate's (``classify_cost(n,
    k_per_end)``, about 1,800 with the defaults, bounds both); the result's
    ``num_matvecs`` says what was spent.

    Raises:
        ValueError: non-scalar loss or bad method.
        FloatingPointError: loss or gradient NaN/inf at x.
    """
    method = check_choice("method", method, ("auto", "dense", "lanczos"))
    op = HessianOperator(f, x, *args, batches=batches, wrt=wrt)
    value, grad = op.value_and_grad()
    grad_norm = norm(grad)
    kk = max(1, min(k_per_end, op.n // 2))
    dense = method == "dense" or (
        method == "auto"
        and prefer_dense(op, classify_cost(op.n, k_per_end), basis_size(op.n, 2 * kk, "both", None))
    )
    if dense:
        eigs = jnp.linalg.eigvalsh(op.to_dense(progress=progress))
        hess_norm = float(jnp.max(jnp.abs(eigs)))
        spent = op.n
    else:
        key = as_key(key)
        k_eig, k_density = jax.random.split(key)
        ep = eigenpairs(op, 2 * kk, which="both", key=k_eig, method="lanczos", progress=progress)
        eigs = jnp.sort(ep.values)
        hess_norm = max(float(jnp.max(jnp.abs(eigs))), float(ep.norm_estimate))
        spent = int(ep.num_matvecs)
    eigs_np = np.asarray(eigs, dtype=float)
    rtol = default_zero_rtol(op.dtype) if rtol is None else float(rtol)
    tol = max(float(atol), rtol * hess_norm)
    if grad_tol is None:
        grad_tol = default_grad_tol(op.dtype, hess_norm, float(norm(op.variables)))
    neg, zero, pos = _inertia(eigs_np, tol)
    critical = float(grad_norm) <= grad_tol
    index, index_stderr, index_spent = neg, 0.0, 0
    if not dense and neg and pos:
        # the extremes decide the kind; the count in between is estimated,
        # by default only where it means something (at a critical point)
        if estimate_index or (estimate_index is None and critical):
            estimate, index_stderr, index_spent = _index_estimate(op, tol, k_density, progress)
            index = int(min(op.n - pos, max(neg, round(estimate))))
        else:
            index_stderr = float("inf")  # a lower bound: the negatives found
    kind = _kind(neg, zero, pos) if critical else "not_critical"
    return CriticalPoint(
        x=x,
        value=value,
        grad_norm=grad_norm,
        eigenvalues=eigs,
        kind=kind,
        index=index,
        num_zero=zero,
        definiteness=_definiteness(neg, zero, pos),
        tol=tol,
        grad_tol=float(grad_tol),
        exact=dense,
        index_stderr=float(index_stderr),
        num_variables=op.n,
        num_matvecs=spent + int(index_spent),
        index_matvecs=int(index_spent),
    )


# --------------------------------------------------------------------------
# Finding critical points


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
    minres_max_matvecs: int | None = None,
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
        max_iter: Newton iterations per start (each costs the HVPs below).
        solver: "dense" (pseudo-inverse of the dense Hessian, n HVPs per
            step; robust on singular Hessians), "minres" (at most
            ``minres_max_matvecs`` HVPs per step; scales to large n) or
            "auto" (dense where n HVPs cost no more than the MINRES budget).
        dedup_tol: two points closer than ``dedup_tol * max(1, ||x||)`` are
            one; the one with the smaller gradient is kept.
        include_not_critical: keep points classified "not_critical".
        grad_tol, rtol, atol: passed to ``classify``.
        minres_max_matvecs: MINRES products per Newton step (default 100; at
            most n).

    Returns:
        Deduplicated ``CriticalPoint`` s, sorted by loss value.

    Cost per start and step: one HVP per MINRES iteration (or n for the
    dense solver), one more HVP, and one gradient per line-search trial.

    Raises:
        ValueError: bad starts (no batch axis, empty, not finite), a loss
            that cannot be evaluated at a start, or a bad option.
    """
    check_choice("method", method, ("newton-mr",))
    check_choice("solver", solver, ("auto", "dense", "minres"))
    z0, first = as_batch(starts)
    max_iter = check_int("max_iter", max_iter, low=1)
    if not dedup_tol >= 0:
        raise ValueError(f"dedup_tol must be >= 0; got {dedup_tol}.")
    try:
        check_scalar_loss(f, first, args)
    except (TypeError, IndexError, ValueError) as err:
        shapes = jax.tree.map(jnp.shape, first)
        raise ValueError(
            f"f must be evaluable at each start; one row of starts has shape {shapes} "
            f"(starts carries a leading batch axis, one row per start). {err}"
        ) from err
    n = z0.shape[1]
    # Past n iterations MINRES only accumulates rounding (and on singular,
    # incompatible systems drifts off along the null space): cap at n.
    budget = 100 if minres_max_matvecs is None else minres_max_matvecs
    budget = min(check_int("minres_max_matvecs", budget, low=1), n)
    if solver == "auto":
        solver = "dense" if dense_is_cheaper(n, budget, explicit=False) else "minres"
    loss = flat_loss(f, first)
    z, gnorm, its, last = newton_mr(loss, z0, tuple(args), max_iter, solver, budget, 40)
    z_np, g_np = np.asarray(z, dtype=float), np.asarray(gnorm, dtype=float)
    finite = np.isfinite(g_np) & np.all(np.isfinite(z_np), axis=1)
    # A start that used every step while still moving has not converged: its
    # small-but-nonzero gradient says nothing about a critical point nearby.
    step_tol = 100 * np.finfo(np.dtype(z.dtype)).eps * np.maximum(1.0, np.linalg.norm(z_np, axis=1))
    converged = (np.asarray(its) < max_iter) | (np.asarray(last, dtype=float) <= step_tol)
    keep = finite & (converged | include_not_critical)
    order = [i for i in np.argsort(np.where(keep, g_np, np.inf)) if keep[i]]
    points = []
    for i in dedup(z_np, np.asarray(order, dtype=int), dedup_tol):
        cp = classify(f, loss.unravel(z[i]), *args, grad_tol=grad_tol, rtol=rtol, atol=atol)
        if include_not_critical or cp.kind != "not_critical":
            points.append(cp)
    return sorted(points, key=lambda cp: float(cp.value))
