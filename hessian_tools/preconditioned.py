"""Preconditioned curvature: the operator ``P^-1/2 H P^-1/2``.

An adaptive optimiser with a diagonal preconditioner P (Adam's
``sqrt(v_hat) + eps``, RMSProp, Adagrad) steps along ``-eta P^-1 g``, so the
curvature that governs its stability is that of ``P^-1 H``, not of H
(Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability":
under full-batch Adam, lambda_1(P^-1 H) settles near ``(2 + 2 beta_1) /
((1 - beta_1) eta)``, 38 / eta for beta_1 = 0.9). ``P^-1 H`` is not
symmetric, but it is similar to the symmetric ``P^-1/2 H P^-1/2``: the two
have the same eigenvalues, and an eigenvector u of the symmetric one gives
``P^-1/2 u`` of ``P^-1 H``. ``PreconditionedOperator`` is that symmetric
operator, so every algorithm of the library (``eigenpairs`` with its
certified bounds, ``trace``, ``diagonal``, ``spectral_density``,
``track_spectrum``) applies to it unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools._checks import is_traced
from hessian_tools._hessian import PyTree, as_vector
from hessian_tools._operator import LinearMap
from hessian_tools.operators import CurvatureOperator

__all__ = ["PreconditionedOperator", "adam_preconditioner"]


def _times(d: PyTree, v: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: (a * b).astype(b.dtype), d, v)


@functools.cache
def _scaled(matvec: Callable, prepare: Callable | None) -> tuple[Callable, Callable | None]:
    """``(matvec, prepare)`` of ``D A D`` from those of A, with D a diagonal
    held as a pytree (the last operand); one object per inner product, so
    compiled solvers are reused."""

    def scaled_matvec(v, inner_operands, d):
        return _times(d, matvec(_times(d, v), *inner_operands))

    if prepare is None:
        return scaled_matvec, None

    def scaled_prepare(inner_operands, d):
        inner = prepare(*inner_operands)
        if inner is None:
            return None
        return lambda v: _times(d, inner(_times(d, v)))

    return scaled_matvec, scaled_prepare


class PreconditionedOperator(CurvatureOperator):
    """The symmetric operator ``P^-1/2 A P^-1/2`` for a diagonal P > 0.

    Its eigenvalues are those of ``P^-1 A`` (the curvature an optimiser with
    preconditioner P sees); for an eigenvector u of this operator,
    ``P^-1/2 u`` is one of ``P^-1 A``. Products cost one product of A (one
    HVP for a Hessian) and two elementwise scalings.

    Args:
        op: the curvature operator A (``HessianOperator``, ``GGNOperator``,
            ...); its variables, layout and data are shared.
        p: the diagonal of P, a pytree like the variables of ``op`` (or
            shaped like the whole of params, or a flat (n,) array), every
            entry positive and finite. For Adam, ``sqrt(v_hat) + eps``
            (``adam_preconditioner``).

    Example:
        >>> op = ht.HessianOperator(loss, params, x, y)
        >>> p = ht.adam_preconditioner(opt_state, params)  # sqrt(v_hat) + eps
        >>> ht.eigenpairs(ht.PreconditionedOperator(op, p), 1).values  # lambda_1(P^-1 H)

    Raises:
        TypeError: ``op`` is not a curvature operator.
        ValueError: ``p`` does not match the variables (names the mismatch),
            or has an entry that is not positive and finite (names the leaf).
    """

    def __init__(self, op: CurvatureOperator, p: Any):
        if not isinstance(op, CurvatureOperator):
            raise TypeError(
                "op must be a curvature operator (HessianOperator, GGNOperator, ...); got "
                f"{type(op).__name__}."
            )
        self.op = op
        # the inner operator's variables: same layout, same vectors
        self.params, self.partition = op.params, op.partition
        self.variables, self.fixed, self.layout = op.variables, op.fixed, op.layout
        self.shape, self.dtype = op.shape, op.dtype
        self.chunk_size, self.batching, self.loop = op.chunk_size, op.batching, op.loop
        p = as_vector(op.partition, op.layout, p, "p (the preconditioner's diagonal)")
        _check_positive(p, op.layout)
        self.p = p
        self.scale = jax.tree.map(lambda x: 1 / jnp.sqrt(x), p)  # P^-1/2

    def linear_map(self, linearize: bool = True) -> LinearMap:
        # a block's map in its own variables, where p and the scaling live
        inner = getattr(self.op, "compact_linear_map", self.op.linear_map)(linearize)
        matvec, prepare = _scaled(inner.matvec, inner.prepare)
        return LinearMap(
            matvec,
            (inner.operands, self.scale),
            inner.layout,
            inner.batching,
            prepare,
            inner.loop,
            inner.template,
        )

    def eigenvector_of_product(self, u: Any) -> PyTree:
        """``P^-1/2 u`` for an eigenvector u of this operator: the
        corresponding (unnormalised) eigenvector of ``P^-1 A``, as a pytree
        of the variables."""
        return _times(self.scale, self.vector(u, name="u"))


def _check_positive(p: PyTree, layout: Any) -> None:
    if is_traced(p):
        return
    for path, leaf in jax.tree_util.tree_leaves_with_path(p):
        x = np.asarray(leaf, np.float64)
        if x.size and not (np.all(np.isfinite(x)) and np.min(x) > 0):
            bad = x[~(np.isfinite(x) & (x > 0))].ravel()[0]
            raise ValueError(
                f"p (the preconditioner's diagonal) must be positive and finite; leaf "
                f"{jax.tree_util.keystr(path) or '<root>'} holds {bad!r}. For Adam add eps "
                "to sqrt(v_hat) (adam_preconditioner does)."
            )


def adam_preconditioner(
    state: Any, params: Any = None, *, b2: float = 0.999, eps: float = 1e-8
) -> PyTree:
    """Adam's diagonal preconditioner ``sqrt(v_hat) + eps`` from optax's state.

    ``v_hat = nu / (1 - b2^t)`` is the bias-corrected second moment after t
    steps (Kingma & Ba 2015). Pass the same ``b2`` and ``eps`` as the
    optimiser (optax's defaults here).

    Args:
        state: ``optax.adam``'s state (the tuple ``opt.init`` returns, or
            its ``ScaleByAdamState``): anything holding ``count`` and
            ``nu``, found in a nested tuple.
        params: unused; kept so that a call reads like the optimiser's
            ``update(grads, state, params)``.
        b2: Adam's second-moment decay.
        eps: Adam's eps (added after the square root, as optax does).

    Returns:
        A pytree like ``nu`` (like params): the diagonal p of P.

    Raises:
        ValueError: no ``count``/``nu`` in ``state``, or a state at step 0.
    """
    del params
    found = _find_adam_state(state)
    if found is None:
        raise ValueError(
            "state must be optax.adam's state (holding count and nu); got "
            f"{type(state).__name__}. Pass opt_state, the value opt.init(params) returned "
            "and update() keeps returning."
        )
    count = int(np.asarray(found.count))
    if count < 1:
        raise ValueError("the Adam state is at step 0 (nu is zero): take a step first.")
    correction = 1 - b2**count
    return jax.tree.map(lambda nu: jnp.sqrt(nu / correction) + eps, found.nu)


def _find_adam_state(state: Any) -> Any:
    if hasattr(state, "count") and hasattr(state, "nu"):
        return state
    if isinstance(state, (tuple, list)):
        for item in state:
            found = _find_adam_state(item)
            if found is not None:
                return found
    return None
