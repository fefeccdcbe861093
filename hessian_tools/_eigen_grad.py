"""Derivatives of eigenvalues: ``jax.grad`` and ``jax.jvp`` of ``eigenpairs(...).values``.

For a simple eigenvalue lambda of a symmetric H(theta) with unit eigenvector
v, ``d lambda = v^T (dH) v`` (Hellmann-Feynman; Magnus 1985, "On
differentiating eigenvalues and eigenvectors"): the vector is held fixed.
The eigensolver's loops are not differentiated at all; ``attach`` gives its
values a custom JVP rule that differentiates the Rayleigh quotients
``v_i^T H(operands) v_i`` of the returned vectors with respect to the
operator's operands (params and data). For a Hessian that is one
third-order product per eigenvalue (a JVP of an HVP), about two HVPs'
work, and only when a derivative is asked for: the forward computation is
the solver's alone.

A repeated eigenvalue has no derivative (the eigenvector is not unique).
Where the values are concrete, a derivative raises ``ValueError`` when two
returned values are equal within their error bounds, or when the
completeness check found an eigenvalue the solve did not return (single-
vector Lanczos returns one copy of a repeated eigenvalue, and the check
then finds the other).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools._checks import is_traced
from hessian_tools._operator import LinearMap

__all__ = ["attach"]


def _rayleigh(lm: LinearMap, operands: Any, vectors: Any) -> jax.Array:
    """``v_i^T A(operands) v_i`` for the stacked vectors (leaves ``(k, ...)``)."""
    mv = dataclasses.replace(lm, operands=operands, prepare=None).bind()

    def one(v):
        av = mv(v)
        return sum(
            jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(av), strict=True)
        )

    return jax.vmap(one)(vectors)


def _check_simple(values: Any, bounds: Any, complete: Any) -> None:
    if complete is False:
        raise ValueError(
            "eigenpairs found an eigenvalue beyond the returned ones that its Krylov space had "
            "missed (complete=False), often a second copy of a returned one: a repeated "
            "eigenvalue has no derivative (its eigenvector is not unique). Ask for a larger k "
            "to see the cluster, and differentiate a symmetric function of it (its sum)."
        )
    if is_traced(values, bounds):
        return
    lam, err = np.asarray(values, np.float64), np.asarray(bounds, np.float64)
    for i in range(lam.size):
        for j in range(i + 1, lam.size):
            if abs(lam[i] - lam[j]) <= err[i] + err[j] + 4 * np.finfo(lam.dtype).eps * abs(lam[i]):
                raise ValueError(
                    f"eigenvalues {i} and {j} ({lam[i]:.6g}, {lam[j]:.6g}) are equal within "
                    "their error bounds: a repeated eigenvalue has no derivative (its "
                    "eigenvector is not unique). Differentiate a symmetric function of the "
                    "cluster instead (their sum, or the trace), or tighten rtol if they "
                    "only look equal."
                )


def attach(
    lm: LinearMap, values: jax.Array, vectors: Any, bounds: jax.Array, complete: Any = None
) -> jax.Array:
    """``values`` (from a solver that was not differentiated) made
    differentiable with respect to ``lm.operands``: their JVP is
    ``v_i^T (dA) v_i`` with the ``vectors`` (stacked, in the layout of
    ``lm``) held fixed. ``complete``: the completeness check's outcome.

    Raises:
        ValueError: when differentiated, two values equal within their
            ``bounds``, or ``complete`` False (a repeated eigenvalue).
    """
    vectors = jax.lax.stop_gradient(vectors)

    @jax.custom_jvp
    def values_of(operands, values, vectors, bounds):
        del operands, vectors, bounds
        return values

    @values_of.defjvp
    def values_jvp(primals, tangents):
        operands, values, vectors, bounds = primals
        _check_simple(values, bounds, complete)
        _, d = jax.jvp(lambda ops: _rayleigh(lm, ops, vectors), (operands,), (tangents[0],))
        return values, d.astype(values.dtype)

    values = jax.lax.stop_gradient(values)
    return values_of(lm.operands, values, vectors, jax.lax.stop_gradient(bounds))
