"""Loss-landscape slices and the directions they are drawn along.

``slice_1d`` and ``slice_2d`` evaluate the loss (and optional metrics) along
a line or over a plane through ``params``, after Li et al. (2018),
"Visualizing the Loss Landscape of Neural Nets". The directions come from
``random_direction`` (filter-normalised), ``eigen_directions``,
``gradient_direction``, ``interpolation`` between two points and
``pca_directions`` of a training trajectory; ``filter_axes`` reads from the
model which axes of each weight index its filters (for filter
normalisation); ``extreme_eigenvalue_metric`` adds the curvature at every
grid point. The implementation lives in the
private modules of this package; these names are the public ones.
"""

from hessian_tools.landscape._directions import (
    Subspace,
    eigen_directions,
    gradient_direction,
    interpolation,
    normalize_direction,
    pca_directions,
    random_direction,
)
from hessian_tools.landscape._metrics import extreme_eigenvalue_metric
from hessian_tools.landscape._model_axes import filter_axes
from hessian_tools.landscape._slices import Slice1D, Slice2D, slice_1d, slice_2d

__all__ = [
    "Slice1D",
    "Slice2D",
    "Subspace",
    "eigen_directions",
    "extreme_eigenvalue_metric",
    "filter_axes",
    "gradient_direction",
    "interpolation",
    "normalize_direction",
    "pca_directions",
    "random_direction",
    "slice_1d",
    "slice_2d",
]
