"""Extreme eigenpairs of a symmetric matrix or curvature operator."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools.operators import CurvatureOperator

__all__ = ["Eigenpairs", "eigenpairs"]

Which = Literal["largest", "smallest", "both"]


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
    """

    values: jax.Array
    vectors: jax.Array
    residuals: jax.Array
    converged: bool = dataclasses.field(metadata=dict(static=True))
    num_matvecs: int = dataclasses.field(metadata=dict(static=True))
    exact: bool = dataclasses.field(default=True, metadata=dict(static=True))


def default_tol(dtype: Any) -> float:
    """Default relative residual tolerance: sqrt(eps) of the dtype."""
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
    residuals = jnp.linalg.norm(matrix @ vectors - vectors * values, axis=0)
    tol = default_tol(matrix.dtype) if tol is None else tol
    scale = jnp.max(jnp.abs(w))
    converged = bool(jnp.all(residuals <= tol * scale + jnp.finfo(matrix.dtype).tiny))
    return Eigenpairs(values, vectors, residuals, converged, num_matvecs, True)


def eigenpairs(
    a: CurvatureOperator | jax.Array | np.ndarray,
    k: int,
    *,
    which: Which = "largest",
    key: jax.Array | None = None,
    tol: float | None = None,
    max_matvecs: int | None = None,
) -> Eigenpairs:
    """The k algebraically largest / smallest eigenpairs of a symmetric operator.

    "largest" means algebraically largest (most positive), never largest in
    modulus, so negative eigenvalues are never mixed into a top-k list;
    "smallest" gives the most negative ones (the negative curvature that
    saddle analysis needs); "both" gives ceil(k/2) from the top and
    floor(k/2) from the bottom, like scipy's ``eigsh(which="BE")``.

    Args:
        a: a symmetric (n, n) array, or a ``CurvatureOperator`` such as
            ``HessianOperator``.
        k: number of eigenpairs, 1 <= k <= n.
        which: "largest" (values descending), "smallest" (ascending) or
            "both" (ascending).
        key: PRNG key for iterative methods' starting vectors.
        tol: relative residual tolerance, ``||A v - lambda v|| <= tol ||A||``
            (default sqrt(eps) of the dtype).
        max_matvecs: budget of operator products for iterative methods.

    Returns:
        An ``Eigenpairs`` result.

    Cost: a dense matrix costs no HVPs; an operator is formed densely with
    n HVPs (``op.to_dense()``) and decomposed exactly.
    """
    _check_which(which)
    del key, max_matvecs  # used by the iterative path
    if isinstance(a, CurvatureOperator):
        k = _check_k(k, a.n)
        return dense_eigenpairs(a.to_dense(), k, which, tol, a.n)
    matrix = jnp.asarray(a)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square (n, n) matrix, got shape {matrix.shape}.")
    if not jnp.issubdtype(matrix.dtype, jnp.floating):
        matrix = matrix.astype(jnp.result_type(float))
    k = _check_k(k, matrix.shape[0])
    return dense_eigenpairs(matrix, k, which, tol, 0)
