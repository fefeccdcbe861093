"""Spectrum plots: a spectral density and a list of eigenvalues.

Re-exported by ``hessian_tools.plotting`` (documented there); same
conventions: ``ax=None`` draws on a new figure, the Axes is returned.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes

from hessian_tools._plot_common import NEGATIVE_COLOR
from hessian_tools._plot_common import POSITIVE_COLOR as _POSITIVE_COLOR
from hessian_tools._plot_common import axes as _axes

__all__ = ["plot_eigenvalues", "plot_spectral_density"]


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
        ax.bar(idx, eigs, color=list(colors), **kwargs)
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
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    return ax
