"""Filter normalisation of directions (Li et al. 2018) and the filter axis
of each parameter layout.

A *filter* is one output unit of a dense layer or one output channel of a
convolution. Li et al. rescale each filter of a random direction to the norm
of the same filter of the parameters, so that slices are comparable across
networks of different weight scale. Where the filter axis lies depends on
the library:

* Flax (Linen and NNX): ``kernel`` leaves, dense ``(in, out)``, convolution
  ``(H, W, in, out)`` (HWIO): the filter axis is the last.
* Equinox and PyTorch-style dicts: ``weight`` leaves, dense ``(out, in)``,
  convolution ``(out, in, H, W)`` (OIHW): the filter axis is the first.

``leaf_axes`` reads the layout off each leaf's key path, unless given
axes (``landscape.filter_axes`` reads them from the model instead); for a
leaf of two or more dimensions under any other name it refuses to guess and
asks for ``filter_axis``. Leaves named ``bias``, ``scale``, ``mean`` or ``var`` (of
any shape: Equinox's conv bias is ``(out, 1, 1)``) and leaves of at most one
dimension are treated as biases (``leaves_1d``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from hessian_tools._compile import jit
from hessian_tools._tree import norm

__all__ = ["BIAS", "BIAS_NAMES", "leaf_axes", "leaf_name", "normalize"]

#: marks a leaf normalised as a bias (governed by ``leaves_1d``)
BIAS = "bias"
BIAS_NAMES = ("bias", "scale", "mean", "var", "offset")
_LAYOUTS = {"kernel": -1, "weight": 0}  # Flax kernels: last axis; Equinox / PyTorch: first


def leaf_name(path: tuple) -> str:
    """The last named key of a path, skipping NNX's ``.value`` and indices."""
    for key in reversed(path):
        name = getattr(key, "name", None) or getattr(key, "key", None)
        if isinstance(name, str) and name != "value":
            return name
    return ""


def leaf_axes(params: Any, filter_axis: Any, needed: bool = True) -> tuple:
    """The filter axes of every leaf of ``params`` (a pytree of the
    variables), each a tuple of axes, or ``BIAS``.

    Args:
        params: the variables, a pytree (None where a leaf is not one).
        filter_axis: None to read the layout off the key paths, an int for
            every leaf, a function of the key path string
            (``jax.tree_util.keystr``) returning an int, a tuple of ints or
            None (a bias), or a pytree like the variables of such values
            (``landscape.filter_axes``: read from the model).
        needed: whether the axes are used (filter normalisation); if not,
            a leaf of unknown layout gets axis 0 instead of an error.

    Raises:
        ValueError: a leaf of two or more dimensions whose layout cannot be
            told (not named ``kernel`` or ``weight``) and no ``filter_axis``.
    """
    out, unknown = [], []
    leaves = jax.tree_util.tree_leaves_with_path(params)
    per_leaf = _per_leaf(params, filter_axis)
    for i, (path, leaf) in enumerate(leaves):
        name = leaf_name(path)
        if per_leaf is not None:
            out.append(_axes(per_leaf[i], jnp.ndim(leaf)))
        elif jnp.ndim(leaf) <= 1 or name in BIAS_NAMES:
            out.append(BIAS)
        elif callable(filter_axis):
            out.append(_axes(filter_axis(jax.tree_util.keystr(path)), jnp.ndim(leaf)))
        elif filter_axis is not None:
            out.append(_axes(filter_axis, jnp.ndim(leaf)))
        elif name in _LAYOUTS:
            out.append(_axes(_LAYOUTS[name], jnp.ndim(leaf)))
        elif needed:
            unknown.append(f"{jax.tree_util.keystr(path)} {jnp.shape(leaf)}")
        else:
            out.append((0,))
    if unknown:
        raise ValueError(
            "filter normalisation must know which axis of each weight indexes its filters "
            "(output units or channels); the layout of these leaves cannot be told from "
            f"their names: {', '.join(unknown[:6])}. Read the axes from the model: "
            "filter_axis=ht.landscape.filter_axes(loss, params, *args); or pass "
            "filter_axis=-1 for (in, out) and HWIO layouts (x @ w, Flax), filter_axis=0 for "
            "(out, in) and OIHW (Equinox, PyTorch), or a function of the key path; Flax "
            "'kernel' and Equinox 'weight' leaves are recognised by name."
        )
    return tuple(out)


def _per_leaf(params: Any, filter_axis: Any) -> list | None:
    """``filter_axis`` as one entry per leaf, when it is a pytree like the
    variables (None leaves meaning biases), else None."""
    if filter_axis is None or callable(filter_axis) or isinstance(filter_axis, int):
        return None
    structure = jax.tree.structure(params)
    entries = structure.flatten_up_to(filter_axis)  # raises on another structure
    return list(entries)


def _axes(value: Any, ndim: int) -> Any:
    """An axis spec (an int, ints, None for a bias) as a sorted tuple of
    non-negative axes, or ``BIAS``."""
    if value is None:
        return BIAS
    axes = (value,) if isinstance(value, int) else tuple(value)
    return tuple(sorted({int(a) % ndim for a in axes})) if ndim else BIAS


def _rescale(d: jax.Array, target: jax.Array, current: jax.Array) -> jax.Array:
    # d * target / current, with 0 where the direction's part is exactly 0
    safe = jnp.where(current > 0, current, 1)
    return d * jnp.where(current > 0, target / safe, 0)


def _filter_normalize(d: jax.Array, p: jax.Array, axes: tuple) -> jax.Array:
    # one norm per filter: per index of the filter axes, over the others
    other = tuple(i for i in range(d.ndim) if i not in axes)
    d_norm = jnp.sqrt(jnp.sum(d * d, axis=other, keepdims=True))
    p_norm = jnp.sqrt(jnp.sum(p * p, axis=other, keepdims=True))
    return _rescale(d, p_norm, d_norm)


@functools.partial(jit, static_argnums=(2, 3, 4))
def normalize(direction, params, normalization, axes: tuple, leaves_1d):
    """The direction rescaled leaf by leaf (see ``normalize_direction``);
    ``axes`` from ``leaf_axes``. One compiled program per layout."""
    d_leaves, treedef = jax.tree.flatten(direction)
    p_leaves = jax.tree.leaves(params)

    def per_leaf(d, p, axis):
        if axis == BIAS and leaves_1d == "zero":
            return jnp.zeros_like(d)
        if normalization == "filter" and axis != BIAS:
            return _filter_normalize(d, p, axis)
        if normalization in ("filter", "layer"):
            return _rescale(d, jnp.linalg.norm(p.ravel()), jnp.linalg.norm(d.ravel()))
        return d

    out = [per_leaf(d, p, a) for d, p, a in zip(d_leaves, p_leaves, axes, strict=True)]
    if normalization == "model":
        # the target norm is that of the params leaves the direction keeps
        kept = [
            p if a != BIAS or leaves_1d == "keep" else jnp.zeros_like(p)
            for p, a in zip(p_leaves, axes, strict=True)
        ]
        factor = _rescale(jnp.ones(()), norm(kept), norm(out))
        out = [(d * factor).astype(d.dtype) for d in out]
    return jax.tree.unflatten(treedef, out)
