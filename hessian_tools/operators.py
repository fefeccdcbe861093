"""Hessian-vector products and curvature matrices as matrix-free linear operators.

The unit of cost everywhere in hessian_tools is one Hessian-vector product
(HVP). ``hvp`` computes it by forward-over-reverse differentiation
(``jvp`` of ``grad``), which costs about two to three gradient evaluations and
never forms the Hessian (Pearlmutter 1994, "Fast exact multiplication by the
Hessian").

``CurvatureOperator`` is the user-facing operator: products with pytrees,
flat vectors and blocks, ``to_dense``, a scipy ``LinearOperator``. Every
operator also produces its ``LinearMap`` (``hessian_tools._operator``), the
one normal form that the spectral algorithms consume: a pure product whose
operands (params, data) are traced arguments, never closed over, so a new
operator for the same loss and shapes (one per training checkpoint, say)
reuses the compiled code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools._checks import (
    explain_nnx_errors,
    is_traced,
    require_finite,
)
from hessian_tools._chunks import chunks, fit
from hessian_tools._compile import prepare_lapack
from hessian_tools._data import Data
from hessian_tools._hessian import (
    Loss,
    PyTree,
    as_vector,
    check_scalar_loss,
    check_seconds,
    checked_value_and_grad,
    hessian_products,
    hvp_tree,
    value_and_grad,
    wrapped_loss,
)
from hessian_tools._operator import LinearMap, apply_flat, block_rows, schedule
from hessian_tools._params import Partition
from hessian_tools._tree import Layout

__all__ = ["CurvatureOperator", "HessianOperator", "MatvecOperator", "hvp"]

# --------------------------------------------------------------------------
# The HVP itself


def hvp(f: Loss, params: PyTree, v: PyTree, *args: Any, wrt: Any = None) -> PyTree:
    """Hessian-vector product ``H(params) @ v`` of the scalar loss ``f``.

    Computed by forward-over-reverse automatic differentiation
    (``jax.jvp`` of ``jax.grad``), Pearlmutter (1994). Costs one HVP, about
    two to three gradients; the Hessian is never formed.

    Args:
        f: loss ``f(params, *args) -> scalar``.
        params: point at which the Hessian is taken; any pytree. Its
            floating-point array leaves are the variables, every other leaf
            is held fixed (``hessian_tools._params``).
        v: direction, a pytree of the variables (params' structure, with
            None where a leaf is not a variable) or shaped like the whole of
            params (its variable leaves are used); cast to the params' dtypes.
        *args: further arguments of ``f`` (data), passed through unchanged.
        wrt: restrict the variables to a block: a key-path pattern (a
            regular expression searched in each leaf's key path, e.g.
            ``"layer1"``), a pytree of booleans shaped like params (or a
            prefix), or a predicate on key paths.

    Returns:
        A pytree of the variables (like ``params`` for a plain pytree of
        floating arrays).

    Works under ``jax.jit`` and ``jax.vmap`` (map over ``v`` for several
    products at once). Structure and scalar-ness of the loss are checked at
    trace time; finiteness is not (use ``HessianOperator``, which checks it).

    Raises:
        ValueError: ``v`` does not match ``params``; the loss is not a scalar.
        TypeError: a params leaf is not floating point.

    Example:
        >>> import jax.numpy as jnp, hessian_tools as ht
        >>> f = lambda p: jnp.sum(p["w"] ** 3)
        >>> ht.hvp(f, {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([1.0, 0.0])})
        {'w': Array([6., 0.], dtype=float32)}
    """
    partition = Partition.of(params, wrt)
    variables, fixed = partition.split(params)
    check_scalar_loss(f, params, args, partition)
    v = as_vector(partition, Layout.of(variables), v, "v")
    return hvp_tree(wrapped_loss(f, partition), variables, v, (fixed, *args))


def _sharded(tree: PyTree) -> bool:
    """Whether a leaf of ``tree`` lives on several devices."""
    for x in jax.tree.leaves(tree):
        sharding = getattr(x, "sharding", None)
        if sharding is not None and len(getattr(sharding, "device_set", ())) > 1:
            return True
        if is_traced(x) and len(getattr(jax.typeof(x).sharding, "mesh", {}).shape or {}) > 0:
            return True
    return False


def _dense_sharding(tree: PyTree, n: int) -> Any:
    """Where an (n, n) matrix of the params' operator goes: its rows spread
    over every axis of the params' mesh when they are sharded (replicated
    when n does not divide evenly), the default device otherwise."""
    for x in jax.tree.leaves(tree):
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding) and len(sharding.device_set) > 1:
            mesh = sharding.mesh
            rows = tuple(mesh.axis_names) if n % mesh.size == 0 else None
            return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(rows, None))
    return None


def _require_finite(*named: tuple[str, PyTree]) -> None:
    """``FloatingPointError`` naming the first non-finite ``(name, tree)``."""
    for name, tree in named:
        require_finite(name, tree)


@jax.jit  # a product: jax's own options (_compile)
def _apply(lm: LinearMap, v: PyTree) -> PyTree:
    return lm.bind()(v)


def _stack_lead(layout: Layout, v: Any) -> tuple[int, ...]:
    """``(k,)`` when ``v`` is a stack of k vectors of ``layout`` (leaves
    ``(k, *shape)``), else ``()``."""
    leaves = jax.tree.leaves(v)
    if layout.is_flat(v) or jax.tree.structure(v) != layout.treedef:
        return ()
    if len(leaves) != len(layout.shapes):
        return ()
    if all(
        np.ndim(x) == len(s) + 1 and tuple(np.shape(x)[1:]) == s
        for x, s in zip(leaves, layout.shapes, strict=True)
    ):
        leads = {np.shape(x)[0] for x in leaves}
        if len(leads) == 1:
            return (leads.pop(),)
    return ()


# --------------------------------------------------------------------------
# Operators


class CurvatureOperator:
    """Base of the symmetric n x n curvature operators (Hessian, GGN, ...).

    Subclasses implement ``linear_map(linearize)``. ``params`` and ``wrt``
    fix the variables (``hessian_tools._params``: the floating-point array
    leaves, narrowed by ``wrt``) and so the layout of a vector; the flat
    order is that of ``jax.flatten_util.ravel_pytree`` of the variables.

    Attributes:
        chunk_size: columns per vectorised product in ``matmat`` and
            ``to_dense`` (None: automatic, ~64 MB of vectors per chunk).
        batching: how a stack of vectors is applied, ``"map"`` (sequential
            ``lax.map``) or ``"vmap"``; None: the library's rule
            (``hessian_tools._operator.schedule``).
        loop: where solvers iterate, ``"device"`` (one compiled loop) or
            ``"host"`` (from Python, one compiled step each); None: the
            rule (``schedule``: from Python on CPU for convolutions, whose
            HVPs are 3-4x slower inside compiled loops there).
    """

    chunk_size: int | None = None
    batching: str | None = None
    loop: str | None = None

    def __init__(self, params: PyTree, wrt: Any = None):
        self.params = params
        self.partition = Partition.of(params, wrt)
        self.variables, self.fixed = self.partition.split(params)
        self.layout = Layout.of(self.variables)
        self.shape: tuple[int, int] = (self.layout.n, self.layout.n)
        self.dtype = self.layout.dtype

    @property
    def n(self) -> int:
        """Number of parameters, the side of the matrix."""
        return self.shape[0]

    def linear_map(self, linearize: bool = True) -> LinearMap:
        """The operator in normal form (see ``hessian_tools._operator``);
        ``linearize`` lets products at one point share work."""
        raise NotImplementedError

    def _linear_map(self, matvec: Callable, operands: tuple, prepare=None) -> LinearMap:
        """The ``LinearMap`` of a product, its batching and loop by the rule
        unless set on the operator."""
        batching, loop = schedule(matvec, operands, self.layout)
        batching, loop = self.batching or batching, self.loop or loop
        template = self.variables if _sharded(self.variables) else None
        return LinearMap(matvec, operands, self.layout, batching, prepare, loop, template)

    # -- layout --------------------------------------------------------
    def vector(self, v: Any, name: str = "v") -> PyTree:
        """``v`` (flat, a pytree of the variables, or one shaped like params)
        as a pytree of the variables."""
        return as_vector(self.partition, self.layout, v, name)

    def ravel(self, tree: PyTree) -> jax.Array:
        """Flatten a vector into an (n,) array (ravel_pytree order of the
        variables)."""
        return self.layout.ravel(self.vector(tree, name="vector"))

    def unravel(self, flat: jax.Array) -> PyTree:
        """Inverse of ``ravel``: an (n,) vector back into a pytree of the
        variables (like params, for a plain pytree of floating arrays)."""
        flat = jnp.asarray(flat)
        if flat.shape != (self.n,):
            raise ValueError(f"expected a flat vector of shape ({self.n},); got {flat.shape}.")
        return self.layout.unravel(flat)

    # -- products ------------------------------------------------------
    def matvec(self, v: PyTree | jax.Array) -> PyTree | jax.Array:
        """Product with ``v``: a pytree like params gives a pytree back, a flat
        (n,) array a flat array, an (n, k) array the (n, k) product. Costs one
        HVP per column.

        Raises:
            ValueError: ``v`` matches neither layout ("expected n = ...").
        """
        if self.layout.is_flat(v) and np.ndim(v) == 2:
            return self.matmat(v)
        flat = self.layout.is_flat(v)
        tree = self.vector(v, name="v")
        out = self.from_space(_apply(self.linear_map(linearize=False), self.to_space(tree)))
        return self.layout.ravel(out) if flat else out

    __matmul__ = matvec

    def matmat(self, vs: jax.Array) -> jax.Array:
        """Product with the columns of an (n, k) array, in vectorised chunks
        of ``chunk_size`` columns (one linearisation per chunk). Costs k HVPs."""
        vs = jnp.asarray(vs, dtype=self.dtype)
        if vs.ndim != 2 or vs.shape[0] != self.n:
            raise ValueError(f"expected an array of shape (n, k) = ({self.n}, k); got {vs.shape}.")
        return self._rows(vs.T).T

    def _chunk(self, k: int) -> int:
        if self.chunk_size is not None:
            return max(1, min(k, int(self.chunk_size)))
        # with vmap the HVP's intermediates scale with the chunk too: set
        # chunk_size for very large models
        return min(k, fit(self.n * jnp.dtype(self.dtype).itemsize))

    def _block_cap(self, lm: LinearMap) -> int:
        """The largest chunk of a block's products: ``chunk_size``, or what
        fits for the n-wide vectors of all the variables."""
        return self.chunk_size or fit(lm.n * jnp.dtype(lm.dtype).itemsize)

    def _rows(self, rows: jax.Array) -> jax.Array:
        """``A r`` for the rows of ``rows`` (k, n), chunk by chunk (``_chunks``)."""
        lm, k = self.linear_map(), rows.shape[0]
        idx = lm.block_indices()
        if idx is not None:  # a block: the products of the space of all variables
            return jax.device_put(block_rows(lm, idx, np.asarray(rows), self._block_cap(lm)))
        out = [apply_flat(lm, c)[:take] for _, take, c in chunks(rows, self._chunk(k))]
        return jnp.concatenate(out) if len(out) > 1 else out[0]

    def to_space(self, v: Any) -> Any:
        """``v`` (a vector, or a stack of them with a leading axis, or an
        (n, k) flat array) in the layout of the operator's ``linear_map``:
        itself, except for a block of a ``HessianOperator``, whose map acts
        on all the variables (zeros outside the block)."""
        return v

    def from_space(self, stack: PyTree) -> PyTree:
        """Inverse of ``to_space`` for a stack of vectors of the map's layout
        (an ``Eigenpairs``' ``tree_vectors``): the block's leaves."""
        return stack

    def to_dense(self, progress: bool = False) -> jax.Array:
        """The (n, n) matrix, built from n HVPs against basis vectors in
        chunks of ``chunk_size``.

        Row blocks are written into one preallocated host buffer and
        symmetrised there block by block, ``(H + H^T) / 2`` (forward-over-
        reverse products agree with the transpose only up to rounding), then
        moved to the device once: with its rows sharded over the
        parameters' mesh when they are sharded. Peak memory: about twice the n^2 result plus one
        chunk.

        Args:
            progress: show a progress bar of HVPs (n in all).

        Raises:
            FloatingPointError: the Hessian has a NaN or inf entry (e.g. a
                loss like ``|x|^1.5`` at 0, whose gradient is finite).
        """
        return self._to_dense(progress)[0]

    def _to_dense(self, progress: bool = False) -> tuple[jax.Array, float]:
        """``to_dense``'s matrix, and an estimate of the spectral norm of its
        own error (the products'), which the dense eigenvalues' bounds add
        (``eigen.dense_eigenpairs``): the Frobenius norm of the rounding of
        the rows of leaves in a lower precision than the matrix (``eps`` of
        the leaf times the rows' norm: a float32 leaf's products are float32
        in a float64 matrix), plus 4 times the Frobenius norm of the
        antisymmetric part the products had before symmetrisation (an exact
        Hessian is symmetric; a float32 part inside a float64 loss, such as a
        softmax, shows there). Float64 products give about 1e-16 relative."""
        from hessian_tools._progress import progress_bar

        n, chunk = self.n, self._chunk(self.n)
        lm = self.linear_map()
        within = lm.block_indices()  # a block: products of the masked map
        dense = np.empty((n, n), dtype=np.dtype(self.dtype))
        with progress_bar(n, "dense Hessian", progress) as bar:
            for start in range(0, n, chunk):
                idx = start + np.arange(chunk)
                stop = min(start + chunk, n)
                if within is not None:
                    basis = np.asarray(idx[: stop - start, None] == np.arange(n)[None, :])
                    block = block_rows(
                        lm, within, basis.astype(np.dtype(self.dtype)), self._block_cap(lm)
                    )
                else:
                    basis = jnp.asarray(idx[:, None] == np.arange(n)[None, :], dtype=self.dtype)
                    block = np.asarray(apply_flat(lm, basis)[: stop - start])
                if not np.all(np.isfinite(block)):
                    row, col = np.argwhere(~np.isfinite(block))[0]
                    raise FloatingPointError(
                        f"the Hessian is not finite (NaN or inf), first at entry "
                        f"({start + row}, {col})."
                    )
                dense[start:stop] = block
                bar.update(stop - start)
        eps, low, start = np.finfo(dense.dtype).eps, 0.0, 0
        for size, dtype in zip(self.layout.sizes, self.layout.dtypes, strict=True):
            leaf_eps = np.finfo(np.dtype(dtype)).eps if jnp.issubdtype(dtype, jnp.inexact) else 0
            if leaf_eps > eps:  # rows rounded to the leaf's precision
                rows = dense[start : start + size]  # (the matrix is the wider dtype)
                low += float(leaf_eps**2 * np.vdot(rows, rows))
            start += size
        squares = 0.0  # of the antisymmetric part, (H - H^T) / 2
        for i in range(0, n, chunk):  # in place, one block pair at a time
            for j in range(i, n, chunk):
                upper, lower = (
                    dense[i : i + chunk, j : j + chunk],
                    dense[j : j + chunk, i : i + chunk],
                )
                half = (upper.astype(np.float64) - lower.T.astype(np.float64)) / 2
                squares += (1 if i == j else 2) * float(np.sum(half**2))
                avg = (upper + lower.T) / 2
                dense[i : i + chunk, j : j + chunk] = avg
                dense[j : j + chunk, i : i + chunk] = avg.T
        error = float(np.sqrt(low) + 4 * np.sqrt(squares))
        return jax.device_put(dense, _dense_sharding(self.variables, n)), error

    def as_linear_operator(self):
        """A ``scipy.sparse.linalg.LinearOperator`` (symmetric), e.g. for
        ``scipy.sparse.linalg.eigsh``. Converts to and from numpy per call."""
        from scipy.sparse.linalg import LinearOperator

        def mv(x):
            return np.asarray(self.matvec(jnp.asarray(np.ravel(x), self.dtype)))

        def mm(x):
            return np.asarray(self.matmat(jnp.asarray(x, self.dtype)))

        dtype = np.dtype(self.dtype)
        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, matmat=mm, rmatmat=mm, dtype=dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.n}, dtype={self.dtype})"


class HessianOperator(CurvatureOperator):
    """The Hessian of ``f(params, *args)`` at ``params`` as a linear operator.

    Args:
        f: scalar loss ``f(params, *args)``. It is a static argument of the
            compiled HVP: reuse the same function object to reuse the
            compilation (a new ``lambda`` each time recompiles).
        params: the point, any pytree of floating arrays.
        *args: data passed to ``f``. Arrays are traced arguments, never
            baked into the compiled code. With ``batches=`` they are the
            arguments shared by every batch (BatchNorm statistics, say),
            passed first: ``f(params, *args, *batch_b)``.
        batches: a collection (list, tuple) of argument
            tuples (or lists; any other item is a single argument). Every
            array in a batch carries the samples along axis 0. The operator
            is then the Hessian of the *mean loss over all samples*,
            ``sum_b (size_b / N) f(params, *batch_b)``, where ``size_b`` is
            the leading-axis length of batch b and ``N = sum_b size_b``: for
            equal batch sizes the average over batches (divided by the
            number of batches exactly once); with uneven batches each is
            weighted by its size, so ``f`` must be a per-sample *mean*. The
            batches are stacked once onto the device and every product scans
            over them in compiled code (``hessian_tools._data``).
        check_finite: evaluate the loss and gradient once at construction and
            raise ``FloatingPointError`` if either is NaN or inf (skipped
            inside ``jax.jit``).
        wrt: the Hessian block of some variables only, the others held
            fixed: a key-path pattern (a regular expression searched in
            each leaf's key path as ``jax.tree_util.keystr`` writes it,
            e.g. ``"layer1"`` or ``"attn.*kernel"``), a pytree of booleans
            shaped like params (or a prefix of it, e.g.
            ``{"layer1": True, "layer2": False}``), or a predicate on key
            paths (``lambda path: "layer1" in path``). ``n``, vectors and
            eigenvectors are the block's; the solvers see the Hessian of all
            the floating leaves with the block as a traced mask, so every
            block of one loss and shapes reuses the compiled code (each
            product costs a full HVP). ``op.block(wrt)`` gives another
            block of the same point without new checks.

    Params may be any pytree (an ``eqx.Module``, an NNX ``State``): its
    floating-point array leaves are the variables and every other leaf is
    passed through unchanged; ``n`` counts the variables.

    Products: ``op @ v`` / ``op.matvec(v)`` (pytree in, pytree out; flat
    (n,) in, flat out; (n, k) in, (n, k) out), ``op.to_dense()``,
    ``op.as_linear_operator()``. Each product costs one HVP per batch.

    Raises:
        ValueError: a non-scalar loss; an empty batch collection or batch.
        TypeError: non-floating params; a one-shot iterator as ``batches``.
        FloatingPointError: the loss or gradient is not finite at params (for
            a block: the gradient in all the variables, which its products
            go through).
    """

    def __init__(
        self,
        f: Loss,
        params: PyTree,
        *args: Any,
        batches: Iterable | None = None,
        check_finite: bool = True,
        wrt: Any = None,
    ):
        super().__init__(params, wrt)
        prepare_lapack()  # for the solvers' eigh, while the check compiles
        self.f = f
        self.data = Data.create(args, batches)
        self._select(wrt)
        check_scalar_loss(
            f, params, self.data.example_args(), self._space or self.partition, batches
        )
        self._at_params = None  # (space, loss, gradient) from the check
        if check_finite and not is_traced(self.variables, self.data):
            with explain_nnx_errors("f"):  # e.g. a merge without copy=True
                value, grad = self._value_and_grad(check=True)  # a block's: all variables
            _require_finite(("loss", value), ("gradient", grad))

    def _select(self, wrt: Any) -> None:
        """For a block: the space of all the variables it lies in, and its
        mask there (``linear_map``)."""
        self._space = None
        if wrt is None:
            return
        space = Partition.everything(self.params)
        if space == self.partition:
            return
        self._space = space
        self._space_variables, self._space_fixed = space.split(self.params)
        self._space_layout = Layout.of(self._space_variables)
        dtypes = self._space_layout.dtypes
        within = self.partition.within(space)
        self._mask = jax.tree.unflatten(
            self._space_layout.treedef,
            [np.asarray(s, d) for s, d in zip(within, dtypes, strict=True)],
        )

    def block(self, wrt: Any) -> HessianOperator:
        """The Hessian block of the variables ``wrt`` selects (as in the
        constructor), at the same point and data, the others held fixed.
        No new checks (no gradient), and the same compiled solvers as every
        other block of this loss and shapes (``linear_map``).

        Raises:
            ValueError: ``wrt`` selects no variable (the message lists the
                key paths) or does not match params.
        """
        new = copy.copy(self)
        CurvatureOperator.__init__(new, self.params, wrt)
        new._select(wrt)
        return new

    @property
    def args(self) -> tuple:
        """The fixed data arguments (empty with ``batches=``)."""
        return () if self.data.batched else self.data.groups[0]

    @property
    def num_batches(self) -> int:
        return self.data.num_batches

    def linear_map(self, linearize: bool = True) -> LinearMap:
        """The operator in normal form. For a block (``wrt=``), the Hessian
        in all the floating leaves of params with the block's mask
        (``hessian_tools._operator``): every block of one loss and shapes
        runs the same compiled solvers (``compact_linear_map`` is the map
        in the block's own variables)."""
        if self._space is None:
            return self.compact_linear_map(linearize)
        matvec, prepare = hessian_products(self.f, self._space)
        share = prepare if linearize and not self.data.batched else None
        operands = (self._space_variables, self._space_fixed, self.data)
        batching, loop = schedule(matvec, operands, self._space_layout)
        batching, loop = self.batching or batching, self.loop or loop
        template = self._space_variables if _sharded(self._space_variables) else None
        return LinearMap(
            matvec, operands, self._space_layout, batching, share, loop, template,
            mask=self._mask, block_size=self.n,
        )  # fmt: skip

    def compact_linear_map(self, linearize: bool = True) -> LinearMap:
        """The map in the operator's own variables (for a block, compiled
        for that block; for wrappers that change the product)."""
        matvec, prepare = hessian_products(self.f, self.partition)
        share = prepare if linearize and not self.data.batched else None
        return self._linear_map(matvec, (self.variables, self.fixed, self.data), share)

    def to_space(self, v: Any) -> Any:
        if self._space is None:
            return v
        if self.layout.is_flat(v) and np.ndim(v) == 2:  # (n, k) columns
            wide = np.zeros((self._space_layout.n, np.shape(v)[1]), np.dtype(self.dtype))
            wide[self.linear_map(False).block_indices()] = np.asarray(v)  # host only
            return jnp.asarray(wide)
        lead = _stack_lead(self.layout, v)
        tree = self.layout.cast(v) if lead else self.vector(v, name="v0")
        fill = [
            np.zeros(lead + s, d)
            for s, d in zip(self._space_layout.shapes, self._space_layout.dtypes, strict=True)
        ]
        return self.partition.put(self._space, tree, fill)

    def from_space(self, stack: PyTree) -> PyTree:
        if self._space is None:
            return stack
        return self.partition.take(self._space, stack)

    def value_and_grad(self) -> tuple[jax.Array, PyTree]:
        """Loss (the batch-weighted mean) and its gradient with respect to
        the variables, at params."""
        value, grad = self._value_and_grad()
        return value, self.from_space(grad)

    def _product_seconds(self) -> float | None:
        """A product's measured cost for planning a solver's first call:
        the run time of this loss's finiteness check program in the map's
        space (``_hessian.check_seconds``; None where no check ran)."""
        if self._space is None:
            return check_seconds(self.f, self.partition, self.variables, self.fixed, self.data)
        space = (self._space_variables, self._space_fixed, self.data)
        return check_seconds(self.f, self._space, *space)

    def _value_and_grad(self, check: bool = False) -> tuple[jax.Array, PyTree]:
        """Loss and gradient in the map's space: for a block, the gradient in
        all the variables (one compiled program for every block; the block's
        masked products need all of it finite). Computed once: the
        construction's check (``check``: ``checked_value_and_grad``) keeps
        them for later calls (``classify``, ``escape``)."""
        space = self.partition if self._space is None else self._space
        if self._at_params is not None and self._at_params[0] == space:
            return self._at_params[1:]
        run = checked_value_and_grad if check else value_and_grad
        if self._space is not None:
            out = run(self.f, self._space, self._space_variables, self._space_fixed, self.data)
        else:
            out = run(self.f, self.partition, self.variables, self.fixed, self.data)
        if not is_traced(out):
            self._at_params = (space, *out)
        return out


class MatvecOperator(CurvatureOperator):
    """A symmetric operator from your own product ``matvec(v, *operands)``.

    Args:
        matvec: a pure JAX function ``matvec(v, *operands) -> A v``, where
            ``v`` and the result are pytrees like ``example``. Pass arrays it
            depends on as ``operands`` (traced arguments) rather than closing
            over them, and reuse the same function object, so that compiled
            solvers are reused.
        example: a vector of the right layout (a pytree or an array); only
            its structure, shapes and dtypes are used.
        *operands: arrays passed to ``matvec``.
        batching: ``"map"`` or ``"vmap"`` for stacks of products (default: the
            library's rule).

    Example:
        >>> op = ht.MatvecOperator(lambda v, a: a @ v, jnp.zeros(3), jnp.eye(3))
        >>> ht.eigenpairs(op, 1).values
    """

    def __init__(
        self, matvec: Callable, example: PyTree, *operands: Any, batching: str | None = None
    ):
        super().__init__(example)
        if not self.partition.trivial:
            raise TypeError("example must be a pytree of floating-point arrays (a vector).")
        if not callable(matvec):
            raise TypeError(f"matvec must be a function v -> A v; got {type(matvec).__name__}.")
        self._matvec, self.operands, self.batching = matvec, tuple(operands), batching

    def linear_map(self, linearize: bool = True) -> LinearMap:
        del linearize  # nothing to share for a user product
        return self._linear_map(self._matvec, self.operands)
