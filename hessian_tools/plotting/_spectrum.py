"""Spectrum plots: a spectral density, a list of eigenvalues, per-block bars.

Public through ``hessian_tools.plotting`` (documented there); same
conventions: ``ax=None`` draws on a new figure, the Axes is returned.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from hessian_tools.plotting._common import NEGATIVE_COLOR
from hessian_tools.plotting._common import POSITIVE_COLOR as _POSITIVE_COLOR
from hessian_tools.plotting._common import axes as _axes

__all__ = [
    "plot_block_densities",
    "plot_block_spectra",
    "plot_eigenvalues",
    "plot_spectral_density",
]


def _eigenvalues(eigs: Any) -> np.ndarray:
    values = getattr(eigs, "values", eigs)  # an Eigenpairs or an array
    return np.ravel(np.asarray(values, dtype=np.float64))


def plot_spectral_density(
    density: Any,
    ax: Axes | None = None,
    *,
    eigenvalues: Any = None,
    log: bool = True,
    shade_negative: bool = True,
    **kwargs: Any,
) -> Axes:
    """A spectral density (e.g. from ``spectral_density``), with a log y axis.

    Args:
        density: an object with ``.grid`` and ``.density`` arrays.
        ax: Axes to draw on; None makes a new figure.
        eigenvalues: optional array or ``Eigenpairs``: drawn as rug marks
            along the x axis (one vertical tick each).
        log: logarithmic y axis (densities span many decades).
        shade_negative: shade the half-plane lambda < 0 (negative curvature).
        **kwargs: passed to ``ax.plot`` of the density.

    Returns:
        The Axes.
    """
    ax = _axes(ax)
    grid = np.asarray(density.grid, dtype=np.float64)
    dens = np.asarray(density.density, dtype=np.float64)
    if log:  # zero density would vanish from a log plot; draw it at a floor instead
        floor = np.max(dens) * 1e-12 if np.any(dens > 0) else 1e-300
        dens = np.maximum(dens, floor)
    ax.plot(grid, dens, **{"color": _POSITIVE_COLOR, **kwargs})
    if log:
        ax.set_yscale("log")
    if eigenvalues is not None:
        eigs = _eigenvalues(eigenvalues)
        colors = np.where(eigs < 0, NEGATIVE_COLOR, "black")
        ax.vlines(
            eigs,
            0,
            0.06,
            colors=list(colors),
            transform=ax.get_xaxis_transform(),
            linewidth=1.0,
            label="eigenvalues",
        )
    if shade_negative:
        lo = min(float(grid.min()), 0.0)
        if eigenvalues is not None:
            lo = min(lo, float(np.min(_eigenvalues(eigenvalues))))
        if lo < 0:
            ax.axvspan(lo, 0, color=NEGATIVE_COLOR, alpha=0.08, label="negative curvature")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    return ax


def plot_eigenvalues(
    eigenvalues: Any,
    ax: Axes | None = None,
    *,
    style: str = "stem",
    **kwargs: Any,
) -> Axes:
    """Eigenvalues against their index, negative ones highlighted.

    Args:
        eigenvalues: an array or an ``Eigenpairs`` (plotted in its order).
        ax: Axes to draw on; None makes a new figure.
        style: "stem" or "bar".
        **kwargs: passed to ``ax.stem`` / ``ax.bar``.

    Returns:
        The Axes. Negative eigenvalues are drawn in ``NEGATIVE_COLOR``.
    """
    if style not in ("stem", "bar"):
        raise ValueError(f'style must be "stem" or "bar", got {style!r}.')
    ax = _axes(ax)
    eigs = _eigenvalues(eigenvalues)
    idx = np.arange(eigs.size)
    neg = eigs < 0
    if style == "bar":
        colors = np.where(neg, NEGATIVE_COLOR, _POSITIVE_COLOR)
        ax.bar(idx, eigs, **({"color": list(colors)} | kwargs))
    else:
        for mask, color, label in (
            (~neg, _POSITIVE_COLOR, "positive"),
            (neg, NEGATIVE_COLOR, "negative"),
        ):
            if np.any(mask):
                stem = ax.stem(idx[mask], eigs[mask], label=label, basefmt=" ", **kwargs)
                stem.markerline.set_color(color)
                stem.stemlines.set_color(color)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # an index has no halves
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    return ax


def plot_block_spectra(
    blocks: Any,
    ax: Axes | None = None,
    *,
    quantity: str = "top",
    log: bool = True,
    **kwargs: Any,
) -> Axes:
    """Per-block (per-layer) bars: the top eigenvalue with its error bound,
    or the trace with two standard errors.

    Args:
        blocks: a list of ``BlockSpectrum`` (``hessian_tools.block_spectra``)
            or anything with ``.name``, ``.values``, ``.error_bounds`` and
            ``.trace`` (an ``Estimate``).
        ax: Axes to draw on; None makes a new figure.
        quantity: "top" (the largest eigenvalue of each block) or "trace".
        log: logarithmic y axis (the values must then be positive).
        **kwargs: passed to ``ax.bar``; they override the defaults
            (``color``: negative values red, positive blue; ``capsize=3``).

    Returns:
        The Axes.
    """
    if quantity not in ("top", "trace"):
        raise ValueError(f'quantity must be "top" or "trace"; got {quantity!r}.')
    ax = _axes(ax)
    names = [b.name for b in blocks]
    if quantity == "top":
        values = np.array([float(np.asarray(b.values)[0]) for b in blocks])
        errors = np.array([float(np.asarray(b.error_bounds)[0]) for b in blocks])
        label = "largest eigenvalue of the block"
    else:
        values = np.array([float(b.trace.value) for b in blocks])
        errors = np.array([2 * float(b.trace.stderr) for b in blocks])
        label = "trace of the block"
    if log and np.any(values <= 0):
        raise ValueError(f"log scale needs positive values; the smallest is {values.min():.3g}.")
    style = {"color": list(np.where(values < 0, NEGATIVE_COLOR, _POSITIVE_COLOR)), "capsize": 3}
    ax.bar(np.arange(len(names)), values, yerr=errors, **(style | kwargs))
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(label)
    return ax


def plot_block_densities(
    blocks: Any, ax: Axes | None = None, *, log: bool = True, **kwargs: Any
) -> Axes:
    """The spectral density of each block, overlaid (Zhang et al. 2024,
    "Why Transformers Need Adam: A Hessian Perspective", Fig. 3).

    Args:
        blocks: ``block_spectra(..., density=True)``'s result, or anything
            with ``.name`` and ``.density`` (a ``SpectralDensity``).
        ax: Axes to draw on; None makes a new figure.
        log: logarithmic density axis (the outliers and the bulk both show).
        **kwargs: passed to each ``ax.plot``.

    Returns:
        The Axes, one line per block; the title gives the mean pairwise
        Jensen-Shannon distance (``block_heterogeneity``) for two blocks or
        more.

    Raises:
        ValueError: a block without a density.
    """
    missing = [b.name for b in blocks if getattr(b, "density", None) is None]
    if missing:
        raise ValueError(
            f"blocks {missing[:4]} have no density: call block_spectra(..., density=True)."
        )
    ax = _axes(ax)
    floor = 0.0
    for b in blocks:
        grid, dens = np.asarray(b.density.grid), np.asarray(b.density.density)
        ax.plot(grid, dens, label=b.name, **kwargs)
        floor = max(floor, float(dens.max()) * 1e-6)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
    if len(blocks) >= 2:
        from hessian_tools.blocks import block_heterogeneity

        mean, _ = block_heterogeneity(list(blocks))
        ax.set_title(f"block spectra: mean Jensen-Shannon distance {mean:.3f}")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")
    return ax
