"""Helpers shared by the plotting modules (colours, the ``ax=None`` rule)."""

from __future__ import annotations

from typing import Any

from matplotlib.axes import Axes

#: Colour of negative eigenvalues and of the negative side of a spectrum
#: (public as ``hessian_tools.plotting.NEGATIVE_COLOR``).
NEGATIVE_COLOR = "tab:red"
POSITIVE_COLOR = "tab:blue"


def axes(ax: Axes | None, **subplot_kw: Any) -> Axes:
    """``ax`` itself, or the Axes of a new figure (``subplot_kw`` to ``add_subplot``)."""
    if ax is not None:
        return ax
    # pyplot (and its backend) only when a new figure is needed: importing
    # hessian_tools stays light
    import matplotlib.pyplot as plt

    return plt.figure().add_subplot(**subplot_kw)
