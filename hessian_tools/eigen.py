"""Extreme eigenpairs of a symmetric matrix or curvature operator.

Small problems (and dense arrays) are decomposed exactly. Large operators use
thick-restart Lanczos (Wu & Simon 2000, "Thick-restart Lanczos method for
large symmetric eigenvalue problems", SIAM J. Matrix Anal. Appl. 22(2)) with
full reorthogonalisation: each cycle extends the basis one HVP at a time inside
one jitted loop, which stops as soon as every wanted Ritz residual is below
``tol * ||A||``; a restart keeps the wanted Ritz vectors and some spare ones
and continues from the Lanczos residual (``hessian_tools._thick_restart``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import _thick_restart
from hessian_tools import lanczos as lz

# re-exported next to ``default_tol``, and the jitted restart cycle for the
# tests of its compile cache
from hessian_tools._thick_restart import _cycle_jit as _cycle_jit
from hessian_tools._thick_restart import default_lanczos_tol as default_lanczos_tol
from hessian_tools.operators import CurvatureOperator, as_square_matrix

__all__ = ["Eigenpairs", "check_symmetric", "eigenpairs"]

Which = Literal["largest", "smallest", "both"]

#: operators with at most this many rows go to the exact dense path by default
DENSE_THRESHOLD = 1500


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Eigenpairs:
    """Eigenvalues and eigenvectors of a symmetric operator.

    Attributes:
        values: (k,) eigenvalues, ordered algebraically: descending for
            ``which="largest"``, ascending for ``"smallest"`` and ``"both"``.
        vectors: (n, k) unit eigenvectors as columns, in ``ravel_pytree``
            order (``op.unravel(vectors[:, i])`` gives a pytree).
        residuals: (k,) residual norms ``||A v - lambda v||``.
        converged: True when every residual is below ``tol * ||A||``.
        num_matvecs: operator products (HVPs) spent.
        exact: True when computed by a dense eigendecomposition.
        norm_estimate: the ``||A||`` the tolerance was measured against (the
            largest |eigenvalue| seen; exact on the dense path).
        num_restarts: thick restarts performed (0 on the dense path).
    """

    values: jax.Array
    vectors: jax.Array
    residuals: jax.Array
    converged: bool = dataclasses.field(metadata=dict(static=True))
    num_matvecs: int = dataclasses.field(metadata=dict(static=True))
    exact: bool = dataclasses.field(default=True, metadata=dict(static=True))
    norm_estimate: float = dataclasses.field(default=float("nan"), metadata=dict(static=True))
    num_restarts: int = dataclasses.field(default=0, metadata=dict(static=True))


def default_tol(dtype: Any) -> float:
    """Default relative residual tolerance of the dense path: sqrt(eps)."""
    return float(np.sqrt(np.finfo(np.dtype(dtype)).eps))


def _check_k(k: Any, n: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise TypeError(f"k must be an integer, got {k!r}.")
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n = {n}; got k = {k}.")
    return int(k)


def _check_which(which: str) -> None:
    if which not in ("largest", "smallest", "both"):
        raise ValueError(f'which must be "largest", "smallest" or "both", got {which!r}.')


def select(w: jax.Array, k: int, which: str) -> np.ndarray:
    """Indices into ascending eigenvalues ``w`` for the requested end(s).

    ``"both"`` follows scipy's ``eigsh(which="BE")``: k in all, ceil(k/2)
    from the top and floor(k/2) from the bottom, returned ascending.
    """
    n = w.shape[0]
    if which == "largest":
        return np.arange(n - 1, n - 1 - k, -1)
    if which == "smallest":
        return np.arange(k)
    top = (k + 1) // 2
    return np.concatenate([np.arange(k - top), np.arange(n - top, n)])


def dense_eigenpairs(
    matrix: jax.Array, k: int, which: str, tol: float | None, num_matvecs: int
) -> Eigenpairs:
    """Exact eigenpairs of a dense symmetric matrix via ``jnp.linalg.eigh``."""
    w, v = jnp.linalg.eigh(matrix)
    idx = select(w, k, which)
    values, vectors = w[idx], v[:, idx]
    residuals = jnp.linalg.norm(matrix @ vectors - vectors * values[None, :], axis=0)
    tol = default_tol(matrix.dtype) if tol is None else tol
    scale = jnp.max(jnp.abs(w))
    converged = bool(jnp.all(residuals <= tol * scale + jnp.finfo(matrix.dtype).tiny))
    return Eigenpairs(values, vectors, residuals, converged, num_matvecs, True, float(scale), 0)


# --------------------------------------------------------------------------
# Randomised symmetry check


def check_symmetric(
    op: CurvatureOperator | jax.Array, *, key: jax.Array | None = None, rtol: float | None = None
) -> float:
    """Randomised symmetry test: compares ``u . (A v)`` with ``v . (A u)``.

    Raises ``ValueError`` when the relative asymmetry
    ``|u.Av - v.Au| / (|u| |Av| + |v| |Au|)`` exceeds ``rtol`` (default
    ``10 sqrt(eps)``, loose enough for float32 HVP rounding). Costs 2 HVPs.

    Returns:
        The measured relative asymmetry.
    """
    _, _, n, dtype, matvec = lz.resolve_operator(op)
    key = jax.random.PRNGKey(1) if key is None else key
    u, v = jax.random.normal(key, (2, n), dtype)
    au, av = matvec(u), matvec(v)
    lhs, rhs = float(jnp.vdot(u, av)), float(jnp.vdot(v, au))
    denom = float(
        jnp.linalg.norm(u) * jnp.linalg.norm(av) + jnp.linalg.norm(v) * jnp.linalg.norm(au)
    )
    err = abs(lhs - rhs) / denom if denom > 0 else 0.0
    rtol = 10 * default_tol(dtype) if rtol is None else rtol
    if not err <= rtol:
        raise ValueError(
            f"the operator is not symmetric: u.(Av) = {lhs:.6g} but v.(Au) = {rhs:.6g} "
            f"(relative asymmetry {err:.2e} > rtol {rtol:.1e}); Lanczos assumes A = A^T."
        )
    return err


# --------------------------------------------------------------------------
# Thick-restart Lanczos (the algorithm lives in hessian_tools._thick_restart)


def lanczos_eigenpairs(op: Any, k: int, which: str, **options: Any) -> Eigenpairs:
    """Thick-restart Lanczos as an ``Eigenpairs``; options and defaults as in
    ``eigenpairs`` (see ``hessian_tools._thick_restart.lanczos_eigenpairs``)."""
    r = _thick_restart.lanczos_eigenpairs(op, k, which, **options)
    return Eigenpairs(
        r.values,
        r.vectors,
        r.residuals,
        r.converged,
        r.num_matvecs,
        False,
        r.norm_estimate,
        r.num_restarts,
    )


def eigenpairs(
    a: CurvatureOperator | jax.Array | np.ndarray,
    k: int,
    *,
    which: Which = "largest",
    key: jax.Array | None = None,
    tol: float | None = None,
    max_matvecs: int | None = None,
    method: Literal["auto", "dense", "lanczos"] = "auto",
    max_basis: int | None = None,
    linearize: bool = True,
    accumulate_dtype: Any = None,
    true_residuals: bool = False,
    check_symmetry: bool = False,
    progress: bool = False,
) -> Eigenpairs:
    """The k algebraically largest / smallest eigenpairs of a symmetric operator.

    "largest" means algebraically largest (most positive), never largest in
    modulus, so negative eigenvalues are never mixed into a top-k list;
    "smallest" gives the most negative ones (the negative curvature that
    saddle analysis needs); "both" gives ceil(k/2) from the top and
    floor(k/2) from the bottom, like scipy's ``eigsh(which="BE")``.

    Two methods. ``"dense"``: the exact eigendecomposition (an operator is
    formed with n HVPs). ``"lanczos"``: thick-restart Lanczos (Wu & Simon
    2000) with full reorthogonalisation, stopping as soon as every wanted
    residual ``||A v - lambda v||`` is at most ``tol * ||A||``, ``||A||``
    estimated by the largest |Ritz value|; the eigenvalue error is then about
    ``residual^2 / gap``. ``"auto"`` picks dense for arrays and for operators
    with n <= 1500 (or k > n / 4), Lanczos otherwise.

    Single-vector Lanczos finds one copy of an exactly repeated eigenvalue
    (further copies only through rounding); clusters are found in full.

    Args:
        a: a symmetric (n, n) array, or a ``CurvatureOperator`` such as
            ``HessianOperator``.
        k: number of eigenpairs, 1 <= k <= n (k < n for Lanczos).
        which: "largest" (values descending), "smallest" (ascending) or
            "both" (ascending).
        key: PRNG key for the start vector (default ``PRNGKey(0)``).
        tol: relative residual tolerance (Lanczos default sqrt(eps) / 4:
            8.6e-5 in float32, 3.7e-9 in float64; dense: sqrt(eps)).
        max_matvecs: HVP budget for Lanczos (default ``max(1000, 50 m)``);
            when it runs out the result has ``converged=False``.
        method: "auto", "dense" or "lanczos".
        max_basis: Lanczos basis size m (default ``max(2k + 10, 30)`` for
            "largest" and ``max(2k + 10, 60)`` for "smallest" and "both",
            whose wanted end often lies in a dense cluster; at most n).
            Memory is ``(m + 1) n`` numbers (plus as much again briefly at
            each restart); a smaller m bounds memory and costs more restarts.
        linearize: share one forward pass between a cycle's HVPs
            (``jax.linearize``; holds the activations in memory).
        accumulate_dtype: dtype for T's entries (e.g. float64 with x64 on).
        true_residuals: recompute the residuals with k extra HVPs instead of
            reading them off the Lanczos relation (which full
            reorthogonalisation keeps exact up to rounding).
        check_symmetry: first run ``check_symmetric`` (2 HVPs) and raise if
            the operator is not symmetric.
        progress: show a progress bar of HVPs spent (restart cycles).

    Returns:
        An ``Eigenpairs`` result: values, vectors (n, k), residuals,
        converged, num_matvecs (every HVP spent, counted).

    Cost: dense: n HVPs for an operator and O(n^3) flops. Lanczos: the HVPs
    until convergence (often 2k to 4k + 10), plus O(m^2 n) flops per cycle.
    """
    _check_which(which)
    if method not in ("auto", "dense", "lanczos"):
        raise ValueError(f'method must be "auto", "dense" or "lanczos", got {method!r}.')
    extra = 0
    if check_symmetry:
        check_symmetric(a, key=key)
        extra = 2
    if isinstance(a, CurvatureOperator):
        n = a.n
        k = _check_k(k, n)
        if method == "dense" or (method == "auto" and (n <= DENSE_THRESHOLD or 4 * k > n)):
            return dataclasses.replace(
                dense_eigenpairs(a.to_dense(), k, which, tol, n), num_matvecs=n + extra
            )
    else:
        matrix = as_square_matrix(a)
        k = _check_k(k, matrix.shape[0])
        if method != "lanczos":
            return dense_eigenpairs(matrix, k, which, tol, 0)
        a = matrix
    result = lanczos_eigenpairs(
        a,
        k,
        which,
        key=key,
        tol=tol,
        max_matvecs=max_matvecs,
        max_basis=max_basis,
        linearize=linearize,
        accumulate_dtype=accumulate_dtype,
        true_residuals=true_residuals,
        progress=progress,
    )
    return dataclasses.replace(result, num_matvecs=result.num_matvecs + extra)
