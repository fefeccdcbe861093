"""Figures of critical points: their positions by kind, optimisation paths,
and the index-vs-loss scatter of Dauphin et al. (2014)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from jax.flatten_util import ravel_pytree
from matplotlib.axes import Axes

from hessian_tools.plotting._common import axes as _axes

__all__ = ["KIND_STYLES", "plot_critical_points", "plot_index_vs_loss", "plot_trajectory"]

#: One marker style per critical-point kind (keys of ``CriticalPoint.kind``).
KIND_STYLES: dict[str, dict[str, Any]] = {
    "minimum": {"marker": "o", "color": "tab:green", "label": "minimum"},
    "maximum": {"marker": "^", "color": "tab:red", "label": "maximum"},
    "saddle": {"marker": "X", "color": "tab:orange", "label": "saddle"},
    "degenerate": {"marker": "D", "color": "tab:purple", "label": "degenerate"},
    "not_critical": {"marker": "x", "color": "0.4", "label": "not critical"},
}


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
