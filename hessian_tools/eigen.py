"""Extreme eigenpairs of a symmetric matrix or curvature operator.

Small problems (and dense arrays) are decomposed exactly. Large operators use
thick-restart Lanczos (Wu & Simon 2000, "Thick-restart Lanczos method for
large symmetric eigenvalue problems", SIAM J. Matrix Anal. Appl. 22(2)) with
full reorthogonalisation: each cycle extends the basis one HVP at a time inside
one jitted loop, which stops as soon as every wanted Ritz residual is below
``tol * ||A||``; a restart keeps the wanted Ritz vectors and some spare ones
and continues from the Lanczos residual.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import lanczos as lz
from hessian_tools._progress import progress_bar
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


def default_lanczos_tol(dtype: Any) -> float:
    """Default relative residual tolerance of Lanczos: sqrt(eps) / 4.

    8.6e-5 in float32, 3.7e-9 in float64. The eigenvalue error is about
    residual^2 / gap: on the 85k-parameter digits MLP this gives top-10
    eigenvalues to a relative error below 1e-5 in float32.
    """
    return float(np.sqrt(np.finfo(np.dtype(dtype)).eps)) / 4


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
# Thick-restart Lanczos


def _positions(nv, k: int, which: str):
    """Indices of the wanted Ritz values among ``nv`` ascending ones."""
    ar = jnp.arange(k) if isinstance(nv, jax.Array) else np.arange(k)
    if which == "largest":
        return nv - 1 - ar
    if which == "smallest":
        return ar
    kb = k // 2
    return ar + (ar >= kb) * (nv - k)


def _padded_tridiagonal(alphas, betas, arrow, k0, j):
    """T of the steps ``0..j`` in an (m, m) array; rows after j hold a
    decoupled value above ||T||, so the first j + 1 ascending eigenvalues
    of the result are the Ritz values. Rows ``< k0`` are kept Ritz pairs
    coupled to row ``k0`` by ``arrow`` (the thick-restart arrowhead)."""
    m = alphas.shape[0]
    idx = jnp.arange(m)
    valid = idx <= j
    off = jnp.where((idx >= k0) & (idx < j), betas, 0)[:-1]
    t = jnp.diag(jnp.where(valid, alphas, 0)) + jnp.diag(off, 1) + jnp.diag(off, -1)
    col = jnp.where(idx < k0, arrow, 0)
    hot = (idx == k0).astype(t.dtype)
    t = t + col[:, None] * hot[None, :] + hot[:, None] * col[None, :]
    bound = jnp.sum(jnp.abs(t)) + 1
    return t + jnp.diag(jnp.where(valid, 0, bound))


def _monitor(alphas, betas, j, *, arrow, k0, tol, norm0, k, which):
    theta, u = jnp.linalg.eigh(_padded_tridiagonal(alphas, betas, arrow, k0, j))
    nv = j + 1
    res = jnp.abs(betas[j] * u[j])
    pos = jnp.clip(_positions(nv, k, which), 0, alphas.shape[0] - 1)
    norm = jnp.maximum(norm0, jnp.maximum(jnp.abs(theta[0]), jnp.abs(theta[nv - 1])))
    return (nv >= k) & jnp.all(res[pos] <= tol * norm)


@functools.partial(jax.jit, static_argnames=("make_matvec", "acc", "k", "which"))
def _cycle_jit(make_matvec, operands, carry, arrow, k0, stop, bd_tol, tol, norm0, *, acc, k, which):
    mv = make_matvec(operands)
    monitor = functools.partial(
        _monitor, arrow=arrow, k0=k0, tol=tol, norm0=norm0, k=k, which=which
    )
    return lz.run_loop(mv, carry, stop, reorth=True, acc=acc, breakdown_tol=bd_tol, monitor=monitor)


@functools.partial(jax.jit, static_argnames=("acc", "k", "which"))
def _step_jit(carry, w, bd_tol, arrow, k0, tol, norm0, *, acc, k, which):
    monitor = functools.partial(
        _monitor, arrow=arrow, k0=k0, tol=tol, norm0=norm0, k=k, which=which
    )
    return lz._after_matvec(carry, w, reorth=True, acc=acc, breakdown_tol=bd_tol, monitor=monitor)


@jax.jit
def _combine(q_buf, coeffs):
    """New basis ``coeffs @ q_buf``: kept Ritz vectors, then the residual."""
    return (coeffs.astype(q_buf.dtype) @ q_buf).astype(q_buf.dtype)


@jax.jit
def _fresh_vector(q_buf, key, slot):
    """Row ``slot`` := a random unit vector orthogonal to the rows before it
    (restart after a breakdown, when the Krylov space is invariant)."""
    r = jax.random.normal(key, q_buf.shape[1:], q_buf.dtype)
    basis = q_buf * (jnp.arange(q_buf.shape[0]) < slot).astype(q_buf.dtype)[:, None]
    for _ in range(2):
        r = r - (basis @ r) @ basis
    return q_buf.at[slot].set(r / jnp.linalg.norm(r))


def _host_ritz(alphas, betas, arrow, k0: int, nv: int):
    """Ritz values/vectors of the current T (nv x nv) on the host, in float64."""
    a, b, s = (np.asarray(x, np.float64) for x in (alphas, betas, arrow))
    t = np.diag(a[:nv])
    off = b[k0 : nv - 1]
    t[np.arange(k0, nv - 1), np.arange(k0 + 1, nv)] = off
    t[np.arange(k0 + 1, nv), np.arange(k0, nv - 1)] = off
    if k0 > 0:
        t[:k0, k0] = t[k0, :k0] = s[:k0]
    return np.linalg.eigh(t)


def _keep_indices(nv: int, k: int, which: str, keep: int) -> np.ndarray:
    """Ritz indices (ascending order) kept at a restart: the wanted end(s)."""
    if which == "largest":
        return np.arange(nv - keep, nv)
    if which == "smallest":
        return np.arange(keep)
    top = (keep + 1) // 2
    return np.concatenate([np.arange(keep - top), np.arange(nv - top, nv)])


def lanczos_eigenpairs(
    op: Any,
    k: int,
    which: str,
    *,
    key: jax.Array | None,
    tol: float | None,
    max_matvecs: int | None,
    max_basis: int | None,
    linearize: bool,
    accumulate_dtype: Any,
    true_residuals: bool,
    progress: bool,
) -> Eigenpairs:
    """Thick-restart Lanczos; see ``eigenpairs``."""
    make, operands, n, dtype, matvec = lz.resolve_operator(op, linearize)
    if k >= n:
        raise ValueError(
            f"k = {k} >= n = {n}: Lanczos finds a few extreme eigenpairs; for all of "
            'them use the exact dense path, eigenpairs(..., method="dense").'
        )
    acc = lz.check_accumulate_dtype(accumulate_dtype, dtype)
    # The negative end of a network Hessian near a minimum lies in the dense
    # bulk around zero, where a wider basis restarts far less (measured on the
    # 85k-parameter MLP, 5 most negative: 470 HVPs with 30 vectors, 222 with 60).
    floor = 30 if which == "largest" else 60
    m = min(n, max(2 * k + 10, floor) if max_basis is None else int(max_basis))
    if m < k + 2 and m < n:
        raise ValueError(f"max_basis = {m} must be at least k + 2 = {k + 2}.")
    budget = max(1000, 50 * m) if max_matvecs is None else int(max_matvecs)
    if budget < k:
        raise ValueError(f"max_matvecs = {budget} is below k = {k}: no Ritz pairs to return.")
    tol = default_lanczos_tol(dtype) if tol is None else float(tol)
    bd_tol = lz.default_breakdown_tol(n, dtype)
    key = jax.random.PRNGKey(0) if key is None else key
    key, sub = jax.random.split(key)
    carry = lz.init_carry(lz.start_vector(sub, None, op, n, dtype), m, acc)
    arrow, k0 = jnp.zeros((m,), acc), 0
    used = restarts = 0
    norm = 0.0  # running max of |Ritz values|: restarts drop the far end
    tol_acc = jnp.asarray(tol, acc)
    with progress_bar(budget, "eigenpairs", progress) as bar:
        while True:
            stop = min(m, k0 + budget - used)
            start = int(carry[0])
            if make is not None:
                carry = _cycle_jit(
                    make,
                    operands,
                    carry,
                    arrow,
                    k0,
                    stop,
                    bd_tol,
                    tol_acc,
                    jnp.asarray(norm, acc),
                    acc=acc,
                    k=k,
                    which=which,
                )
            else:
                step = functools.partial(
                    _step_jit,
                    arrow=arrow,
                    k0=k0,
                    tol=tol_acc,
                    norm0=jnp.asarray(norm, acc),
                    acc=acc,
                    k=k,
                    which=which,
                )
                carry = lz.python_loop(
                    matvec,
                    carry,
                    stop,
                    reorth=True,
                    acc=acc,
                    breakdown_tol=bd_tol,
                    step_fn=step,
                )
            nv = int(carry[0])
            used += nv - start
            bar.update(nv - start)
            status = int(carry[5])
            lz.raise_if_nonfinite(status, used - 1, "HVP (eigenpairs)")
            _, q_buf, alphas, betas, scale, _ = carry
            theta, u = _host_ritz(alphas, betas, arrow, k0, nv)
            beta = float(betas[nv - 1])
            res = np.abs(beta * u[nv - 1])
            norm = max(norm, abs(theta[0]), abs(theta[-1]))
            pos = np.clip(_positions(nv, k, which), 0, nv - 1)
            converged = nv >= k and bool(np.all(res[pos] <= tol * norm))
            if converged or used >= budget or (nv == n and status == lz.BREAKDOWN):
                converged = converged or (nv >= k and nv == n and status == lz.BREAKDOWN)
                break
            # restart: keep the wanted Ritz vectors and about half of the rest
            keep = min(nv - 1, m - 2, k + (m - k) // 2) if status != lz.BREAKDOWN else nv
            keep = min(keep, m - 1)
            idx = _keep_indices(nv, k, which, keep)
            coeffs = np.zeros((m + 1, m + 1))
            coeffs[:keep, :nv] = u[:, idx].T
            coeffs[keep, nv] = 1.0
            q_buf = _combine(q_buf, jnp.asarray(coeffs))
            new_alphas, arrow_np = np.zeros(m), np.zeros(m)
            new_alphas[:keep] = theta[idx]
            if status == lz.BREAKDOWN:
                key, sub = jax.random.split(key)
                q_buf = _fresh_vector(q_buf, sub, keep)
            else:
                arrow_np[:keep] = beta * u[nv - 1, idx]
            alphas, arrow = jnp.asarray(new_alphas, acc), jnp.asarray(arrow_np, acc)
            carry = (jnp.asarray(keep), q_buf, alphas, jnp.zeros((m,), acc), scale, jnp.asarray(0))
            k0 = keep
            restarts += 1
    if nv < k:
        raise RuntimeError(f"only {nv} Ritz pairs after {used} HVPs; raise max_matvecs.")
    order = pos  # descending for largest, ascending otherwise
    coeffs = np.zeros((k, m + 1))
    coeffs[:, :nv] = u[:, order].T
    vectors = (jnp.asarray(coeffs, dtype) @ q_buf).T
    values = jnp.asarray(theta[order], dtype)
    residuals = jnp.asarray(res[order], dtype)
    if true_residuals:
        products = jnp.stack([matvec(vectors[:, i]) for i in range(k)], axis=1)
        used += k
        residuals = jnp.linalg.norm(products - vectors * values[None, :], axis=0)
        converged = bool(jnp.all(residuals <= tol * norm))
    return Eigenpairs(
        values, vectors, residuals, bool(converged), used, False, float(norm), restarts
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
