"""Blocks of the Hessian: the per-layer spectrum papers draw.

``block_spectra`` computes, for each block of parameters (by default each
layer: the leaves that share a parent in the params pytree), the top
eigenvalues of the Hessian block with their certified bounds and its trace
with a standard error, holding the other parameters fixed
(``HessianOperator(..., wrt=...)``). The blocks are the diagonal blocks of
the full Hessian, so their traces add up to the full trace; their top
eigenvalues bound the full one from below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax

from hessian_tools._checks import as_key
from hessian_tools._params import Partition
from hessian_tools.eigen import eigenpairs
from hessian_tools.estimators import Estimate, trace
from hessian_tools.operators import HessianOperator

__all__ = ["BlockSpectrum", "block_spectra", "default_blocks"]


@dataclasses.dataclass(frozen=True)
class BlockSpectrum:
    """The spectrum of one diagonal block of the Hessian.

    Attributes:
        name: the block's name (its key path, or the name given).
        n: number of parameters in the block.
        values: (k,) its largest eigenvalues, descending.
        error_bounds: (k,) their certified error bounds.
        trace: an ``Estimate`` of its trace (exact when the budget covers n).
        num_matvecs: HVPs spent on the block.
    """

    name: str
    n: int
    values: jax.Array
    error_bounds: jax.Array
    trace: Estimate
    num_matvecs: int


def _parent(path: tuple) -> tuple:
    """The path of a leaf's layer: drop its own name (and NNX's ``.value``)."""
    keys = list(path)
    if keys and getattr(keys[-1], "name", None) == "value":
        keys.pop()
    return tuple(keys[:-1])


def default_blocks(params: Any) -> dict[str, Callable[[str], bool]]:
    """One block per layer: the variables that share a parent key path (a
    dict's sub-dict, a list entry, a module's attribute); one block per
    leaf when all share one parent."""
    partition = Partition.of(params)
    variables = partition.split(params)[0]
    paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(variables)]
    groups: dict[str, list[str]] = {}
    for p in paths:
        groups.setdefault(jax.tree_util.keystr(_parent(p)), []).append(jax.tree_util.keystr(p))
    if len(groups) == 1:
        groups = {jax.tree_util.keystr(p): [jax.tree_util.keystr(p)] for p in paths}
    return {
        name: (lambda path, keep=frozenset(members): path in keep)
        for name, members in groups.items()
    }


def block_spectra(
    f: Callable[..., jax.Array],
    params: Any,
    *args: Any,
    blocks: Mapping[str, Any] | None = None,
    k: int = 1,
    trace_matvecs: int = 100,
    key: jax.Array | None = None,
    rtol: float | None = None,
    batches: Iterable | None = None,
) -> list[BlockSpectrum]:
    """Top eigenvalues and trace of each diagonal block of the Hessian.

    Args:
        f: the loss ``f(params, *args)``.
        params: the point (any pytree; its floating-point arrays are the
            variables).
        *args: data for ``f``.
        blocks: name -> ``wrt`` selection (a boolean pytree or prefix, or a
            predicate on key paths), one per block; default
            ``default_blocks(params)``, one per layer.
        k: eigenvalues per block (fewer for a block smaller than k + 1).
        trace_matvecs: HVP budget of each block's trace estimate (exact when
            it is at least the block's size).
        key: PRNG key for the estimators and start vectors.
        rtol: accuracy of the eigenvalues (as in ``eigenpairs``).
        batches: as in ``HessianOperator``.

    Returns:
        A list of ``BlockSpectrum``, in the order of ``blocks``.

    Cost: per block, the eigenpairs' HVPs (the dense path for small blocks)
    plus ``min(trace_matvecs, n_block)``.

    Raises:
        ValueError: a block that selects no variables.
    """
    blocks = default_blocks(params) if blocks is None else dict(blocks)
    key = as_key(key)
    out = []
    for i, (name, wrt) in enumerate(blocks.items()):
        k_eig, k_trace = jax.random.split(jax.random.fold_in(key, i))
        op = HessianOperator(f, params, *args, batches=batches, wrt=wrt)
        ep = eigenpairs(op, min(k, op.n), key=k_eig, rtol=rtol)
        est = trace(op, key=k_trace, num_matvecs=max(4, min(trace_matvecs, op.n)))
        spent = int(ep.num_matvecs) + est.num_matvecs
        out.append(BlockSpectrum(name, op.n, ep.values, ep.error_bounds, est, spent))
    return out
