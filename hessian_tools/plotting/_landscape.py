"""Figures of loss-landscape slices: 1-D curves, 2-D contours, 3-D surfaces
and contours of a plain function of two variables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import colors as mcolors
from matplotlib import ticker as mticker
from matplotlib.axes import Axes

from hessian_tools.plotting._common import axes as _axes
from hessian_tools.plotting._critical import plot_critical_points, plot_trajectory

__all__ = ["plot_function_2d", "plot_slice_1d", "plot_slice_2d", "plot_surface"]


def _log_values(values: np.ndarray, what: str) -> None:
    finite = values[np.isfinite(values)]
    if finite.size and np.min(finite) <= 0:
        raise ValueError(
            f"log scale needs positive {what}; the minimum is {np.min(finite):.3g}. "
            "Plot a shifted loss (e.g. f - f_min + 1e-3) or pass log=False."
        )


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
