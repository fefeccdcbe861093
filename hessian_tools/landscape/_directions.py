"""Directions in parameter space for loss-landscape slices.

Each direction is a pytree with the structure and leaf shapes of ``params``.
Public through ``hessian_tools.landscape``: user code writes
``ht.landscape.random_direction(...)``.

Random directions follow Li et al. (2018), "Visualizing the Loss Landscape of
Neural Nets": a Gaussian direction whose filters are rescaled to the norms of
the corresponding filters of the parameters, so that the slice is comparable
across networks of different weight scale. Each leaf's filter (output unit /
output channel) axis is read from its key path (``_filters``): the last axis
of Flax ``kernel`` leaves (``(in, out)``, HWIO), the first of Equinox and
PyTorch-style ``weight`` leaves (``(out, in)``, OIHW); any other leaf of two
or more dimensions needs ``filter_axis=``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools._checks import as_key, check_choice, require_finite
from hessian_tools._compile import jit
from hessian_tools._data import Data
from hessian_tools._hessian import as_vector, value_and_grad
from hessian_tools._params import Partition
from hessian_tools._tree import Layout, norm, sub
from hessian_tools.landscape._filters import leaf_axes, normalize

PyTree = Any
Normalization = Literal["filter", "layer", "model"] | None

__all__ = [
    "Subspace",
    "eigen_directions",
    "gradient_direction",
    "interpolation",
    "normalize_direction",
    "pca_directions",
    "random_direction",
]

_NORMALIZATIONS = ("filter", "layer", "model", None)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Subspace:
    """An affine subspace ``origin + span(directions)`` of parameter space.

    Attributes:
        origin: the point at coordinate 0, a pytree like params.
        directions: tuple of pytrees like params (one for a line, two for a
            plane); pass them to ``slice_1d`` / ``slice_2d``.
        coords: (num_points, len(directions)) coordinates of the points that
            defined the subspace (the interpolated models, or the projected
            trajectory), ready to draw over a slice.
        explained_variance: for ``pca_directions``, the (len(directions),)
            fraction of the trajectory's variance along each direction;
            None otherwise.
    """

    origin: PyTree
    directions: tuple
    coords: np.ndarray
    explained_variance: np.ndarray | None = None


# --------------------------------------------------------------------------
# Normalisation


def _check_normalization(normalization: Any, allowed=_NORMALIZATIONS) -> None:
    check_choice("normalization", normalization, allowed)


def _check_leaves_1d(leaves_1d: str) -> None:
    check_choice("leaves_1d", leaves_1d, ("zero", "keep"))


@jit
def _gaussian_like(key, variables):
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(key, len(leaves))
    drawn = [
        jax.random.normal(k, jnp.shape(p), jnp.result_type(p))
        for k, p in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, drawn)


def _variables(params: PyTree) -> tuple[Partition, PyTree, Layout]:
    partition = Partition.of(params)
    variables = partition.split(params)[0]
    return partition, variables, Layout.of(variables)


def as_direction(params: PyTree, direction: PyTree, name: str = "direction") -> PyTree:
    """``direction`` as a vector of params' variables (from a pytree of the
    variables, one shaped like params, or a flat array)."""
    partition, _, layout = _variables(params)
    return as_vector(partition, layout, direction, name)


def normalize_direction(
    direction: PyTree,
    params: PyTree,
    normalization: Normalization = "filter",
    *,
    filter_axis: Any = None,
    leaves_1d: Literal["zero", "keep"] = "zero",
) -> PyTree:
    """Rescale a direction to the scale of ``params`` (Li et al. 2018).

    Args:
        direction: a vector of params' variables (a pytree of them, one
            shaped like params, or a flat array).
        params: the point whose scale the direction takes; any pytree (its
            floating-point array leaves are the variables).
        normalization: ``"filter"``: each filter (the slice at one index of
            the filter axis: an output unit of a dense kernel, an output
            channel of a conv kernel) gets the norm of the same filter of
            params. ``"layer"``: each leaf gets the norm of the params leaf.
            ``"model"``: the whole direction gets the norm of params (over the
            leaves that are not zeroed). ``None``: left as it is.
        filter_axis: which axes of a weight index its filters. The surest
            is ``ht.landscape.filter_axes(loss, params, *args)``, read from
            the model's computation (a pytree of axes per leaf; an
            attention kernel has two). None (the default) reads the axis
            off the leaf's name: Flax ``kernel`` leaves (dense ``(in,
            out)``, conv HWIO) the last axis, Equinox and PyTorch-style
            ``weight`` leaves (``(out, in)``, OIHW) the first; a weight of
            any other name raises and asks for it. An int sets it for every
            leaf (-1 for ``x @ w`` dicts); a function of the key path
            string sets it per leaf (an int, ints, or None: a bias).
        leaves_1d: what to do with biases: leaves of ndim <= 1 and leaves
            named ``bias``, ``scale``, ``mean`` or ``var``. ``"zero"``
            (default) sets them to 0, like Li et al.'s ``--xignore biasbn``:
            with filter normalisation the per-element scale of a bias is
            meaningless. ``"keep"`` keeps them; under ``"filter"``
            normalisation a bias then counts as one filter (its norm becomes
            that of the params leaf).

    Returns:
        A pytree of the variables (like params, for a plain pytree of
        floating arrays), in their dtypes. No HVPs.

    Raises:
        ValueError: a direction that does not match params; a weight whose
            filter axis cannot be told; a direction that is zero after
            normalisation.
    """
    _check_normalization(normalization)
    _check_leaves_1d(leaves_1d)
    _, variables, _ = _variables(params)
    direction = as_direction(params, direction)
    axes = leaf_axes(variables, filter_axis, needed=normalization == "filter")
    out = normalize(direction, variables, normalization, axes, leaves_1d)
    if not any(bool(jnp.any(leaf != 0)) for leaf in jax.tree.leaves(out)):
        raise ValueError(
            "the direction is identically zero after normalisation: every leaf is a bias "
            'and leaves_1d="zero" (or params is zero). Pass leaves_1d="keep" for '
            "parameters that are a single vector (e.g. 2-D toy problems)."
        )
    return out


def random_direction(
    key: jax.Array,
    params: PyTree,
    normalization: Normalization = "filter",
    *,
    filter_axis: Any = None,
    leaves_1d: Literal["zero", "keep"] = "zero",
) -> PyTree:
    """A Gaussian random direction, normalised to the scale of ``params``.

    Draws i.i.d. standard normal leaves for params' variables, in their
    dtypes, then applies ``normalize_direction`` (see there for
    ``normalization``, ``filter_axis`` and ``leaves_1d``; the default is Li
    et al.'s filter normalisation with biases and norm parameters zeroed,
    the filter axis read off the layout). Costs no HVPs.

    Reference: Li, Xu, Taylor, Studer, Goldstein (2018), "Visualizing the
    Loss Landscape of Neural Nets", NeurIPS.
    """
    _, variables, _ = _variables(params)
    direction = _gaussian_like(as_key(key), variables)
    return normalize_direction(
        direction, params, normalization, filter_axis=filter_axis, leaves_1d=leaves_1d
    )


def eigen_directions(
    op: Any,
    k: int = 2,
    *,
    which: Literal["largest", "smallest", "both"] = "largest",
    key: jax.Array | None = None,
    rtol: float | None = None,
    max_matvecs: int | None = None,
) -> tuple[PyTree, ...]:
    """Unit eigenvectors of a curvature operator, as pytrees like params.

    Calls ``hessian_tools.eigen.eigenpairs(op, k, which=...)`` and unravels
    each column with ``op.unravel``; the order is that of
    ``Eigenpairs.values`` (descending for "largest", ascending otherwise).
    Use ``which="smallest"`` for the most negative curvature. Slices along
    the top eigenvectors show the sharpest cross-sections of the loss.

    Cost: that of ``eigenpairs`` (its ``num_matvecs`` HVPs). To keep the
    eigenvalues too, call ``eigenpairs`` yourself and use its
    ``tree_vectors``. ``rtol`` is passed to ``eigenpairs``.
    """
    from hessian_tools.eigen import eigenpairs

    if not hasattr(op, "unravel"):
        raise TypeError(
            "eigen_directions needs a curvature operator with .unravel (e.g. "
            f"HessianOperator) to turn eigenvectors into pytrees; got {type(op).__name__}."
        )
    result = eigenpairs(op, k, which=which, key=key, rtol=rtol, max_matvecs=max_matvecs)
    return tuple(jax.tree.map(lambda x, i=i: x[i], result.tree_vectors) for i in range(k))


def gradient_direction(
    f: Callable[..., jax.Array],
    params: PyTree,
    *args: Any,
    batches: Any = None,
    normalization: Literal["unit", "filter", "layer", "model"] | None = "unit",
    filter_axis: Any = None,
) -> PyTree:
    """The gradient of ``f`` at ``params`` as a direction (ascent: f grows
    along +alpha to first order; negate it for descent).

    Args:
        f: loss ``f(params, *args) -> scalar``.
        params: the point.
        *args: data for ``f``.
        batches: instead of ``*args``, a re-iterable of argument tuples; the
            gradient of the mean loss ``sum_b (size_b / N) f(params, *b)``.
        normalization: ``"unit"`` (default) divides by the gradient norm;
            ``"filter"``/``"layer"``/``"model"`` as in
            ``normalize_direction`` (with 1-D leaves kept); ``None`` returns
            the raw gradient.
        filter_axis: as in ``normalize_direction``.

    Returns:
        A pytree of the variables. Costs one gradient per batch (no HVPs).
        Raises ``ValueError`` if the gradient is zero (a critical point has
        no gradient direction) and ``FloatingPointError`` if not finite.
    """
    _check_normalization(normalization, ("unit", *_NORMALIZATIONS))
    partition, variables, _ = _variables(params)
    fixed = partition.split(params)[1]
    grad = value_and_grad(f, partition, variables, fixed, Data.create(args, batches))[1]
    require_finite("gradient", grad)
    grad_norm = norm(grad)
    if not float(grad_norm) > 0:
        raise ValueError("the gradient is exactly zero at params: no gradient direction.")
    if normalization == "unit":
        return jax.tree.map(lambda g: g / grad_norm.astype(g.dtype), grad)
    if normalization is None:
        return grad
    return normalize_direction(
        grad, params, normalization, filter_axis=filter_axis, leaves_1d="keep"
    )


# --------------------------------------------------------------------------
# Subspaces through several models


def _orthonormalize(vectors: list[np.ndarray]) -> np.ndarray:
    q, r = np.linalg.qr(np.stack(vectors, axis=1))
    if np.any(np.abs(np.diag(r)) <= 1e-12 * np.max(np.abs(r))):
        raise ValueError("the points are (nearly) collinear: they do not span a plane.")
    return q * np.sign(np.diag(r))  # keep each direction pointing the way of its input


def interpolation(
    params_a: PyTree,
    params_b: PyTree,
    params_c: PyTree | None = None,
    *,
    orthonormalize: bool = False,
) -> Subspace:
    """The line through two models, or the plane through three.

    For mode connectivity (Garipov et al. 2018, "Loss Surfaces, Mode
    Connectivity, and Fast Ensembling of DNNs"; Draxler et al. 2018). The
    origin is ``params_a``. Without ``orthonormalize`` the directions are
    ``b - a`` (and ``c - a``), so a at coordinate 0, b at 1 on the line
    (``slice_1d`` with alphas in [0, 1] is linear interpolation), and a, b,
    c at (0, 0), (1, 0), (0, 1) in the plane. With ``orthonormalize=True``
    the plane's directions are orthonormal (Gram-Schmidt, lengths and angles
    true to scale), and ``coords`` gives where a, b and c lie.

    Returns:
        A ``Subspace`` with ``coords`` of shape (2, 1) or (3, 2). No HVPs.
    """
    points = [params_a, params_b] + ([] if params_c is None else [params_c])
    _, origin, layout = _variables(params_a)
    ends = [
        as_direction(params_a, p, name)
        for name, p in zip(("params_b", "params_c"), points[1:], strict=False)
    ]
    diffs = [layout.cast(sub(p, origin)) for p in ends]
    flats = [np.asarray(layout.ravel(d), dtype=np.float64) for d in diffs]
    if any(not np.any(v) for v in flats):
        raise ValueError("two of the given points are identical: the direction is zero.")
    unravel, dtype = layout.unravel, layout.dtype
    if not orthonormalize:
        coords = np.vstack([np.zeros(len(diffs)), np.eye(len(diffs))])
        if len(diffs) == 2:
            _orthonormalize(flats)  # only to refuse collinear points
        return Subspace(params_a, tuple(diffs), coords)
    basis = _orthonormalize(flats)
    coords = np.vstack([np.zeros(basis.shape[1]), np.stack(flats) @ basis])
    directions = tuple(unravel(jnp.asarray(basis[:, i], dtype)) for i in range(basis.shape[1]))
    return Subspace(params_a, directions, coords)


def _stack_trajectory(trajectory: Any, stacked: bool | None) -> list[PyTree]:
    """The trajectory as a list of points (pytrees like params)."""
    if stacked is None:
        stacked = not (
            isinstance(trajectory, (list, tuple))
            and len(trajectory) > 0
            and all(
                jax.tree.structure(p) == jax.tree.structure(trajectory[0])
                and [np.shape(x) for x in jax.tree.leaves(p)]
                == [np.shape(x) for x in jax.tree.leaves(trajectory[0])]
                for p in trajectory
            )
        )
    if stacked:
        leaves, treedef = jax.tree.flatten(trajectory)
        if not leaves or any(np.ndim(x) == 0 for x in leaves):
            raise ValueError("a stacked trajectory needs leaves with a leading (time) axis.")
        lengths = {np.shape(x)[0] for x in leaves}
        if len(lengths) != 1:
            raise ValueError(f"stacked trajectory leaves disagree on their length: {lengths}.")
        points = [jax.tree.unflatten(treedef, [x[t] for x in leaves]) for t in range(lengths.pop())]
    else:
        points = list(trajectory)
    return points


def pca_directions(
    trajectory: Sequence[PyTree] | PyTree,
    k: int = 2,
    *,
    origin: Literal["last", "first", "mean"] | PyTree = "last",
    stacked: bool | None = None,
) -> Subspace:
    """The PCA plane of an optimisation trajectory, and the trajectory in it.

    Li et al. (2018, section 7): random directions are nearly orthogonal to
    an optimisation path in high dimension, so the path is drawn in the span
    of the top principal components of the visited points instead.

    Args:
        trajectory: a list of params pytrees (one per step), or one pytree
            whose leaves are stacked along a leading time axis.
        k: number of principal directions (2 for a plane).
        origin: the subspace's point at coordinate 0: "last" (the final
            model, as Li et al.), "first", "mean", or any params pytree.
        stacked: force the interpretation of ``trajectory`` (None: a list
            or tuple of equally shaped pytrees is a list of points).

    Returns:
        A ``Subspace``: unit, orthogonal ``directions`` (principal axes of the
        mean-centred points, signs chosen so that the path runs from lower
        to higher coordinates), ``coords`` (T, k)
        the projections ``<x_t - origin, d_i>``, and ``explained_variance``
        the fraction of the trajectory's variance captured by each axis
        (report it: a low total means the picture hides most of the path).
        Costs an SVD of the (T, n) matrix of points, no HVPs.
    """
    points = _stack_trajectory(trajectory, stacked)
    if len(points) < 2:
        raise ValueError(f"a trajectory needs at least 2 points, got {len(points)}.")
    template = points[-1]
    _, _, layout = _variables(template)
    mat = np.stack(
        [
            np.asarray(layout.ravel(as_direction(template, p, f"trajectory[{t}]")), np.float64)
            for t, p in enumerate(points)
        ]
    )
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= min(mat.shape):
        raise ValueError(f"k must be an integer in [1, {min(mat.shape)}], got {k!r}.")
    partition = Partition.of(template)
    if isinstance(origin, str):
        choices = {"last": points[-1], "first": points[0], "mean": None}
        if origin not in choices:
            raise ValueError(f'origin must be "last", "first", "mean" or a pytree, got {origin!r}.')
        origin_flat = mat.mean(0) if origin == "mean" else mat[{"last": -1, "first": 0}[origin]]
        fixed = partition.split(template)[1]
        origin_tree = partition.combine(
            layout.unravel(jnp.asarray(origin_flat, layout.dtype)), fixed
        )
    else:
        origin_tree = origin
        origin_flat = np.asarray(layout.ravel(as_direction(template, origin, "origin")), np.float64)
    centred = mat - mat.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    total = float(np.sum(s**2))
    if total == 0:
        raise ValueError("all points of the trajectory are identical: no principal directions.")
    axes = vt[:k].T  # (n, k)
    coords = (mat - origin_flat) @ axes
    flip = np.where(coords[0] - coords[-1] > 0, -1.0, 1.0)
    axes, coords = axes * flip, coords * flip
    directions = tuple(layout.unravel(jnp.asarray(axes[:, i], layout.dtype)) for i in range(k))
    return Subspace(origin_tree, directions, coords, s[:k] ** 2 / total)
