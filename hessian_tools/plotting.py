"""Matplotlib figures for slices, spectra and critical points.

Every function takes ``ax=None``, draws on that Axes (or on a new figure's),
and returns the Axes. None calls ``plt.show()`` or writes a file: the caller
decides. Extra keyword arguments go to the main matplotlib call, named in
each docstring. Inputs are duck-typed: a slice is anything with ``.alphas``
/ ``.xs``, ``.ys`` and ``.values``; a critical point anything with
``.kind``, ``.x`` (and ``.value``, ``.eigenvalues`` or ``.index`` where
needed); a spectral density anything with ``.grid`` and ``.density``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from matplotlib import colors as mcolors
from matplotlib import ticker as mticker
from matplotlib.axes import Axes

from hessian_tools import _plot_common
from hessian_tools._plot_common import axes as _axes
from hessian_tools._plot_spectrum import (
    plot_block_spectra,
    plot_eigenvalues,
    plot_spectral_density,
)

__all__ = [
    "KIND_STYLES",
    "NEGATIVE_COLOR",
    "plot_block_spectra",
    "plot_critical_points",
    "plot_eigenvalues",
    "plot_function_2d",
    "plot_index_vs_loss",
    "plot_slice_1d",
    "plot_slice_2d",
    "plot_spectral_density",
    "plot_surface",
    "plot_trajectory",
]

#: One marker style per critical-point kind (keys of ``CriticalPoint.kind``).
KIND_STYLES: dict[str, dict[str, Any]] = {
    "minimum": {"marker": "o", "color": "tab:green", "label": "minimum"},
    "maximum": {"marker": "^", "color": "tab:red", "label": "maximum"},
    "saddle": {"marker": "X", "color": "tab:orange", "label": "saddle"},
    "degenerate": {"marker": "D", "color": "tab:purple", "label": "degenerate"},
    "not_critical": {"marker": "x", "color": "0.4", "label": "not critical"},
}

#: Colour of negative eigenvalues and of the negative side of a spectrum.
NEGATIVE_COLOR = _plot_common.NEGATIVE_COLOR


def _log_values(values: np.ndarray, what: str) -> None:
    finite = values[np.isfinite(values)]
    if finite.size and np.min(finite) <= 0:
        raise ValueError(
            f"log scale needs positive {what}; the minimum is {np.min(finite):.3g}. "
            "Plot a shifted loss (e.g. f - f_min + 1e-3) or pass log=False."
        )


def _point_coords(point: Any, dims: Sequence[int]) -> np.ndarray:
    x = getattr(point, "x", point)
    flat = np.asarray(ravel_pytree(x)[0], dtype=np.float64)
    if max(dims) >= flat.size:
        raise ValueError(
            f"dims {tuple(dims)} out of range for a point with {flat.size} coordinates."
        )
    return flat[list(dims)]


# --------------------------------------------------------------------------
# Critical points and trajectories


def plot_critical_points(
    points: Sequence[Any],
    ax: Axes | None = None,
    *,
    dims: Sequence[int] = (0, 1),
    legend: bool = True,
    **kwargs: Any,
) -> Axes:
    """Mark critical points on an existing Axes, one marker style per kind.

    Args:
        points: objects with ``.kind`` (a key of ``KIND_STYLES``) and ``.x``
            (a pytree; its flattened coordinates ``dims`` are plotted), e.g.
            from ``find_critical_points``.
        ax: Axes to draw on (typically a contour of the function).
        dims: the two flat coordinates of ``.x`` used as (x, y).
        legend: add a legend with one entry per kind present.
        **kwargs: passed to ``ax.scatter`` (e.g. ``s=80``, ``zorder``).

    Returns:
        The Axes; one scatter collection per kind, labelled with the kind.
    """
    ax = _axes(ax)
    if len(dims) != 2:
        raise ValueError(f"dims must name two coordinates, got {dims!r}.")
    groups: dict[str, list[np.ndarray]] = {}
    for p in points:
        kind = getattr(p, "kind", None)
        if kind not in KIND_STYLES:
            raise ValueError(f"unknown critical point kind {kind!r}; known: {list(KIND_STYLES)}.")
        groups.setdefault(kind, []).append(_point_coords(p, dims))
    style = {"s": 70, "edgecolors": "black", "linewidths": 0.8, "zorder": 5, **kwargs}
    for kind in KIND_STYLES:  # fixed order: stable legends
        if kind in groups:
            xy = np.stack(groups[kind])
            ax.scatter(xy[:, 0], xy[:, 1], **{**KIND_STYLES[kind], **style})
    if legend and groups:
        ax.legend(loc="best", fontsize="small")
    return ax


def plot_trajectory(trajectory: Any, ax: Axes | None = None, **kwargs: Any) -> Axes:
    """Draw a path (a (T, 2) array, or a ``Subspace`` from ``pca_directions``
    whose ``.coords`` are used) with its start and end marked.

    ``**kwargs`` go to ``ax.plot`` of the path. Returns the Axes.
    """
    ax = _axes(ax)
    xy = np.asarray(getattr(trajectory, "coords", trajectory), dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"a trajectory must have shape (T, 2), got {xy.shape}.")
    style = {"color": "white", "marker": ".", "markersize": 4, "linewidth": 1.2, **kwargs}
    style.setdefault("label", "trajectory")
    ax.plot(xy[:, 0], xy[:, 1], zorder=4, **style)
    ax.plot(*xy[0], marker="s", color=style["color"], markeredgecolor="black", zorder=4)
    ax.plot(
        *xy[-1], marker="*", markersize=12, color=style["color"], markeredgecolor="black", zorder=4
    )
    return ax


# --------------------------------------------------------------------------
# Slices


def plot_slice_1d(
    slices: Any,
    ax: Axes | None = None,
    *,
    labels: Sequence[str] | None = None,
    metric: str | None = None,
    log: bool = False,
    **kwargs: Any,
) -> Axes:
    """The loss (or a metric) along one or several 1-D slices, overlaid.

    Args:
        slices: a ``Slice1D`` or a sequence of them (one per direction).
        ax: Axes to draw on; None makes a new figure.
        labels: one legend label per slice (a legend is drawn if given).
        metric: plot ``slice.metrics[metric]`` instead of the loss.
        log: logarithmic y axis (the values must be positive).
        **kwargs: passed to each ``ax.plot``.

    Returns:
        The Axes, with one line per slice.
    """
    ax = _axes(ax)
    if hasattr(slices, "alphas"):
        slices = [slices]
    slices = list(slices)
    if labels is not None and len(labels) != len(slices):
        raise ValueError(f"got {len(labels)} labels for {len(slices)} slices.")
    for i, s in enumerate(slices):
        values = np.asarray(s.values if metric is None else s.metrics[metric])
        if log:
            _log_values(values, metric or "loss values")
        label = None if labels is None else labels[i]
        ax.plot(np.asarray(s.alphas), values, label=label, **kwargs)
    ax.set_xlabel("alpha")
    ax.set_ylabel(metric or "loss")
    if log:
        ax.set_yscale("log")
    if labels is not None:
        ax.legend()
    return ax


def _contour(ax, xs, ys, values, *, levels, log, filled, lines, colorbar, label, **kwargs):
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(ys), len(xs)):
        raise ValueError(
            f"values must have shape (len(ys), len(xs)) = {(len(ys), len(xs))}, got {values.shape}."
        )
    norm = None
    if log:
        _log_values(values, label)
        finite = values[np.isfinite(values)]
        lo, hi = float(np.min(finite)), float(np.max(finite))
        if isinstance(levels, int):
            levels = np.geomspace(lo, hi * (1 + 1e-9), levels)
        norm = mcolors.LogNorm(vmin=lo, vmax=hi)
    mappable = None
    if filled:
        mappable = ax.contourf(xs, ys, values, levels=levels, norm=norm, **kwargs)
    if lines:
        line_levels = mappable.levels if mappable is not None else levels
        ax.contour(
            xs, ys, values, levels=line_levels, colors="black", linewidths=0.4, alpha=0.6, norm=norm
        )
    if colorbar and mappable is not None:
        # a contour set's colorbar ticks every level by default: unreadable on a log scale
        extra = {}
        if log:
            extra = {"ticks": mticker.LogLocator(subs=(1.0, 2.0, 5.0)), "format": "%.3g"}
        ax.figure.colorbar(mappable, ax=ax, label=label, **extra)
    return ax


def plot_slice_2d(
    slice_: Any,
    ax: Axes | None = None,
    *,
    metric: str | None = None,
    levels: int | Sequence[float] = 30,
    log: bool = False,
    filled: bool = True,
    lines: bool = True,
    colorbar: bool = True,
    critical_points: Sequence[Any] | None = None,
    dims: Sequence[int] = (0, 1),
    trajectory: Any = None,
    **kwargs: Any,
) -> Axes:
    """Contour plot of a 2-D slice: filled contours plus contour lines.

    Args:
        slice_: a ``Slice2D`` (``.xs``, ``.ys``, ``.values`` of shape
            (len(ys), len(xs))).
        ax: Axes to draw on; None makes a new figure.
        metric: contour ``slice_.metrics[metric]`` instead of the loss.
        levels: number of levels or their values.
        log: logarithmic colour scale and level spacing (positive values).
        filled, lines, colorbar: which layers to draw.
        critical_points: points with ``.kind`` and ``.x`` drawn with
            ``plot_critical_points`` (coordinates ``dims`` of ``.x``, which
            must be in the slice's coordinates, e.g. a 2-D toy problem).
        trajectory: a (T, 2) array or a ``Subspace`` (its ``.coords``)
            drawn on top with ``plot_trajectory``.
        **kwargs: passed to ``ax.contourf`` (e.g. ``cmap``).

    Returns:
        The Axes.
    """
    ax = _axes(ax)
    values = slice_.values if metric is None else slice_.metrics[metric]
    _contour(
        ax,
        np.asarray(slice_.xs),
        np.asarray(slice_.ys),
        values,
        levels=levels,
        log=log,
        filled=filled,
        lines=lines,
        colorbar=colorbar,
        label=metric or "loss",
        **kwargs,
    )
    if trajectory is not None:
        plot_trajectory(trajectory, ax)
    if critical_points:
        plot_critical_points(critical_points, ax, dims=dims)
    return ax


def plot_function_2d(
    f: Callable[[jax.Array], jax.Array],
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    ax: Axes | None = None,
    *,
    num: int | tuple[int, int] = 200,
    levels: int | Sequence[float] = 30,
    log: bool = False,
    filled: bool = True,
    lines: bool = True,
    colorbar: bool = True,
    critical_points: Sequence[Any] | None = None,
    **kwargs: Any,
) -> Axes:
    """Contour a function of a (2,) array over the box ``xlim`` x ``ylim``.

    ``f`` is evaluated once, vectorised with ``jax.vmap`` over the
    ``num`` x ``num`` grid (``num=(nx, ny)`` for a non-square grid), in the
    ``np.meshgrid`` convention. ``critical_points`` are marked as in
    ``plot_critical_points``; ``**kwargs`` go to ``ax.contourf``.

    Returns:
        The Axes.
    """
    ax = _axes(ax)
    nx, ny = (num, num) if isinstance(num, (int, np.integer)) else num
    xs = np.linspace(*xlim, int(nx))
    ys = np.linspace(*ylim, int(ny))
    gx, gy = np.meshgrid(xs, ys)
    dtype = jnp.result_type(float)
    grid = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1), dtype)
    values = np.asarray(jax.jit(jax.vmap(f))(grid), dtype=np.float64)
    if values.shape != (grid.shape[0],):
        raise ValueError(
            f"f must map a (2,) array to a scalar; got output shape {values.shape[1:]}."
        )
    _contour(
        ax,
        xs,
        ys,
        values.reshape(ny, nx),
        levels=levels,
        log=log,
        filled=filled,
        lines=lines,
        colorbar=colorbar,
        label="f",
        **kwargs,
    )
    if critical_points:
        plot_critical_points(critical_points, ax)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    return ax


def plot_surface(slice_: Any, ax: Axes | None = None, *, log: bool = False, **kwargs: Any) -> Axes:
    """3-D surface of a 2-D slice (``log`` plots log10 of the values).

    ``ax`` must be a 3-D Axes (``projection="3d"``) or None; ``**kwargs``
    go to ``ax.plot_surface`` (default ``cmap="viridis"``). Returns the Axes.
    """
    if ax is None:
        ax = _axes(None, projection="3d")
    elif getattr(ax, "name", None) != "3d":
        raise ValueError('plot_surface needs a 3-D Axes: add_subplot(projection="3d").')
    values = np.asarray(slice_.values, dtype=np.float64)
    if log:
        _log_values(values, "loss values")
        values = np.log10(values)
    gx, gy = np.meshgrid(np.asarray(slice_.xs), np.asarray(slice_.ys))
    ax.plot_surface(gx, gy, values, **{"cmap": "viridis", **kwargs})
    ax.set_zlabel("log10 loss" if log else "loss")
    return ax


def plot_index_vs_loss(
    points: Sequence[Any],
    ax: Axes | None = None,
    *,
    num_params: int | None = None,
    legend: bool = True,
    **kwargs: Any,
) -> Axes:
    """Loss against the index fraction of critical points (Dauphin et al.
    2014, "Identifying and attacking the saddle point problem in
    high-dimensional non-convex optimization", Fig. 1).

    The x coordinate of a point is its index (number of negative Hessian
    eigenvalues, ``.index``) divided by the dimension n, the y coordinate
    its loss ``.value``. For random-like high-dimensional losses the
    points line up: critical points with low loss are minima, saddles sit
    higher the more descent directions they have.

    Args:
        points: objects with ``.kind``, ``.index`` and ``.value`` (and
            ``.eigenvalues`` or ``.x`` to tell n).
        ax: Axes to draw on; None makes a new figure.
        num_params: n; default the length of ``.eigenvalues`` (or of ``.x``).
        legend: legend of the kinds.
        **kwargs: passed to ``ax.scatter``.

    Returns:
        The Axes, one scatter collection per kind.
    """
    ax = _axes(ax)
    groups: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        if p.kind not in KIND_STYLES:
            raise ValueError(f"unknown critical point kind {p.kind!r}.")
        n = num_params
        if n is None:
            source = getattr(p, "eigenvalues", None)
            n = np.size(source) if source is not None else np.size(ravel_pytree(p.x)[0])
        groups.setdefault(p.kind, []).append((int(p.index) / n, float(p.value)))
    for kind in KIND_STYLES:
        if kind in groups:
            xy = np.asarray(groups[kind])
            ax.scatter(xy[:, 0], xy[:, 1], **{**KIND_STYLES[kind], "edgecolors": "black", **kwargs})
    ax.set_xlabel("index fraction (negative eigenvalues / n)")
    ax.set_ylabel("loss")
    if legend and groups:
        ax.legend(fontsize="small")
    return ax
