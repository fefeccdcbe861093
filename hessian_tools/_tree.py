"""Pytree linear algebra: the few vector operations the Krylov code needs.

Every function works on any pytree of arrays (dicts, tuples, Flax/Equinox
parameters) and on plain arrays alike. Reductions accumulate in the leaves'
dtype; nothing here changes a global JAX flag.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

PyTree = Any

__all__ = [
    "add",
    "axpy",
    "check_same_structure",
    "norm",
    "num_elements",
    "ravel",
    "scale",
    "sub",
    "vdot",
    "zeros_like",
]


def vdot(x: PyTree, y: PyTree) -> jax.Array:
    """Sum over leaves of ``vdot(x_leaf, y_leaf)`` (no complex conjugation)."""
    leaves = [jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True)]
    return sum(leaves[1:], leaves[0]) if leaves else jnp.zeros(())


def norm(x: PyTree) -> jax.Array:
    """Euclidean norm of the concatenated leaves."""
    return jnp.sqrt(vdot(x, x))


def axpy(a: jax.Array | float, x: PyTree, y: PyTree) -> PyTree:
    """``a * x + y`` leaf by leaf."""
    return jax.tree.map(lambda xi, yi: a * xi + yi, x, y)


def add(x: PyTree, y: PyTree) -> PyTree:
    return jax.tree.map(jnp.add, x, y)


def sub(x: PyTree, y: PyTree) -> PyTree:
    return jax.tree.map(jnp.subtract, x, y)


def scale(a: jax.Array | float, x: PyTree) -> PyTree:
    return jax.tree.map(lambda xi: a * xi, x)


def zeros_like(x: PyTree) -> PyTree:
    return jax.tree.map(jnp.zeros_like, x)


def num_elements(x: PyTree) -> int:
    """Total number of scalars in the pytree."""
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(x)))


def ravel(x: PyTree):
    """``jax.flatten_util.ravel_pytree``: (flat vector, unravel function)."""
    return ravel_pytree(x)


def check_same_structure(reference: PyTree, other: PyTree, *, name: str = "v") -> None:
    """Raise ``ValueError`` unless ``other`` has the tree structure and leaf
    shapes of ``reference``.

    Only static information is compared, so this is safe under ``jit`` and
    ``vmap`` tracing (``vmap`` hides the batch axis from the leaf shapes).
    """
    ref_def = jax.tree.structure(reference)
    other_def = jax.tree.structure(other)
    if ref_def != other_def:
        raise ValueError(
            f"{name} must have the same pytree structure as params; "
            f"params is {ref_def}, {name} is {other_def}."
        )
    for path_leaf, leaf in zip(
        jax.tree_util.tree_leaves_with_path(reference), jax.tree.leaves(other), strict=True
    ):
        path, ref_leaf = path_leaf
        if jnp.shape(ref_leaf) != jnp.shape(leaf):
            raise ValueError(
                f"{name} leaf {jax.tree_util.keystr(path) or '<root>'} has shape "
                f"{jnp.shape(leaf)}, but params has shape {jnp.shape(ref_leaf)} there."
            )
