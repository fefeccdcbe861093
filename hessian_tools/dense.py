"""The full Hessian as a flat (n, n) matrix, for problems small enough to store it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax

from hessian_tools._hessian import Loss, PyTree
from hessian_tools.operators import HessianOperator

__all__ = ["hessian"]


def hessian(
    f: Loss,
    params: PyTree,
    *args: Any,
    batches: Iterable | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
) -> jax.Array:
    """Dense Hessian of ``f(params, *args)`` as an (n, n) array.

    Rows and columns follow ``jax.flatten_util.ravel_pytree(params)`` order.
    Built from n HVPs against basis vectors, vectorised ``chunk_size``
    columns at a time into a host buffer, so peak memory is about twice the
    n^2 result plus one chunk of HVPs: n = 20,000 in float32 makes a 1.6 GB
    result with a 3.3 GB peak (float64: 3.2 GB and 6.4 GB). The result is
    symmetrised, ``(H + H.T) / 2``.

    Args:
        f: scalar loss ``f(params, *args)``.
        params: any pytree of floating arrays.
        *args: data for ``f``.
        batches: as in ``HessianOperator``: the Hessian of the sample-weighted
            mean loss over the batches.
        chunk_size: basis vectors per vectorised HVP call (default: a chunk
            of about 64 MB of vectors, at most 256).
        progress: show a progress bar of HVPs (n in all).

    Returns:
        The (n, n) Hessian, in the params' dtype.

    Cost: n HVPs (per batch).

    Raises:
        ValueError: a non-scalar loss, or bad batches.
        FloatingPointError: the loss, gradient or Hessian is not finite.
    """
    op = HessianOperator(f, params, *args, batches=batches)
    op.chunk_size = chunk_size
    return op.to_dense(progress=progress)
