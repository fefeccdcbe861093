"""Leaving a saddle: the most negative curvature direction and the
saddle-free Newton step.

At a saddle the gradient vanishes, so first-order methods stall there; the
eigenvector of the most negative Hessian eigenvalue is the direction along
which the loss falls fastest to second order. The saddle-free Newton step
(Dauphin et al. 2014, "Identifying and attacking the saddle point problem in
high-dimensional non-convex optimization") rescales the gradient by
``|H|^-1``, the Hessian with its eigenvalues replaced by their absolute
values: a Newton step where curvature is positive and a step *away* from
the saddle where it is negative.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools._checks import check_choice, check_int
from hessian_tools._hessian import Loss, PyTree
from hessian_tools._operator import dense_is_cheaper
from hessian_tools._tree import basis_combine
from hessian_tools.eigen import eigenpairs
from hessian_tools.lanczos import lanczos
from hessian_tools.operators import HessianOperator

__all__ = ["EscapeDirection", "escape_direction", "saddle_free_newton_step"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EscapeDirection:
    """The direction of most negative curvature at a point.

    Attributes:
        direction: unit vector (pytree like x), signed so that it does not
            ascend: ``<grad f, direction> <= 0``.
        curvature: its Rayleigh quotient, the smallest Hessian eigenvalue.
            Negative at a saddle; ``>= 0`` means there is no direction of
            negative curvature to escape along.
        slope: ``<grad f, direction>`` (0 at an exact critical point).
        residual: ``||H d - curvature d||`` of the eigenpair.
        num_matvecs: HVPs spent.
    """

    direction: PyTree
    curvature: jax.Array
    slope: jax.Array
    residual: jax.Array
    num_matvecs: int = dataclasses.field(metadata=dict(static=True))

    def predicted_change(self, step: float) -> jax.Array:
        """Second-order model of ``f(x + step * direction) - f(x)``."""
        return step * self.slope + 0.5 * step**2 * self.curvature


def escape_direction(
    f: Loss,
    x: PyTree,
    *args: Any,
    batches: Iterable | None = None,
    key: jax.Array | None = None,
    rtol: float | None = None,
    max_matvecs: int | None = None,
) -> EscapeDirection:
    """Direction of most negative curvature of ``f`` at ``x``.

    The eigenvector of the algebraically smallest Hessian eigenvalue, from
    ``eigenpairs(op, 1, which="smallest")``; its sign is chosen so that the
    first-order change along it is not positive.

    Args:
        f: scalar loss ``f(x, *args)``.
        x: the point (pytree).
        *args: data for ``f``.
        batches: as in ``HessianOperator``.
        key: PRNG key for the Lanczos start vector.
        rtol: relative accuracy of the curvature (as in ``eigenpairs``).
        max_matvecs: HVP budget of the eigensolver.

    Returns:
        An ``EscapeDirection``.

    Cost: one gradient plus the eigenpair's HVPs (n for small problems,
    formed densely; Lanczos products for large ones).
    """
    op = HessianOperator(f, x, *args, batches=batches)
    _, grad = op.value_and_grad()
    g = op.ravel(grad)
    ep = eigenpairs(op, 1, which="smallest", key=key, rtol=rtol, max_matvecs=max_matvecs)
    d = ep.vectors[:, 0]
    slope = jnp.vdot(g, d)
    d, slope = jnp.where(slope > 0, -d, d), -jnp.abs(slope)
    return EscapeDirection(op.unravel(d), ep.values[0], slope, ep.residuals[0], ep.num_matvecs)


def saddle_free_newton_step(
    f: Loss,
    x: PyTree,
    *args: Any,
    damping: float | None = None,
    batches: Iterable | None = None,
    method: str = "auto",
    num_matvecs: int = 50,
) -> PyTree:
    """The saddle-free Newton step ``-|H|^-1 grad f`` (Dauphin et al. 2014).

    With ``H = V diag(lambda) V^T``, ``|H| = V diag(max(|lambda|, damping))
    V^T``. Along positive curvature this is the Newton step; along negative
    curvature it moves downhill instead of towards the saddle. ``damping``
    (default ``sqrt(eps) * ||H||``) keeps near-zero eigenvalues from blowing
    the step up; Dauphin et al. damp the same way.

    ``method="lanczos"`` takes the step in the Krylov subspace of H started
    at the gradient, as in Dauphin et al. (section 7): ``num_matvecs``
    Lanczos vectors Q, ``T = Q H Q^T``, and ``-Q^T |T|^-1 Q g`` (exact once
    ``num_matvecs >= n``). ``"dense"`` uses the whole Hessian (n HVPs);
    ``"auto"`` picks it only when n is at most ``num_matvecs``.

    Args:
        f: scalar loss ``f(x, *args)``.
        x: the point (pytree).
        *args: data for ``f``.
        damping: floor on ``|lambda|``.
        batches: as in ``HessianOperator``.
        method: "dense", "lanczos" or "auto".
        num_matvecs: Krylov dimension (HVPs) for ``method="lanczos"``.

    Returns:
        The step, a pytree like ``x`` (add it to x to take it).

    Cost: one gradient plus n HVPs (dense) or ``num_matvecs`` HVPs (lanczos).
    """
    method = check_choice("method", method, ("auto", "dense", "lanczos"))
    num_matvecs = check_int("num_matvecs", num_matvecs, low=1)
    op = HessianOperator(f, x, *args, batches=batches)
    _, grad = op.value_and_grad()
    g = op.ravel(grad)
    if method == "dense" or (
        method == "auto" and dense_is_cheaper(op.n, num_matvecs, explicit=False)
    ):
        w, v = jnp.linalg.eigh(op.to_dense())
        coeffs = v.T @ g
        basis = None
    else:
        if not bool(jnp.any(g != 0)):
            return op.unravel(jnp.zeros_like(g))  # at a critical point the step is 0
        result = lanczos(op, min(num_matvecs, op.n), v0=grad)
        steps = result.num_steps
        basis = jax.tree.map(lambda q: q[:steps], result.tree_basis)
        w, v = jnp.linalg.eigh(result.tridiagonal().astype(g.dtype))
        coeffs = v.T @ (result.basis[:steps] @ g)
    if damping is None:
        damping = float(np.sqrt(np.finfo(np.dtype(op.dtype)).eps)) * float(jnp.max(jnp.abs(w)))
    scale = jnp.maximum(jnp.abs(w), jnp.asarray(damping, w.dtype))
    scale = jnp.where(scale > 0, scale, 1)  # H = 0 and damping 0: no curvature to use
    step = -(v @ (coeffs / scale))
    return op.unravel(step) if basis is None else basis_combine(step, basis)
