"""Lanczos tridiagonalisation of a symmetric operator, compiled as one loop.

``lanczos`` builds an orthonormal Krylov basis ``Q`` and the tridiagonal
``T = Q^T A Q`` of a symmetric operator (a ``HessianOperator``, any
``CurvatureOperator``, or a dense symmetric array). The whole iteration runs
inside one jitted ``lax.while_loop``: the operator's matvec factory is a
static argument and its operands (params, data) are traced arguments, so a new
operator for the same loss and shapes reuses the compiled code.

Numerics (see DESIGN.md): full reorthogonalisation by default, two classical
Gram-Schmidt passes against the whole stored basis, so float32 runs do not
produce "ghost" copies of converged eigenvalues; breakdown (an invariant
subspace, beta ~ 0) is detected relative to the size of T and the remaining
steps are masked; T can be accumulated in float64 by argument.

Memory: the basis holds ``(num_steps + 1) * n`` numbers of the operator's
dtype.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools.operators import CurvatureOperator, as_square_matrix

__all__ = ["LanczosResult", "lanczos"]

# loop status codes
RUNNING, BREAKDOWN, NONFINITE, CONVERGED = 0, 1, 2, 3


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LanczosResult:
    """A Lanczos decomposition ``A Q^T = Q^T T + beta_last q_next e_last^T``.

    Attributes:
        alphas: (num_steps_requested,) diagonal of T; zero after the last
            valid step.
        betas: (num_steps_requested,) ``betas[i]`` couples steps i and i+1;
            ``betas[num_steps - 1]`` is the norm of the final residual (zero
            after a breakdown). Zero after the last valid step.
        basis: (num_steps_requested, n) orthonormal Lanczos vectors as *rows*
            (ravel_pytree order); zero rows after a breakdown.
        next_vector: (n,) the normalised final residual (zero after a
            breakdown), which would be the next basis vector.
        num_steps: number of valid steps (< requested after a breakdown).
        num_matvecs: operator products (HVPs) spent.
        breakdown: True when the last residual vanished (an invariant
            subspace: exact Ritz values; always the case when m = n).
    """

    alphas: jax.Array
    betas: jax.Array
    basis: jax.Array
    next_vector: jax.Array
    num_steps: int = dataclasses.field(metadata=dict(static=True))
    num_matvecs: int = dataclasses.field(metadata=dict(static=True))
    breakdown: bool = dataclasses.field(metadata=dict(static=True))

    def tridiagonal(self) -> jax.Array:
        """The (num_steps, num_steps) symmetric tridiagonal matrix T."""
        s = self.num_steps
        off = self.betas[: s - 1]
        return jnp.diag(self.alphas[:s]) + jnp.diag(off, 1) + jnp.diag(off, -1)

    def ritz(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Ritz values (ascending), Ritz vectors (n, num_steps) and residual
        norms ``|beta_last * u_last|`` (exact up to rounding with full
        reorthogonalisation)."""
        theta, u = jnp.linalg.eigh(self.tridiagonal())
        vectors = self.basis[: self.num_steps].T @ u.astype(self.basis.dtype)
        residuals = jnp.abs(self.betas[self.num_steps - 1] * u[-1])
        return theta, vectors, residuals


# --------------------------------------------------------------------------
# Operators as (make_matvec, operands) pairs


def _dense_make(matrix: jax.Array) -> Callable:
    return lambda v: matrix @ v


def resolve_operator(op: Any, linearize: bool = False):
    """``(make_matvec, operands, n, dtype, python_matvec)`` for ``op``.

    ``make_matvec`` is None when the operator has no pure jittable form (e.g.
    a ``batches=`` HessianOperator); ``python_matvec`` is then used step by
    step from Python.
    """
    if isinstance(op, CurvatureOperator):
        jittable = getattr(op, "jittable", None)
        pair = jittable(linearize) if jittable is not None else None
        make, operands = pair if pair is not None else (None, None)
        return make, operands, op.n, jnp.dtype(op.dtype), op._matvec_flat
    matrix = as_square_matrix(op)
    return _dense_make, matrix, matrix.shape[0], matrix.dtype, lambda v: matrix @ v


def check_accumulate_dtype(accumulate_dtype: Any, dtype: Any) -> Any:
    """The dtype in which T's entries are accumulated (default: the operator's)."""
    if accumulate_dtype is None:
        return jnp.dtype(dtype)
    acc = jnp.dtype(accumulate_dtype)
    if not jnp.issubdtype(acc, jnp.floating):
        raise ValueError(f"accumulate_dtype must be a floating dtype, got {acc}.")
    if acc.itemsize > jnp.zeros((), acc).dtype.itemsize:
        raise ValueError(
            f"accumulate_dtype={acc} needs 64-bit JAX: call "
            'jax.config.update("jax_enable_x64", True) in your program first.'
        )
    return acc


def default_breakdown_tol(n: int, dtype: Any) -> float:
    """Relative breakdown threshold: beta <= sqrt(n) * eps * max|T entries|.

    Rounding leaves a residual of about eps * ||A|| * sqrt(n) after an exact
    invariant subspace; a legitimately small beta (a tight cluster) is far
    above it in any dtype that resolves the cluster at all.
    """
    return float(max(10.0, np.sqrt(n)) * np.finfo(np.dtype(dtype)).eps)


def accurate_dot(x: jax.Array, y: jax.Array, acc: Any) -> jax.Array:
    """``x . y`` accumulated in ``acc``; in the inputs' own dtype, summed in
    blocks of 512 first (two-level summation): a plain float32 reduction over
    85k terms costs T's entries ~1e-5 relative accuracy, enough to spoil
    top-10 eigenvalues at the 1e-5 level."""
    if jnp.dtype(acc).itemsize > x.dtype.itemsize:
        return jnp.vdot(x.astype(acc), y.astype(acc))
    prod = (x * y).astype(acc)
    block = 512
    if prod.shape[0] <= block:
        return jnp.sum(prod)
    pad = (-prod.shape[0]) % block
    if pad:
        prod = jnp.concatenate([prod, jnp.zeros((pad,), prod.dtype)])
    return jnp.sum(jnp.sum(prod.reshape(-1, block), axis=1))


# --------------------------------------------------------------------------
# One Lanczos step after the product w = A q_j (shared by the jitted loop and
# the Python fallback)


def _after_matvec(carry, w, *, reorth: bool, acc: Any, breakdown_tol, monitor):
    j, q_buf, alphas, betas, scale, status = carry
    dtype = q_buf.dtype
    q = q_buf[j]
    finite = jnp.all(jnp.isfinite(w))
    w = jnp.where(finite, w, 0).astype(dtype)
    alpha = accurate_dot(q, w, acc)
    if reorth:
        # two classical Gram-Schmidt passes against the whole (zero-padded) basis
        for _ in range(2):
            w = w - (q_buf @ w) @ q_buf
    else:
        prev = jnp.where(j > 0, betas[jnp.maximum(j - 1, 0)], 0).astype(dtype)
        w = w - alpha.astype(dtype) * q - prev * q_buf[jnp.maximum(j - 1, 0)]
    beta = jnp.sqrt(accurate_dot(w, w, acc))
    scale = jnp.maximum(scale, jnp.maximum(jnp.abs(alpha), beta))
    broken = beta <= breakdown_tol * scale
    safe = jnp.where(broken, jnp.ones_like(beta), beta)
    q_next = jnp.where(broken, jnp.zeros_like(w), w / safe.astype(dtype))
    q_buf = q_buf.at[j + 1].set(q_next)
    alphas = alphas.at[j].set(jnp.where(finite, alpha, 0))
    betas = betas.at[j].set(jnp.where(broken | ~finite, 0, beta))
    status = jnp.where(~finite, NONFINITE, jnp.where(broken, BREAKDOWN, RUNNING))
    if monitor is not None:
        done = monitor(alphas, betas, j)
        status = jnp.where((status == RUNNING) & done, CONVERGED, status)
    return j + 1, q_buf, alphas, betas, scale, status


def run_loop(mv, carry, stop, *, reorth, acc, breakdown_tol, monitor=None):
    """Steps ``j = carry.j .. stop - 1`` until breakdown, NaN or convergence.

    Traceable (call inside jit/vmap). ``carry = (j, Q, alphas, betas, scale,
    status)`` with ``Q`` of shape (m + 1, n) whose rows ``0..j`` are filled.
    """
    step = functools.partial(
        _after_matvec, reorth=reorth, acc=acc, breakdown_tol=breakdown_tol, monitor=monitor
    )

    def cond(c):
        return (c[0] < stop) & (c[5] == RUNNING)

    def body(c):
        return step(c, mv(c[1][c[0]]))

    return jax.lax.while_loop(cond, body, carry)


@functools.partial(jax.jit, static_argnames=("make_matvec", "reorth", "acc"))
def _lanczos_jit(make_matvec, operands, carry, stop, breakdown_tol, *, reorth, acc):
    mv = make_matvec(operands)
    return run_loop(mv, carry, stop, reorth=reorth, acc=acc, breakdown_tol=breakdown_tol)


@functools.partial(jax.jit, static_argnames=("reorth", "acc"))
def _step_jit(carry, w, breakdown_tol, *, reorth, acc):
    return _after_matvec(
        carry, w, reorth=reorth, acc=acc, breakdown_tol=breakdown_tol, monitor=None
    )


def python_loop(matvec, carry, stop, *, reorth, acc, breakdown_tol, step_fn=None):
    """The same iteration with the products taken in Python (one jitted
    orthogonalisation per step); for operators without a jittable form."""
    step_fn = step_fn or functools.partial(_step_jit, reorth=reorth, acc=acc)
    while int(carry[0]) < stop and int(carry[5]) == RUNNING:
        w = matvec(carry[1][int(carry[0])])
        carry = step_fn(carry, w, breakdown_tol)
    return carry


def init_carry(v0: jax.Array, m: int, acc: Any):
    """Initial loop state: basis buffer (m + 1, n) with the unit start vector."""
    q_buf = jnp.zeros((m + 1, v0.shape[0]), v0.dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    zeros = jnp.zeros((m,), acc)
    return (jnp.asarray(0), q_buf, zeros, zeros, jnp.zeros((), acc), jnp.asarray(RUNNING))


def start_vector(key: jax.Array | None, v0: Any, op: Any, n: int, dtype: Any) -> jax.Array:
    """Unit start vector: ``v0`` (pytree or flat) or a Gaussian one from ``key``."""
    if v0 is None:
        key = jax.random.PRNGKey(0) if key is None else key
        return jax.random.normal(key, (n,), dtype)
    if isinstance(op, CurvatureOperator) and not (
        isinstance(v0, (jax.Array, np.ndarray)) and np.shape(v0) == (n,)
    ):
        v0 = op.ravel(v0)
    v0 = jnp.asarray(v0, dtype)
    if v0.shape != (n,):
        raise ValueError(f"v0 must have shape ({n},) or be a pytree like params, got {v0.shape}.")
    norm = float(jnp.linalg.norm(v0))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("v0 must be a finite, nonzero vector.")
    return v0


def raise_if_nonfinite(status: Any, step: int, what: str = "Lanczos") -> None:
    if int(status) == NONFINITE:
        raise FloatingPointError(
            f"the operator product (HVP) at {what} step {step} returned NaN or inf; "
            "check the loss and the data at these params."
        )


def check_num_steps(num_steps: Any, n: int) -> int:
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool):
        raise TypeError(f"num_steps must be an integer, got {num_steps!r}.")
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}.")
    if num_steps > n:
        raise ValueError(
            f"num_steps = {num_steps} exceeds the dimension n = {n}: a Krylov basis "
            "has at most n vectors. Use num_steps <= n (or the dense path for small n)."
        )
    return int(num_steps)


def lanczos(
    op: CurvatureOperator | jax.Array | np.ndarray,
    num_steps: int,
    *,
    key: jax.Array | None = None,
    v0: Any = None,
    reorthogonalize: bool = True,
    accumulate_dtype: Any = None,
    linearize: bool = False,
    breakdown_tol: float | None = None,
) -> LanczosResult:
    """Lanczos tridiagonalisation: ``num_steps`` steps from a start vector.

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
        num_steps: number of steps m, 1 <= m <= n.
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

    Cost: ``num_steps`` HVPs (fewer after a breakdown), plus O(m^2 n) flops of
    orthogonalisation. Memory: (m + 1) n numbers for the basis.
    """
    make, operands, n, dtype, matvec = resolve_operator(op, linearize)
    m = check_num_steps(num_steps, n)
    acc = check_accumulate_dtype(accumulate_dtype, dtype)
    bd_tol = default_breakdown_tol(n, dtype) if breakdown_tol is None else float(breakdown_tol)
    carry = init_carry(start_vector(key, v0, op, n, dtype), m, acc)
    if make is not None:
        carry = _lanczos_jit(make, operands, carry, m, bd_tol, reorth=reorthogonalize, acc=acc)
    else:
        carry = python_loop(matvec, carry, m, reorth=reorthogonalize, acc=acc, breakdown_tol=bd_tol)
    steps, q_buf, alphas, betas, _, status = carry
    steps = int(steps)
    raise_if_nonfinite(status, steps - 1)
    broken = int(status) == BREAKDOWN
    return LanczosResult(
        alphas=alphas,
        betas=betas,
        basis=q_buf[:m],
        next_vector=q_buf[m],
        num_steps=steps,
        num_matvecs=steps,
        breakdown=broken,
    )
