"""Blocks of the Hessian: the per-layer spectrum papers draw.

``block_spectra`` computes, for each block of parameters (by default each
layer: the leaves that share a parent in the params pytree; or blocks named
by key-path patterns such as the query, key, value and output projections of
attention), the top eigenvalues of the Hessian block with their certified
bounds, its trace with a standard error and, on request, its spectral
density, holding the other parameters fixed (``HessianOperator(...,
wrt=...)``). The blocks are the diagonal blocks of the full Hessian, so
their traces add up to the full trace; their top eigenvalues bound the full
one from below. ``block_heterogeneity`` measures how different the blocks'
spectra are: the Jensen-Shannon distances of their densities (Zhang et al.
2024, "Why Transformers Need Adam: A Hessian Perspective", who find the
blocks of a transformer far more heterogeneous than those of a CNN).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

from hessian_tools._checks import as_key
from hessian_tools._compile import repeated
from hessian_tools._params import Partition
from hessian_tools.density import SpectralDensity, spectral_density
from hessian_tools.eigen import eigenpairs
from hessian_tools.estimators import Estimate, prefetch_trace, trace
from hessian_tools.operators import HessianOperator

__all__ = ["BlockSpectrum", "block_heterogeneity", "block_spectra", "default_blocks"]


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
        density: its ``SpectralDensity`` (``block_spectra(density=True)``),
            else None.
    """

    name: str
    n: int
    values: jax.Array
    error_bounds: jax.Array
    trace: Estimate
    num_matvecs: int
    density: SpectralDensity | None = None


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
    density: bool = False,
    density_matvecs: int = 256,
    key: Any = None,
    rtol: float | None = None,
    method: str = "auto",
    batches: Iterable | None = None,
) -> list[BlockSpectrum]:
    """Top eigenvalues, trace and (optionally) spectral density of each
    diagonal block of the Hessian.

    Args:
        f: the loss ``f(params, *args)``.
        params: the point (any pytree; its floating-point arrays are the
            variables).
        *args: data for ``f``.
        blocks: name -> selection, one per block: a key-path pattern (a
            regular expression searched in each leaf's key path as
            ``jax.tree_util.keystr`` writes it, e.g. ``"query"``,
            ``"attn.*out"``, ``"mlp|dense"``), or a ``wrt`` (a boolean
            pytree or prefix, or a predicate on key paths). Default
            ``default_blocks(params)``, one per layer.
        k: eigenvalues per block (fewer for a block smaller than k + 1).
        trace_matvecs: HVP budget of each block's trace estimate (exact when
            it is at least the block's size).
        density: also estimate each block's spectral density (SLQ, 4
            probes; ``BlockSpectrum.density``), for ``block_heterogeneity``
            and ``plotting.plot_block_densities``.
        density_matvecs: HVP budget of each block's density (at most 4n).
        key: PRNG key for the estimators and start vectors (an int, a
            typed or a uint32 key; default 0).
        rtol: accuracy of the eigenvalues (as in ``eigenpairs``).
        method: ``eigenpairs``' method for each block: ``"auto"`` (the dense
            path where its predicted time is lower: small blocks; each new
            size of a dense block compiles its own ``eigh``), ``"dense"`` or
            ``"lanczos"`` (one compiled solver for every block).
        batches: as in ``HessianOperator``.

    Returns:
        A list of ``BlockSpectrum``, in the order of ``blocks``.

    Cost: one gradient, then per block the eigenpairs' HVPs (the dense
    path for small blocks) plus ``min(trace_matvecs, n_block)``, plus
    ``density_matvecs`` with ``density``. A block is data, not a new
    program: each block's operator is the Hessian of all the variables
    with the block's mask (``HessianOperator.block``), so the solvers
    compile once for the loss and shapes, whatever the number of blocks
    (small blocks on the dense path compile an ``eigh`` per distinct size).
    Each masked HVP costs a full HVP (the whole gradient's tangent), not
    the cheaper product in the block's own leaves. On CPU the trace's
    program compiles in a background thread while the eigensolver's
    compiles and every block's eigenpairs run (the eigenpairs first, then
    the traces): a 12-block study of a one-layer NNX transformer took
    9.8-10.4 s cold, 17.7-20.9 s before this, the one-program trace and the
    solvers' optimisation level 1 (``benchmarks/blocks.py study``;
    ``benchmarks/RESULTS.md``).

    Raises:
        ValueError: a block that selects no variables (the message lists the
            key paths a pattern can match).
    """
    blocks = default_blocks(params) if blocks is None else dict(blocks)
    key = as_key(key)
    # one operator of all the variables (checked once); each block is its
    # mask, data for the same compiled solvers (HessianOperator.block)
    everything = HessianOperator(f, params, *args, batches=batches, wrt=lambda path: True)
    ops = {name: everything.block(wrt) for name, wrt in blocks.items()}
    keys = [jax.random.split(jax.random.fold_in(key, i), 3) for i in range(len(ops))]
    budgets = [max(4, min(trace_matvecs, op.n)) for op in ops.values()]
    # the same programs for every block: their optimised tier at once
    with repeated():
        # the trace's program compiles in the background (another core)
        # while the eigensolver's compiles and every block's eigenpairs run
        sizes = zip(ops.values(), keys, budgets, strict=True)
        estimated = [(op, ks[1], m) for op, ks, m in sizes if m < op.n]
        if estimated:
            op, k_trace, m = estimated[0]
            prefetch_trace(op, key=k_trace, num_matvecs=m)
        tops = [
            eigenpairs(op, min(k, op.n), key=ks[0], rtol=rtol, method=method)
            for op, ks in zip(ops.values(), keys, strict=True)
        ]
        out = []
        for (name, op), ep, (_, k_trace, k_density), m in zip(
            ops.items(), tops, keys, budgets, strict=True
        ):
            est = trace(op, key=k_trace, num_matvecs=m)
            spent = int(ep.num_matvecs) + est.num_matvecs
            dens = None
            if density:
                steps = max(1, min(density_matvecs // 4, op.n))
                dens = spectral_density(op, key=k_density, num_steps=steps, num_probes=4)
                spent += int(dens.num_matvecs)
            out.append(BlockSpectrum(name, op.n, ep.values, ep.error_bounds, est, spent, dens))
    return out


def block_heterogeneity(
    spectra: list[BlockSpectrum], *, grid_size: int = 1024
) -> tuple[float, np.ndarray]:
    """How different the blocks' spectra are: the mean pairwise
    Jensen-Shannon distance of their densities (Zhang et al. 2024, "Why
    Transformers Need Adam: A Hessian Perspective", sec. 3).

    Each block's density is its SLQ quadrature (nodes and weights) smoothed
    by one Gaussian width shared by all blocks (1% of the pooled spectral
    width) on one grid spanning every block's nodes, then normalised. The
    distance is the square root of the Jensen-Shannon divergence in bits:
    0 for equal densities, 1 for disjoint ones. The eigenvalues are
    compared as they are, not rescaled, on a linear grid: blocks whose
    spectra lie within one smoothing width of 0 (small curvature beside a
    block with large eigenvalues) become one spike at 0 and compare as
    nearly equal, so differences in scale below 1% of the pooled width are
    not seen; compare the blocks' top eigenvalues for those. Measured on
    small models (a 2-layer transformer against a CNN with BatchNorm, 3
    seeds), this measure did not separate the two, while the spread of the
    blocks' top eigenvalues under GPT-2's initialisation (5.5 decades
    against 0.7) did.

    Args:
        spectra: ``block_spectra(..., density=True)``'s result (two blocks
            or more).
        grid_size: points of the common grid.

    Returns:
        ``(mean, distances)``: the mean over pairs of blocks, and the
        symmetric (blocks, blocks) matrix of distances (zero diagonal).

    Raises:
        ValueError: fewer than two blocks, or a block without a density.
    """
    if len(spectra) < 2:
        raise ValueError(f"block_heterogeneity needs two blocks or more; got {len(spectra)}.")
    missing = [b.name for b in spectra if b.density is None]
    if missing:
        raise ValueError(
            f"blocks {missing[:4]} have no density: call block_spectra(..., density=True)."
        )
    nodes = [np.asarray(b.density.nodes, np.float64).ravel() for b in spectra]
    weights = [np.asarray(b.density.weights, np.float64).ravel() for b in spectra]
    low, high = min(x.min() for x in nodes), max(x.max() for x in nodes)
    width = max(high - low, np.finfo(np.float64).tiny)
    sigma = 0.01 * width
    grid = np.linspace(low - 4 * sigma, high + 4 * sigma, int(grid_size))
    dens = []
    for t, w in zip(nodes, weights, strict=True):
        p = np.exp(-0.5 * ((grid[:, None] - t[None, :]) / sigma) ** 2) @ w
        dens.append(p / p.sum())
    m = len(dens)
    dist = np.zeros((m, m))
    for a in range(m):
        for b in range(a + 1, m):
            dist[a, b] = dist[b, a] = _js_distance(dens[a], dens[b])
    return float(dist[np.triu_indices(m, 1)].mean()), dist


def _js_distance(p: np.ndarray, q: np.ndarray) -> float:
    mid = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        keep = (a > 0) & (mid > 0)  # mid underflows only where a is subnormal
        return float(np.sum(a[keep] * np.log2(a[keep] / mid[keep])))

    return float(np.sqrt(max(0.0, 0.5 * kl(p) + 0.5 * kl(q))))
