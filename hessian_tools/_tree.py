"""Pytree linear algebra: the vector operations the Krylov code needs.

Vectors are pytrees shaped like the parameters (a plain array is a pytree of
one leaf). A *stacked* pytree holds several vectors: every leaf carries a
leading axis, ``(m, *leaf.shape)``. The Krylov basis is stored in one of two
forms (``Layout.flatten_leaves``): on one CPU device one ``(m, n)`` array,
the leaves raveled and joined, so that Gram-Schmidt is one contraction; on
several devices a stack per leaf, each keeping the parameters' sharding,
contracted per leaf and summed. Nothing here changes a global JAX flag.

``Layout`` is the static description of a vector: tree structure, leaf
shapes and dtypes. It converts to and from the flat ``(n,)`` view, whose
order is that of ``jax.flatten_util.ravel_pytree``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hessian_tools._checks import check_same_structure

PyTree = Any

__all__ = [
    "Layout",
    "accurate_vdot",
    "basis_combine",
    "basis_dot",
    "get_rows",
    "norm",
    "scale",
    "set_row",
    "sub",
    "vdot",
]


def vdot(x: PyTree, y: PyTree) -> jax.Array:
    """Sum over leaves of ``vdot(x_leaf, y_leaf)`` (no complex conjugation)."""
    # a sum of products rather than jnp.vdot, whose flattening a sharded
    # leaf in explicit-sharding mode does not allow
    parts = [jnp.sum(a * b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True)]
    return sum(parts[1:], parts[0]) if parts else jnp.zeros(())


def norm(x: PyTree) -> jax.Array:
    """Euclidean norm of the concatenated leaves."""
    return jnp.sqrt(vdot(x, x))


def sub(x: PyTree, y: PyTree) -> PyTree:
    return jax.tree.map(jnp.subtract, x, y)


def scale(a: jax.Array | float, x: PyTree) -> PyTree:
    """``a * x`` leaf by leaf, in the leaves' dtypes."""
    return jax.tree.map(lambda xi: (a * xi).astype(xi.dtype), x)


def accurate_vdot(x: PyTree, y: PyTree, acc: Any) -> jax.Array:
    """``x . y`` accumulated in dtype ``acc``, summed leaf by leaf.

    In the inputs' own dtype, on one CPU device, the products are summed in
    blocks of 512 first (two-level summation; elsewhere XLA's reductions are
    already tree-shaped): a plain float32 reduction over 85k terms costs a
    Lanczos coefficient ~1e-5 relative accuracy, enough to spoil top-10
    eigenvalues at the 1e-5 level. A wider ``acc`` is used directly.
    """
    acc = jnp.dtype(acc)
    total = jnp.zeros((), acc)
    for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True):
        if acc.itemsize > jnp.dtype(a.dtype).itemsize or not flat_stacks() or _explicit(a):
            # wider accumulation, or not on one CPU device (a leaf spread over
            # devices, or a GPU, whose reductions are tree-shaped): a plain sum
            total = total + jnp.sum(a.astype(acc) * b.astype(acc))
            continue
        prod = (a * b).astype(acc).ravel()
        block = 512
        if prod.shape[0] > block:
            pad = (-prod.shape[0]) % block
            if pad:
                prod = jnp.concatenate([prod, jnp.zeros((pad,), acc)])
            prod = jnp.sum(prod.reshape(-1, block), axis=1)
        total = total + jnp.sum(prod)
    return total


# --------------------------------------------------------------------------
# Stacked vectors: leaves (m, *shape)


def flat_stacks() -> bool:
    """Whether stacks of vectors are kept as one flat ``(m, n)`` array (the
    leaves joined): on one CPU device, where that contracts many times
    faster and compiles smaller; never with several devices, where a leaf's
    own shape carries its sharding."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1


def basis_dot(basis: PyTree, w: PyTree) -> jax.Array:
    """``(m,)`` inner products of each stacked vector with ``w``: one
    matrix-vector product per leaf, summed over leaves.

    Keep large stacks 2-D, ``(m, n)`` (``Layout.flatten_leaves``): on
    XLA's CPU backend a contraction with a stack of 3-D leaves such as
    ``(61, 256, 256)`` ran 10-20x slower than the same contraction with the
    ``(61, 65536)`` matrix, even through a reshape (measured: 6.6 ms
    against 0.33 ms), because the compiler copied the stack to transpose it.
    """
    parts = [
        q @ x if x.ndim == 1 else _contract(q, x, x.ndim)
        for q, x in zip(jax.tree.leaves(basis), jax.tree.leaves(w), strict=True)
    ]
    return sum(parts[1:], parts[0])


def _explicit(x: Any) -> bool:
    """Whether ``x`` carries an explicit sharding over mesh axes (in
    explicit-sharding mode contractions over sharded axes must name their
    output's sharding)."""
    try:
        sharding = jax.typeof(x).sharding
    except Exception:
        return False
    spec = getattr(sharding, "spec", None)
    return spec is not None and any(s is not None for s in spec)


def stack_dot(a: PyTree, b: PyTree) -> jax.Array:
    """``(ka, kb)`` inner products of two stacks (leaves ``(ka, *shape)`` and
    ``(kb, *shape)``), summed over leaves; a replicated result."""

    def one(x, y):
        return _contract(x, y, (tuple(range(1, x.ndim)), tuple(range(1, y.ndim))))

    parts = [one(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
    return sum(parts[1:], parts[0])


def _replicated_like(x: jax.Array) -> Any:
    """The replicated sharding on ``x``'s mesh (no mesh context needed)."""
    return jax.sharding.NamedSharding(jax.typeof(x).sharding.mesh, jax.sharding.PartitionSpec())


def _replicated(x: jax.Array) -> jax.Array:
    return jax.sharding.reshard(x, _replicated_like(x))


def _contract(a: jax.Array, b: jax.Array, axes: Any) -> jax.Array:
    """``jnp.tensordot(a, b, axes)`` with its (small) result replicated: one
    all-reduce when the contracted axes are sharded (in explicit-sharding
    mode such a contraction must name its output's sharding)."""
    if _explicit(a) or _explicit(b):
        return jnp.tensordot(a, b, axes=axes, out_sharding=_replicated_like(b))
    return jnp.tensordot(a, b, axes=axes)


def basis_combine(coeffs: jax.Array, basis: PyTree) -> PyTree:
    """``sum_i coeffs[..., i] basis[i]``: a vector for ``coeffs`` of shape
    ``(m,)``, a stack of k vectors for shape ``(k, m)``; leaves keep their
    dtype (see ``basis_dot`` for the shape to keep stacks in)."""

    def one(q):
        if q.ndim == 2:
            return (coeffs.astype(q.dtype) @ q).astype(q.dtype)
        return jnp.tensordot(coeffs.astype(q.dtype), q, axes=1).astype(q.dtype)

    return jax.tree.map(one, basis)


def get_rows(basis: PyTree, start: Any, size: int | None = None) -> PyTree:
    """Row ``start`` of a stack (``size=None``), or rows ``start:start+size``
    as a stack; ``start`` may be traced."""
    if size is None:
        return jax.tree.map(lambda q: lax.dynamic_index_in_dim(q, start, keepdims=False), basis)
    return jax.tree.map(lambda q: lax.dynamic_slice_in_dim(q, start, size), basis)


def set_row(basis: PyTree, index: Any, w: PyTree) -> PyTree:
    """The stack with row ``index`` replaced by ``w`` (in place under jit)."""
    return jax.tree.map(
        lambda q, x: lax.dynamic_update_index_in_dim(q, x.astype(q.dtype), index, 0), basis, w
    )


# --------------------------------------------------------------------------
# Layout: the static shape of a vector


@dataclasses.dataclass(frozen=True)
class Layout:
    """Tree structure, leaf shapes and dtypes of a vector (hashable, static).

    The flat view concatenates the raveled leaves in ``ravel_pytree`` order,
    in the leaves' common (promoted) dtype.
    """

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]

    @classmethod
    def of(cls, tree: PyTree) -> Layout:
        leaves, treedef = jax.tree.flatten(tree)
        return cls(
            treedef,
            tuple(tuple(int(s) for s in jnp.shape(x)) for x in leaves),
            tuple(jnp.dtype(jnp.result_type(x)) for x in leaves),
        )

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @property
    def n(self) -> int:
        """Number of scalars in a vector."""
        return int(sum(self.sizes))

    @property
    def dtype(self) -> Any:
        """The promoted dtype of the leaves (that of the flat view)."""
        return jnp.dtype(jnp.result_type(*self.dtypes))

    def structs(self, lead: tuple[int, ...] = ()) -> PyTree:
        """A pytree of ``jax.ShapeDtypeStruct``, with leading axes ``lead``."""
        leaves = [
            jax.ShapeDtypeStruct(lead + s, d) for s, d in zip(self.shapes, self.dtypes, strict=True)
        ]
        return jax.tree.unflatten(self.treedef, leaves)

    def zeros(self, lead: tuple[int, ...] = ()) -> PyTree:
        """A zero vector, or a zero stack with leading axes ``lead``."""
        leaves = [jnp.zeros(lead + s, d) for s, d in zip(self.shapes, self.dtypes, strict=True)]
        return jax.tree.unflatten(self.treedef, leaves)

    def check(self, tree: PyTree, name: str = "v", lead: int = 0) -> None:
        """``ValueError`` unless ``tree`` has this structure and leaf shapes
        (after ``lead`` leading axes)."""
        template = self.structs()
        if lead:
            tree = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x)[lead:], x.dtype), tree)
        check_same_structure(template, tree, name=name)

    def cast(self, tree: PyTree) -> PyTree:
        """``tree`` with every leaf cast to this layout's dtype for it."""
        leaves = jax.tree.leaves(tree)
        cast = [jnp.asarray(x, d) for x, d in zip(leaves, self.dtypes, strict=True)]
        return jax.tree.unflatten(self.treedef, cast)

    def is_flat(self, v: Any) -> bool:
        """Whether array ``v`` is meant as a flat vector (or a stack of them,
        ``(k, n)`` with ``stacked``) rather than a pytree like params: any
        array, unless params is itself one array of ``v``'s shape."""
        if not isinstance(v, (jax.Array, np.ndarray)) and not hasattr(v, "__jax_array__"):
            return False
        return not (len(self.shapes) == 1 and tuple(np.shape(v)) == self.shapes[0])

    def vector(self, v: Any, name: str = "v") -> PyTree:
        """``v`` (a pytree like params, or a flat (n,) array) as a pytree of
        this layout, leaves cast to its dtypes.

        Raises:
            ValueError: a flat array of the wrong length, or a pytree of
                another structure or leaf shape.
        """
        if self.is_flat(v):
            flat = jnp.asarray(v)
            if flat.shape != (self.n,):
                raise ValueError(
                    f"{name} must be a flat vector of length n = {self.n} or a pytree like "
                    f"params; got an array of shape {flat.shape}."
                )
            return self.unravel(flat.astype(self.dtype))
        self.check(v, name=name)
        return self.cast(v)

    def flatten_leaves(self, tree: PyTree) -> PyTree:
        """The form the Krylov basis is stored in. On a single CPU device,
        one ``(*lead_axes, n)`` array (the leaves raveled and joined, in the
        common dtype; see ``basis_dot``): one contraction per Gram-Schmidt
        pass instead of one per leaf, which also compiles 2-3x faster for a
        many-leaf model. With several devices the leaves keep their shapes,
        and so their shardings: the basis of a leaf sharded ``P(*spec)`` is
        sharded ``P(None, *spec)``."""
        return self.ravel(tree) if flat_stacks() else tree

    def unflatten_leaves(self, tree: PyTree) -> PyTree:
        """Inverse of ``flatten_leaves``: leaves back to their shapes and dtypes."""
        return self.unravel(tree) if flat_stacks() else tree

    def ravel(self, tree: PyTree) -> jax.Array:
        """A vector as a flat ``(n,)`` array, or a stack as ``(k, n)``."""
        leaves = jax.tree.leaves(tree)
        lead = jnp.shape(leaves[0])[: jnp.ndim(leaves[0]) - len(self.shapes[0])]
        # the flat view of a leaf sharded in explicit mode is gathered first
        leaves = [_replicated(x) if _explicit(x) else x for x in leaves]
        parts = [jnp.reshape(x, (*lead, -1)).astype(self.dtype) for x in leaves]
        return jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def unravel(self, flat: jax.Array) -> PyTree:
        """Inverse of ``ravel``: ``(n,)`` to a vector, ``(k, n)`` to a stack.
        A numpy array is cut on the host and its leaves put on the device
        (no program per shape, unlike ``jnp``'s eager split and reshape)."""
        lead = flat.shape[:-1]
        cuts = np.cumsum(self.sizes)[:-1]
        if isinstance(flat, np.ndarray):
            parts = np.split(flat, cuts, axis=-1) if cuts.size else [flat]
            leaves = [
                jax.device_put(np.reshape(p, lead + s).astype(d))
                for p, s, d in zip(parts, self.shapes, self.dtypes, strict=True)
            ]
            return jax.tree.unflatten(self.treedef, leaves)
        parts = jnp.split(flat, cuts, axis=-1) if cuts.size else [flat]
        leaves = [
            jnp.reshape(p, lead + s).astype(d)
            for p, s, d in zip(parts, self.shapes, self.dtypes, strict=True)
        ]
        return jax.tree.unflatten(self.treedef, leaves)
