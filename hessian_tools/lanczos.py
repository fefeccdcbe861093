"""Lanczos tridiagonalisation of a symmetric operator, compiled as one loop.

``lanczos`` builds an orthonormal Krylov basis ``Q`` and the tridiagonal
``T = Q^T A Q`` of a symmetric operator (a ``HessianOperator``, any
``CurvatureOperator``, or a dense symmetric array) with the library's one
Lanczos kernel (``hessian_tools._krylov``): full reorthogonalisation by
default (two classical Gram-Schmidt passes against the whole stored basis,
so float32 runs do not produce "ghost" copies of converged eigenvalues),
breakdown detected relative to the size of T with the remaining steps
masked, and T accumulated in float64 by argument. The iteration runs in one
compiled loop (or one compiled step at a time, for products that are slow
inside compiled loops: ``hessian_tools._driver``) whose operands (params,
data) are traced arguments, so a new operator for the same loss and shapes
reuses the compiled code, and ``lanczos`` itself works inside ``jax.jit``.

Memory: the basis holds ``(num_matvecs + 1) * n`` numbers of the
operator's dtype: one array on one device, one per leaf (keeping the
parameters' sharding) on several.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import _krylov
from hessian_tools._checks import check_accumulate_dtype, check_int, is_traced
from hessian_tools._driver import drive
from hessian_tools._operator import as_linear_map
from hessian_tools._tree import Layout

__all__ = ["LanczosResult", "lanczos"]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["alphas", "betas", "tree_basis", "tree_next", "num_steps", "breakdown"],
    meta_fields=["layout"],
)
@dataclasses.dataclass(frozen=True)
class LanczosResult:
    """A Lanczos decomposition ``A Q^T = Q^T T + beta_last q_next e_last^T``.

    Attributes:
        alphas: (m,) diagonal of T (m = steps requested); zero after the last
            valid step.
        betas: (m,) ``betas[i]`` couples steps i and i + 1;
            ``betas[num_steps - 1]`` is the norm of the final residual (zero
            after a breakdown). Zero after the last valid step.
        tree_basis: the m orthonormal Lanczos vectors as a stacked pytree
            like params (leaves ``(m, *leaf.shape)``); zero after a breakdown.
        tree_next: the normalised final residual (zero after a breakdown), a
            pytree like params: the next basis vector.
        num_steps: number of valid steps (< m after a breakdown); an int, or a
            traced scalar under ``jax.jit``.
        breakdown: True when the last residual vanished (an invariant
            subspace: the Ritz values are exact; always the case when m = n).
        layout: structure of a vector (static).
    """

    alphas: jax.Array
    betas: jax.Array
    tree_basis: Any
    tree_next: Any
    num_steps: Any
    breakdown: Any
    layout: Layout

    @property
    def num_matvecs(self) -> Any:
        """Operator products (HVPs) spent: one per valid step."""
        return self.num_steps

    @property
    def basis(self) -> jax.Array:
        """(m, n) the Lanczos vectors as flat rows (``ravel_pytree`` order)."""
        return self.layout.ravel(self.tree_basis)

    @property
    def next_vector(self) -> jax.Array:
        """(n,) the flat next basis vector."""
        return self.layout.ravel(self.tree_next)

    def tridiagonal(self) -> jax.Array:
        """The (num_steps, num_steps) symmetric tridiagonal matrix T (needs a
        concrete ``num_steps``)."""
        s = int(self.num_steps)
        off = self.betas[: s - 1]
        return jnp.diag(self.alphas[:s]) + jnp.diag(off, 1) + jnp.diag(off, -1)

    def ritz(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Ritz values (ascending), Ritz vectors (n, num_steps) and residual
        norms ``|beta_last * u_last|`` (exact up to rounding with full
        reorthogonalisation)."""
        s = int(self.num_steps)
        theta, u = jnp.linalg.eigh(self.tridiagonal())
        vectors = self.basis[:s].T @ u.astype(self.basis.dtype)
        residuals = jnp.abs(self.betas[s - 1] * u[-1])
        return theta, vectors, residuals


def _run(drv, v0, breakdown_tol, *, num_steps, acc, reorthogonalize):
    stacked = jax.tree.map(lambda x: x[None], v0)
    state = drv.call(_krylov.start, drv.lm, stacked, num_columns=num_steps, acc=acc)
    return drv.run(
        state, num_steps, acc=acc, breakdown_tol=breakdown_tol, reorthogonalize=reorthogonalize
    )


def lanczos(
    op: Any,
    num_matvecs: int,
    *,
    key: jax.Array | None = None,
    v0: Any = None,
    reorthogonalize: bool = True,
    accumulate_dtype: Any = None,
    linearize: bool = False,
    breakdown_tol: float | None = None,
) -> LanczosResult:
    """Lanczos tridiagonalisation: ``num_matvecs`` steps from a start vector.

    Builds orthonormal ``q_0, ..., q_{m-1}`` spanning the Krylov space of the
    start vector and the tridiagonal ``T = Q^T A Q`` (Lanczos 1950; Paige
    1971). Full reorthogonalisation (two classical Gram-Schmidt passes against
    every stored vector, Parlett 1998, sec. 13.8) is the default; without it
    float32 runs return ghost copies of converged eigenvalues. Breakdown
    (beta_j <= breakdown_tol * max |alpha, beta| so far: an invariant
    subspace) stops the iteration; the remaining entries are zero and
    ``num_steps`` in the result counts the valid steps.

    Args:
        op: a ``HessianOperator`` (or other ``CurvatureOperator``), or a dense
            symmetric (n, n) array.
        num_matvecs: number of steps m (one product each), 1 <= m <= n.
        key: PRNG key for a Gaussian start vector (default ``PRNGKey(0)``).
        v0: start vector instead of ``key``: flat (n,) or a pytree like params.
        reorthogonalize: full reorthogonalisation (default) or the plain
            three-term recurrence.
        accumulate_dtype: dtype of T's entries (e.g. ``jnp.float64`` for a
            float32 operator; needs ``jax_enable_x64``). Default: the
            operator's dtype.
        linearize: share one forward pass between all HVPs
            (``jax.linearize``): faster per HVP, holds the activations.
        breakdown_tol: relative breakdown threshold (default
            ``max(10, sqrt(n)) * eps``).

    Returns:
        A ``LanczosResult``; ``.ritz()`` gives Ritz values, vectors and
        residual norms.

    Cost: ``num_matvecs`` HVPs, plus O(m^2 n) flops of orthogonalisation.
    Memory: (m + 1) n numbers for the basis.

    Raises:
        ValueError: m out of range, a bad ``v0`` or ``accumulate_dtype``.
        FloatingPointError: a product returned NaN or inf (names the step).
    """
    lm = as_linear_map(op, linearize=linearize)
    n = int(lm.dim)  # a block's size (its map acts on all the variables)
    m = check_int("num_matvecs", num_matvecs, low=1)
    if m > n:
        raise ValueError(
            f"num_matvecs must be <= n = {n} (a Krylov basis has at most n vectors); got {m}. "
            'Use the dense path for small n (eigenpairs(..., method="dense")).'
        )
    acc = check_accumulate_dtype(accumulate_dtype, lm.dtype)
    bd_tol = _krylov.default_breakdown_tol(n, lm.dtype) if breakdown_tol is None else breakdown_tol
    to_space, from_space = getattr(op, "to_space", None), getattr(op, "from_space", None)
    if v0 is not None and to_space is not None:  # a block: its map acts on all the variables
        v0 = to_space(v0)
    v0 = _krylov.start_vector(lm, key, v0)
    state = drive(_run, lm, v0, bd_tol, num_steps=m, acc=acc, reorthogonalize=bool(reorthogonalize))
    steps = state.num_columns
    _krylov.raise_if_nonfinite(state.status, steps - 1 if is_traced(steps) else int(steps) - 1)
    idx = np.arange(m)
    alphas = state.coeffs[idx, idx]
    betas = state.coeffs[idx + 1, idx]
    rows = _krylov.as_vectors(state.basis, lm.layout)
    basis = jax.tree.map(lambda q: q[:m], rows)
    nxt = jax.tree.map(lambda q: q[m], rows)
    broken = state.status == _krylov.BREAKDOWN
    if not is_traced(steps):
        steps, broken = int(steps), bool(broken)
    if from_space is not None and lm.mask is not None:  # back to the block's leaves
        basis, nxt = from_space(basis), from_space(jax.tree.map(lambda x: x[None], nxt))
        return LanczosResult(
            alphas, betas, basis, jax.tree.map(lambda x: x[0], nxt), steps, broken, op.layout
        )
    return LanczosResult(alphas, betas, basis, nxt, steps, broken, lm.layout)
