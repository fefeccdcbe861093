"""Matplotlib figures for slices, spectra and critical points.

Every function takes ``ax=None``, draws on that Axes (or on a new figure's),
and returns the Axes. None calls ``plt.show()`` or writes a file: the caller
decides. Extra keyword arguments go to the main matplotlib call, named in
each docstring. Inputs are duck-typed: a slice is anything with ``.alphas``
/ ``.xs``, ``.ys`` and ``.values``; a critical point anything with
``.kind``, ``.x`` (and ``.value``, ``.eigenvalues`` or ``.index`` where
needed); a spectral density anything with ``.grid`` and ``.density``.
"""

from hessian_tools.plotting import _common, _critical
from hessian_tools.plotting._critical import (
    plot_critical_points,
    plot_index_vs_loss,
    plot_trajectory,
)
from hessian_tools.plotting._landscape import (
    plot_function_2d,
    plot_slice_1d,
    plot_slice_2d,
    plot_surface,
)
from hessian_tools.plotting._spectrum import (
    plot_block_densities,
    plot_block_spectra,
    plot_eigenvalues,
    plot_spectral_density,
)

#: One marker style per critical-point kind (keys of ``CriticalPoint.kind``).
KIND_STYLES = _critical.KIND_STYLES

#: Colour of negative eigenvalues and of the negative side of a spectrum.
NEGATIVE_COLOR = _common.NEGATIVE_COLOR

__all__ = [
    "KIND_STYLES",
    "NEGATIVE_COLOR",
    "plot_block_densities",
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
