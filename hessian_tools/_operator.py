"""The operator protocol: one normal form that every algorithm consumes.

A ``LinearMap`` is a pure product ``matvec(v, *operands)`` plus its
``operands`` (params, data, a matrix: the arrays, which are traced
arguments of compiled code, never constants), the ``Layout`` of a vector,
and how to apply it to a stack of vectors, its *batching* (``"map"``: one after another with
``lax.map``; ``"vmap"``: batched). An optional ``prepare(*operands)`` returns
a product that shares work between many products at one point (for the
Hessian, one ``jax.linearize`` of the gradient: the forward pass once).

Every operator produces one (``CurvatureOperator.linear_map``), and
``as_linear_map`` normalises what a user passes (an operator, a square
array, or a ``LinearMap``), as jax's ``sparse/linalg.py`` does with its
``_normalize_matvec``. ``LinearMap`` is a pytree whose only leaves are the
operands, so it is passed *into* jitted solvers: the same loss and shapes
(a new checkpoint, say) reuse the compiled code, because ``matvec``,
``prepare`` and the layout are static and compare equal.

The dense-versus-iterative decision lives here too, in one cost rule on
predicted time (``dense_is_cheaper``).

A block of the Hessian (``wrt=``) is data too: its ``LinearMap`` is the
one of all the variables with a ``mask`` (one 0/1 per leaf, traced), the
product ``v -> m * A(m * v)``, and the solvers draw their start vectors
and probes through ``project`` so that every Krylov space stays in the
block: the masked-out coordinates stay exact zeros, and the zero
eigenvalues of the masked-out subspace never enter a result. Every block
of one loss and shapes so runs the same compiled solvers.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools._checks import all_finite, is_traced
from hessian_tools._tree import Layout

PyTree = Any

__all__ = [
    "LinearMap",
    "apply_batched",
    "apply_first",
    "apply_linear_map",
    "as_linear_map",
    "as_square_matrix",
    "default_batching",
    "dense_is_cheaper",
    "prefer_dense",
    "product_flops",
    "schedule",
]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["operands", "template", "mask", "block_size"],
    meta_fields=["matvec", "layout", "batching", "prepare", "loop"],
)
@dataclasses.dataclass(frozen=True)
class LinearMap:
    """A symmetric linear operator in normal form (see the module docstring).

    Attributes:
        matvec: ``matvec(v, *operands) -> A v``, pure and jittable; ``v`` and
            the result are vectors of ``layout``.
        operands: the arrays the product depends on (a pytree).
        layout: tree structure, leaf shapes and dtypes of a vector.
        batching: ``"map"`` or ``"vmap"``: how a stack of vectors is applied.
        prepare: optional ``prepare(*operands) -> (v -> A v)``, called once
            per compiled solve, sharing work between its products.
        loop: ``"device"``: solvers iterate inside one compiled loop;
            ``"host"``: they iterate from Python, one compiled step each
            (``schedule``).
        template: optional vector (the parameters) whose leaves carry the
            shardings that vectors must have; ``conform`` gives them those.
        mask: optional block selection, a pytree like a vector with one 0-d
            array per leaf (1: in the block, 0: held fixed). The product is
            then ``m * A(m * v)`` and ``project`` zeroes the other leaves.
            Data, not a static setting: every block reuses the compiled
            solvers.
        block_size: the number of coordinates in the block (``dim``); an
            int outside compiled code, traced inside it.
    """

    matvec: Callable
    operands: tuple
    layout: Layout
    batching: str = "map"
    prepare: Callable | None = None
    loop: str = "device"
    template: Any = None
    mask: Any = None
    block_size: Any = None

    @property
    def n(self) -> int:
        """The length of a vector (of all the variables, for a block)."""
        return self.layout.n

    @property
    def dim(self) -> Any:
        """The operator's dimension: ``n``, or the block's size for a masked
        map (the number of eigenvalues; a start vector's Krylov space has at
        most this many vectors)."""
        return self.n if self.block_size is None else self.block_size

    def project(self, v: PyTree) -> PyTree:
        """``v`` (a vector or a stack of them) with the leaves outside the
        block set to zero; ``v`` itself without a mask. Every random start
        vector and probe goes through it."""
        if self.mask is None:
            return v
        return jax.tree.map(lambda m, x: x * m.astype(x.dtype), self.mask, v)

    def stop_gradient(self) -> LinearMap:
        """The map with its operands (and template) out of differentiation;
        the block's mask and size stay as they are (concrete under
        ``jax.jit``, where the size chooses static settings)."""
        return dataclasses.replace(
            self,
            operands=jax.lax.stop_gradient(self.operands),
            template=jax.lax.stop_gradient(self.template),
        )

    def block_indices(self) -> np.ndarray | None:
        """The block's coordinates in the flat (n,) view, ascending (host
        side, from a concrete mask); None without a mask."""
        if self.mask is None:
            return None
        starts = np.cumsum((0, *self.layout.sizes))
        keep = [bool(np.asarray(m)) for m in jax.tree.leaves(self.mask)]
        bounds = zip(starts[:-1], starts[1:], keep, strict=True)
        parts = [np.arange(a, b) for a, b, k in bounds if k]
        return np.concatenate(parts) if parts else np.zeros((0,), np.int64)

    @property
    def dtype(self) -> Any:
        return self.layout.dtype

    def bind(self) -> Callable[[PyTree], PyTree]:
        """The product ``v -> A v``. Call it once inside a compiled function
        and use the result for all products there; every vector is first
        given the parameters' shardings (``conform``)."""
        mv = self.prepare(*self.operands) if self.prepare is not None else None
        if mv is None:
            plain = lambda v: self.matvec(self.conform(v), *self.operands)
        else:
            plain = lambda v: mv(self.conform(v))
        if self.mask is None:
            return plain
        return lambda v: self.project(plain(self.project(v)))

    def conform(self, v: PyTree, lead: int = 0) -> PyTree:
        """``v`` (a vector, or a stack with ``lead`` leading axes) with the
        template's shardings: adding a zero array of the parameter's
        sharding places the values (needed in explicit-sharding mode,
        where a tangent must have its primal's sharding; a no-op on one
        device)."""
        if self.template is None:
            return v
        return jax.tree.map(
            lambda t, x: x + jnp.zeros_like(t, dtype=x.dtype).reshape((1,) * lead + t.shape),
            self.template,
            v,
        )


def apply_batched(mv: Callable, vectors: PyTree, batching: str) -> PyTree:
    """``mv`` applied to each vector of a stack (leaves ``(b, *shape)``). A
    stack of one is applied directly: a loop around it would cost a
    convolution's fast path on CPU (``default_batching``)."""
    if jax.tree.leaves(vectors)[0].shape[0] == 1:
        return jax.tree.map(lambda x: x[None], mv(jax.tree.map(lambda x: x[0], vectors)))
    if batching == "vmap":
        return jax.vmap(mv)(vectors)
    return jax.lax.map(mv, vectors)


def apply_first(mv: Callable, rows: PyTree, count: Any, batching: str) -> PyTree:
    """``mv`` of the first ``count`` vectors of a stack, zeros for the rest
    (``count`` traced: one program whatever it is). Under ``lax.map`` the
    products past ``count`` are skipped (``lax.cond``); under ``vmap`` every
    vector is multiplied and the rest zeroed."""
    index = jnp.arange(jax.tree.leaves(rows)[0].shape[0])
    if batching == "map":

        def one(args):
            i, r = args
            return jax.lax.cond(i < count, mv, lambda r: jax.tree.map(jnp.zeros_like, r), r)

        return jax.lax.map(one, (index, rows))
    products = apply_batched(mv, rows, batching)
    valid = index < count
    return jax.tree.map(
        lambda x: jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0), products
    )


@jax.jit  # products: jax's own options (_compile)
def apply_linear_map(lm: LinearMap, vectors: PyTree) -> PyTree:
    """``A v`` for each vector of a stack, compiled once per operator type and
    shapes (one ``prepare`` shared by the stack)."""
    return apply_batched(lm.bind(), vectors, lm.batching)


@jax.jit
def apply_flat(lm: LinearMap, vs: jax.Array) -> jax.Array:
    """``A v`` for the flat rows (k, n) of ``vs``: one program per operator
    type and k."""
    return lm.layout.ravel(apply_batched(lm.bind(), lm.layout.unravel(vs), lm.batching))


# rows per product program of a block under lax.map (block_rows): a padded
# row costs no product there, so one width serves every block
_MAP_ROWS = 32


@jax.jit
def _apply_first(lm: LinearMap, vs: jax.Array, count: jax.Array) -> jax.Array:
    """``A v`` for the first ``count`` flat rows of ``vs`` (k, n), zeros for
    the rest, mapped row by row (``lax.map``) with the product skipped
    (``lax.cond``) past ``count``: one program per operator type and k,
    whatever the count."""
    mv = lm.bind()
    product = lambda u: lm.layout.ravel(mv(lm.layout.unravel(u)))
    return apply_first(product, vs, count, "map")


def block_rows(lm: LinearMap, idx: np.ndarray, rows: np.ndarray, cap: int) -> np.ndarray:
    """``A r`` for a block's flat rows (k, n_block) on the host, through the
    masked map of all the variables (n wide): the rows are placed at the
    block's coordinates ``idx`` on the host, so that every block, whatever
    its size, reuses the same compiled programs (and the host work compiles
    none). A map applied by ``lax.map`` takes chunks of 32 rows, the last
    one padded and its padding skipped (``_apply_first``: one program); by
    ``vmap``, where padding costs products, chunks of power-of-two sizes at
    most ``cap`` (a few programs).

    Raises:
        FloatingPointError: a product returned NaN or inf.
    """
    k, out = rows.shape[0], np.empty(rows.shape, np.dtype(lm.dtype))
    start = 0
    while start < k:
        if lm.batching == "map":
            size = min(_MAP_ROWS, cap)
            take = min(size, k - start)
        else:
            size = take = 1 << int(np.log2(max(1, min(cap, k - start))))
        wide = np.zeros((size, lm.n), np.dtype(lm.dtype))
        wide[:take, idx] = rows[start : start + take]
        if lm.batching == "map":
            part = _apply_first(lm, jax.device_put(wide), np.int32(take))
        else:
            part = apply_flat(lm, jax.device_put(wide))
        part = np.asarray(part)[:take, idx]
        if not np.all(np.isfinite(part)):
            raise FloatingPointError(
                f"an operator product returned NaN or inf (products {start + 1} to "
                f"{start + take} of the block); check the loss and params."
            )
        out[start : start + take] = part
        start += take
    return out


def default_batching() -> str:
    """How blocks of products are applied when nothing else is known:
    ``lax.map`` on CPU, where a sequential map of a linearised MLP HVP was
    25-50% faster per product than ``vmap`` and holds the activations once,
    and ``vmap`` on accelerators."""
    return "map" if jax.default_backend() == "cpu" else "vmap"


def _inner_jaxprs(value: Any):
    """The jaxprs held by an equation's parameter (pjit, scan, while, cond,
    custom derivatives)."""
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from _inner_jaxprs(item)
    elif hasattr(value, "eqns"):
        yield value
    elif hasattr(getattr(value, "jaxpr", None), "eqns"):
        yield value.jaxpr


def _has_convolution(jaxpr: Any) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            return True
        for param in eqn.params.values():
            if any(_has_convolution(inner) for inner in _inner_jaxprs(param)):
                return True
    return False


@functools.cache
def _schedule(matvec: Callable, layout: Layout, operand_structs: tuple, backend: str):
    if backend != "cpu":
        return "vmap", "device"
    operands = jax.tree.unflatten(operand_structs[0], list(operand_structs[1]))
    jaxpr = jax.make_jaxpr(matvec)(layout.structs(), *operands).jaxpr
    if _has_convolution(jaxpr):
        return "vmap", "host"
    return "map", "device"


def schedule(matvec: Callable, operands: tuple, layout: Layout) -> tuple[str, str]:
    """``(batching, loop)`` for a product: how solvers apply a stack of vectors
    and where they iterate. The rule, the same for every model:

    * On accelerators: ``vmap`` and compiled loops.
    * On CPU, for products without convolutions (MLPs, attention):
      ``lax.map`` (a linearised HVP mapped over vectors was 25-50% faster
      per product than ``vmap``) and compiled loops.
    * On CPU, for products with a convolution: ``vmap``, and solvers that
      iterate from Python, one compiled step each. XLA's CPU backend leaves
      the backward convolutions of an HVP inside a loop body in a slow,
      non-canonical form (jax-ml/jax#12868): measured on a Flax NNX CNN on
      digits (n = 1,946), an HVP cost 3-4x a standalone one inside
      ``lax.while_loop`` or ``lax.map``, and 0.94x when the loop runs in
      Python; ``vmap`` over 8 vectors cost 46 ms a column against 179 with
      ``lax.map``.

    The product is traced once (no FLOPs) to look for convolutions; the
    answer is cached per product, layout and operand shapes.
    """
    leaves, treedef = jax.tree.flatten(operands)
    structs = tuple(jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in leaves)
    return _schedule(matvec, layout, (treedef, structs), jax.default_backend())


# --------------------------------------------------------------------------
# Normalising what users pass


def as_square_matrix(a: Any) -> jax.Array:
    """``a`` as a floating (n, n) array (finite, when it can be checked)."""
    matrix = jnp.asarray(a)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(
            "op must be a CurvatureOperator (e.g. HessianOperator) or a square (n, n) "
            f"array; got an array of shape {matrix.shape}."
        )
    if not jnp.issubdtype(matrix.dtype, jnp.floating):
        matrix = matrix.astype(jnp.result_type(float))
    if not is_traced(matrix) and not all_finite(matrix):
        raise FloatingPointError("the matrix holds NaN or inf entries.")
    return matrix


def _check_array_like(op: Any) -> None:
    if callable(op) or not hasattr(op, "shape"):
        raise TypeError(
            "op must be a CurvatureOperator (e.g. HessianOperator), a square array or a "
            f"LinearMap; got {type(op).__name__}. Wrap a function v -> A v in "
            "hessian_tools.MatvecOperator."
        )


def _dense_matvec(v: jax.Array, matrix: jax.Array) -> jax.Array:
    return matrix @ v


def as_linear_map(op: Any, *, linearize: bool = True) -> LinearMap:
    """The ``LinearMap`` of a ``CurvatureOperator``, a square array or a
    ``LinearMap``.

    Args:
        op: what the user passed as the operator.
        linearize: let the operator share work between products (its
            ``prepare``); False gives the plain product, which holds less
            memory (no stored activations).

    Raises:
        TypeError: a function or other object that is none of these (wrap a
            function in ``MatvecOperator``).
        ValueError: an array that is not square.
    """
    if isinstance(op, LinearMap):
        return op if linearize else dataclasses.replace(op, prepare=None)
    linear_map = getattr(op, "linear_map", None)
    if linear_map is not None:
        return linear_map(linearize=linearize)
    _check_array_like(op)
    matrix = as_square_matrix(op)
    layout = Layout.of(jax.ShapeDtypeStruct((matrix.shape[0],), matrix.dtype))
    return LinearMap(_dense_matvec, (matrix,), layout, "vmap", None, "device")


# --------------------------------------------------------------------------
# Dense or iterative: the one cost rule, on predicted time

#: Largest explicit (n, n) array decomposed densely by default: ``eigh`` of
#: it takes about a second on a 2-core CPU, less than compiling a solver.
DENSE_MATRIX_MAX = 2048

#: ``eigh`` of an (n, n) matrix costs about ``EIGH_FLOPS * n^3`` flops at the
#: rate at which an HVP's flops run. Measured on the 2-core CPU (float32):
#: ``eigvalsh`` of n = 2,000 took 10.3 s and ``eigh`` 12.2 s, where an n^3
#: matrix product ran at 41 GFLOP/s and the HVPs of the digits MLPs at
#: 25-36 GFLOP/s (XLA's own count): 40 at the HVP's rate.
EIGH_FLOPS = 40

#: The fixed part of a Lanczos step (the loop, the acceptance test's
#: bookkeeping), in flops at the HVP's rate: about 40 us.
STEP_FLOPS = 1e6


def lanczos_step_flops(n: int, basis_size: int) -> float:
    """The work of one Lanczos step beside its product: two Gram-Schmidt
    passes against ``basis_size`` vectors (8 m n flops), the ``eigh`` of the
    projected (m, m) matrix that tests acceptance, and ``STEP_FLOPS``."""
    m = int(basis_size)
    return 8.0 * m * n + EIGH_FLOPS * float(m) ** 3 + STEP_FLOPS


def dense_is_cheaper(
    n: int,
    iterative_matvecs: int,
    *,
    explicit: bool,
    hvp_flops: float | None = None,
    basis_size: int = 30,
) -> bool:
    """Whether the exact dense path is predicted to take no more time than
    the iterative one (compilation aside: compiled code is reused).

    Both sides are predicted in flops at the rate an HVP's flops run, so
    the machine's speed cancels:

    * dense: n products to form the matrix, then ``eigh``:
      ``n F + EIGH_FLOPS n^3``;
    * iterative: ``iterative_matvecs`` steps, each a product and the
      step's own work: ``N (F + lanczos_step_flops(n, m))``;

    ``F`` the product's flops (``hvp_flops``, from XLA's cost analysis:
    ``product_flops``). Unknown (None), the products are taken to dominate
    both sides and the rule counts them: dense when ``n <= N``.

    For an explicit array, products cost nothing next to ``eigh``, which
    stays below a second up to ``DENSE_MATRIX_MAX``, less than compiling a
    solver: dense up to there.

    Measured on the 2-core CPU: a 2,410-parameter MLP (F = 3.3e7 flops, an
    HVP in 1.3 ms), 12 eigenpairs at both ends: Lanczos 153 HVPs in 0.33 s
    warm, the dense path 2,410 HVPs and ``eigh`` in 29 s; the rule predicts
    Lanczos about 100x faster there.
    """
    if explicit:
        return n <= DENSE_MATRIX_MAX
    matvecs = max(int(iterative_matvecs), 1)
    if hvp_flops is None:
        return n <= matvecs
    f = float(hvp_flops)
    dense = n * f + EIGH_FLOPS * float(n) ** 3
    return dense <= matvecs * (f + lanczos_step_flops(n, basis_size))


def product_flops(lm: LinearMap) -> float | None:
    """Flops of one product by XLA's cost analysis of the lowered product
    (traced and lowered, not compiled); None where the backend gives none.
    A product that loops over batches counts the loop body once."""
    try:
        lowered = jax.jit(lm.matvec).lower(lm.layout.structs(), *lm.operands)
        cost = lowered.cost_analysis()
    except Exception:  # an analysis the backend does not offer
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    flops = float((cost or {}).get("flops", 0.0))
    return flops if flops > 0 else None


def prefer_dense(op: Any, iterative_matvecs: int, basis_size: int) -> bool:
    """``dense_is_cheaper`` for an operator, ``LinearMap`` or square array, the
    product's flops read from XLA (``product_flops``) only where they can
    decide: when n exceeds the iterative products, dense is most favoured
    by the cheapest product (about 2 n flops), and if even that loses, no
    product is lowered (``eigenpairs(op, 1)`` of a large model)."""
    n = num_elements_of(op)
    if is_explicit(op):
        return dense_is_cheaper(n, iterative_matvecs, explicit=True)
    cheapest = dict(explicit=False, hvp_flops=2.0 * n, basis_size=basis_size)
    if n > iterative_matvecs and not dense_is_cheaper(n, iterative_matvecs, **cheapest):
        return False
    flops = product_flops(as_linear_map(op, linearize=False))
    return dense_is_cheaper(
        n, iterative_matvecs, explicit=False, hvp_flops=flops, basis_size=basis_size
    )


def is_explicit(op: Any) -> bool:
    """True for a plain array (not an operator or ``LinearMap``)."""
    return not isinstance(op, LinearMap) and not hasattr(op, "linear_map")


def num_elements_of(op: Any) -> int:
    """n of an operator, ``LinearMap`` or square array (static)."""
    if isinstance(op, LinearMap):
        return op.n
    if hasattr(op, "linear_map"):
        return int(op.n)
    _check_array_like(op)
    shape = np.shape(op)
    if len(shape) != 2 or shape[0] != shape[1]:
        as_square_matrix(op)  # raises, naming the shape
    return int(shape[0])
