"""Curvature metrics for landscape grids: the extreme Hessian eigenvalues at
every point of a slice.

A metric is a function ``(params, *args) -> scalar`` that ``slice_1d`` and
``slice_2d`` evaluate, vectorised, at every grid point. The one here runs a
fixed number of steps of the library's Lanczos kernel, so that it compiles to
one static program and vmaps over grid points. Public through
``hessian_tools.landscape``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import jax

from hessian_tools import _krylov
from hessian_tools._checks import as_key, check_choice, check_int
from hessian_tools._data import Data
from hessian_tools._hessian import hessian_products
from hessian_tools._operator import LinearMap
from hessian_tools._params import Partition
from hessian_tools._tree import Layout

__all__ = ["extreme_eigenvalue_metric"]


def extreme_eigenvalue_metric(
    f: Callable[..., jax.Array],
    which: Literal["largest", "smallest"] = "largest",
    *,
    num_matvecs: int = 20,
    key: Any = 0,
) -> Callable[..., jax.Array]:
    """A metric ``(params, *args) -> lambda`` giving the largest (algebraic)
    or smallest Hessian eigenvalue of ``f`` at each grid point.

    Use as ``slice_2d(f, params, dirs, xs, ys, *args, metrics={"lmax":
    extreme_eigenvalue_metric(f), "lmin": extreme_eigenvalue_metric(f,
    "smallest")})`` to map where the landscape is convex (Li et al. 2018,
    Fig. 7, plot |lmin / lmax|).

    Args:
        f: the loss ``f(params, *args) -> scalar``.
        which: "largest" or "smallest" (most negative).
        num_matvecs: Lanczos steps (= HVPs) per grid point (capped at n);
            more steps, more accuracy. Extreme Ritz values converge first; with
            batches= the metric is the batch-weighted mean of per-batch
            eigenvalues, not the eigenvalue of the mean Hessian.
        key: PRNG key (a typed key, a uint32 key or an int) of the fixed
            starting vector, the same at every point.

    Returns:
        A function usable in ``metrics=``. Cost: ``num_matvecs`` HVPs and
        ``num_matvecs + 1`` stored vectors of size n per grid point (vmapped
        over a chunk: choose ``chunk_size`` accordingly).

    Raises:
        ValueError: a bad ``which`` or budget.
    """
    check_choice("which", which, ("largest", "smallest"))
    num_matvecs = check_int("num_matvecs", num_matvecs, low=1)
    return functools.partial(_extreme_eigenvalue, f, which, num_matvecs, as_key(key))


def _extreme_eigenvalue(f, which, num_matvecs, key, params: Any, *args: Any) -> jax.Array:
    partition = Partition.of(params)
    variables, fixed = partition.split(params)
    matvec, _ = hessian_products(f, partition)
    layout = Layout.of(variables)
    lm = LinearMap(matvec, (variables, fixed, Data.create(tuple(args), None)), layout, "map")
    m = min(num_matvecs, layout.n)
    v0 = layout.unravel(jax.random.normal(key, (layout.n,), layout.dtype))
    state = _krylov.start(lm, jax.tree.map(lambda x: x[None], v0), m, layout.dtype)
    state = _krylov.run(
        state,
        _krylov.flat_product(lm),
        m,
        batching="map",
        acc=layout.dtype,
        breakdown_tol=_krylov.default_breakdown_tol(layout.n, layout.dtype),
    )
    theta = _krylov.ritz(state)[0]
    return theta[state.num_columns - 1] if which == "largest" else theta[0]
