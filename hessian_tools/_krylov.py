"""The Lanczos kernel: the one Krylov-basis builder behind every spectral method.

``init``, ``step``, ``run`` and the ``ritz`` extraction work on a named loop
state (matfree's ``decomp.py`` pattern) and are pure functions of traced
arrays, so a whole solve runs inside ``jax.jit`` and ``vmap``. Lanczos
(``lanczos``), thick restart (``eigenpairs``), stochastic Lanczos quadrature
(``spectral_density``), the block-Krylov trace and diagonal estimators and
the landscape's curvature metric all use it.

The basis is a pytree of stacked leaves, so that on several devices every
leaf stays a separate array ``(rows, *leaf.shape)`` and keeps its sharding.
On one CPU device it is one ``(rows, n)`` array instead, the leaves raveled
and joined (``Layout.flatten_leaves``): XLA's CPU backend contracts 2-D
stacks many times faster (``_tree.basis_dot``), and one contraction per
Gram-Schmidt pass instead of one per leaf compiles far smaller programs (a
top-10 solve of a 6-leaf MLP: 2.0 s instead of 8.9 s, and 90 MB less peak
memory). ``start`` and ``as_vectors`` convert at the boundary, and the
operator always sees vectors in the params' shapes.

Each step multiplies a block of ``b`` basis vectors (``b = 1`` is plain
Lanczos; ``b > 1`` block Lanczos) and inserts the results one by one,
each orthogonalised against the whole stored basis by classical
Gram-Schmidt applied twice ("twice is enough": Giraud, Langou & Rozloznik
2005, "The loss of orthogonality in the Gram-Schmidt orthogonalization
process"; Parlett 1998, "The Symmetric Eigenvalue Problem", sec. 6.9). Full
reorthogonalisation keeps float32 runs free of "ghost" copies of converged
eigenvalues.

``coeffs[i, j]`` holds the coefficient of ``q_i`` in ``A q_j`` for ``i >= j``
(the lower triangle of ``Q^T A Q``): for ``b = 1`` the diagonal is Lanczos'
alpha and the subdiagonal its beta, the norm of the orthogonalised residual.
A thick restart writes its kept Ritz values on the diagonal and their
coupling to the residual vector below it, so the same matrix is the
arrowhead of Wu & Simon (2000). Diagonal entries and norms are accumulated
in ``acc`` with two-level summation (``_tree.accurate_vdot``).

Breakdown (an invariant subspace) is detected relative to the largest
coefficient seen, ``norm <= breakdown_tol * scale``; the vector inserted is
then zero, and for ``b = 1`` the loop stops there. A non-finite product
stops it with ``status == NONFINITE``; callers raise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hessian_tools._checks import all_finite, as_key, finite_in_program, is_traced
from hessian_tools._operator import LinearMap, apply_batched
from hessian_tools._progress import advance
from hessian_tools._tree import (
    Layout,
    accurate_vdot,
    basis_combine,
    basis_dot,
    get_rows,
    set_row,
)

PyTree = Any

__all__ = [
    "BREAKDOWN",
    "CONVERGED",
    "NONFINITE",
    "RUNNING",
    "State",
    "as_vectors",
    "default_breakdown_tol",
    "flat_product",
    "gram_schmidt",
    "init",
    "insert_products",
    "mark_converged",
    "padded_projection",
    "raise_if_nonfinite",
    "ritz",
    "run",
    "start",
    "start_vector",
    "step",
    "step_rows",
    "unit",
]

# loop status codes
RUNNING, BREAKDOWN, NONFINITE, CONVERGED = 0, 1, 2, 3


class State(NamedTuple):
    """Loop state of the kernel.

    Attributes:
        size: basis vectors filled (rows ``0 .. size - 1``); the last ``block``
            of them are multiplied by the next step.
        basis: stacked, ``num_columns + block`` rows (``Layout.flatten_leaves``);
            rows at and after ``size`` are zero.
        coeffs: ``(num_columns + block, num_columns)`` in the accumulation
            dtype: column j holds the coefficients of ``A q_j`` on ``q_i``,
            ``i >= j`` (the projected matrix), and above the diagonal those
            on the earlier ``q_i``, ``i < j``, which mirror the lower
            triangle up to the products' rounding (read only by
            ``_certify.product_floor``).
        scale: largest coefficient seen (the breakdown reference).
        status: RUNNING, BREAKDOWN, NONFINITE or CONVERGED.
    """

    size: jax.Array
    basis: PyTree
    coeffs: jax.Array
    scale: jax.Array
    status: jax.Array

    @property
    def block(self) -> int:
        return self.coeffs.shape[-2] - self.coeffs.shape[-1]  # also for a batch of states

    @property
    def num_columns(self) -> jax.Array:
        """Basis vectors multiplied so far (= products spent)."""
        return self.size - self.block


def default_breakdown_tol(n: int, dtype: Any) -> float:
    """Relative breakdown threshold ``max(10, sqrt(n)) * eps``.

    Rounding leaves a residual of about eps * ||A|| * sqrt(n) after an exact
    invariant subspace; a legitimately small norm (a tight cluster) is far
    above it in any dtype that resolves the cluster at all.
    """
    return float(max(10.0, np.sqrt(n)) * np.finfo(np.dtype(dtype)).eps)


def gram_schmidt(basis: PyTree, w: PyTree) -> tuple[PyTree, jax.Array]:
    """``w`` orthogonalised against every stacked vector of ``basis`` by
    classical Gram-Schmidt twice, and the summed coefficients ``Q^T w``.

    Zero rows of the basis drop out, so one compiled shape serves a basis
    that is only partly filled.
    """
    h = basis_dot(basis, w)
    w = jax.tree.map(jnp.subtract, w, basis_combine(h, basis))
    h2 = basis_dot(basis, w)
    w = jax.tree.map(jnp.subtract, w, basis_combine(h2, basis))
    return w, h + h2


def unit(w: PyTree, acc: Any) -> tuple[PyTree, jax.Array]:
    nrm = jnp.sqrt(accurate_vdot(w, w, acc))
    safe = jnp.where(nrm > 0, nrm, 1)
    return jax.tree.map(lambda x: (x / safe.astype(x.dtype)).astype(x.dtype), w), nrm


def init(v0: PyTree, num_columns: int, acc: Any) -> State:
    """A state holding the orthonormalised start block.

    Args:
        v0: b stacked start vectors in the stored form; they are
            orthonormalised in order (a dependent one becomes zero).
        num_columns: basis vectors to be multiplied in all (the state holds
            ``num_columns + b`` rows).
        acc: dtype of the coefficients.
    """
    b = jax.tree.leaves(v0)[0].shape[0]
    rows = num_columns + b
    # zeros of the start vectors' own sharding (P(None, *spec) per leaf)
    basis = jax.tree.map(
        lambda x: jnp.broadcast_to(jnp.zeros_like(x[:1]), (rows, *x.shape[1:])), v0
    )
    eps = jnp.finfo(acc).eps

    def insert(i, basis):
        w = get_rows(v0, i)
        ref = jnp.sqrt(accurate_vdot(w, w, acc))
        w, _ = gram_schmidt(basis, w)
        q, nrm = unit(w, acc)
        keep = nrm > 100 * eps * ref
        return set_row(basis, i, jax.tree.map(lambda x: jnp.where(keep, x, 0), q))

    if b > 1:
        basis = lax.fori_loop(0, b, insert, basis)
    else:  # nothing to orthogonalise against: fewer kernels to compile
        q, nrm = unit(get_rows(v0, 0), acc)
        basis = set_row(basis, 0, jax.tree.map(lambda x: jnp.where(nrm > 0, x, 0), q))
    coeffs = jnp.zeros((rows, num_columns), acc)
    # a strong int32 status, as every step leaves it: a weakly typed one
    # compiled the host driver's step twice
    status = jnp.asarray(RUNNING, jnp.int32)
    return State(jnp.asarray(b, jnp.int32), basis, coeffs, jnp.zeros((), acc), status)


def _insert(carry, w, column, slot, acc, breakdown_tol, reorthogonalize):
    """Orthogonalise ``w = A q_column`` against the basis, store its
    coefficients in ``coeffs[:, column]`` and its unit remainder in row
    ``slot``. Without ``reorthogonalize``, only against ``q_column`` and
    ``q_column-1`` (the plain three-term recurrence)."""
    basis, coeffs, scale = carry
    rows = jnp.arange(coeffs.shape[0])
    alpha = accurate_vdot(get_rows(basis, column), w, acc)
    if reorthogonalize:
        w, h = gram_schmidt(basis, w)
    else:
        h = jnp.where((rows >= column - 1) & (rows <= column), basis_dot(basis, w), 0)
        w = jax.tree.map(jnp.subtract, w, basis_combine(h, basis))
    q, beta = unit(w, acc)
    col = jnp.where((rows > column) & (rows < slot), h.astype(acc), 0)
    scale = jnp.maximum(scale, jnp.maximum(jnp.max(jnp.abs(col)), jnp.abs(alpha)))
    # above the diagonal: q_i . A q_column for i < column, the mirror of what
    # the earlier columns stored below it. T is read from the lower triangle
    # only; the difference measures the products' own rounding (_certify).
    col = jnp.where(rows < column, h.astype(acc), col)
    scale = jnp.maximum(scale, beta)
    broken = beta <= breakdown_tol * scale
    col = jnp.where(rows == column, alpha, col)
    col = jnp.where(rows == slot, jnp.where(broken, 0, beta), col)
    q = jax.tree.map(lambda x: jnp.where(broken, jnp.zeros_like(x), x), q)
    column = jnp.asarray(column, jnp.int32)
    coeffs = lax.dynamic_update_slice(coeffs, col[:, None], (jnp.zeros_like(column), column))
    return (set_row(basis, slot, q), coeffs, scale), broken


def step(
    state: State,
    mv: Callable,
    *,
    batching: str,
    acc: Any,
    breakdown_tol: Any,
    reorthogonalize: bool = True,
) -> State:
    """One step: multiply the last ``b`` basis vectors (one block product),
    then insert the ``b`` results."""
    products = apply_batched(mv, step_rows(state), batching)
    return insert_products(
        state,
        products,
        acc=acc,
        breakdown_tol=breakdown_tol,
        reorthogonalize=reorthogonalize,
    )


def step_rows(state: State) -> PyTree:
    """The rows a step multiplies: the last ``b`` basis vectors."""
    return get_rows(state.basis, state.size - state.block, state.block)


def insert_products(
    state: State,
    products: PyTree,
    *,
    acc: Any,
    breakdown_tol: Any,
    reorthogonalize: bool,
) -> State:
    """The second half of ``step``: insert the products of ``step_rows``
    (a stack of ``b``); a non-finite one sets the status NONFINITE and
    inserts zeros."""
    b = state.block
    first = state.size - b
    finite = finite_in_program(products)
    products = jax.tree.map(lambda x: jnp.where(finite, x, 0), products)
    carry = (state.basis, state.coeffs, state.scale)

    def one(i, c):
        carry, nbroken = c
        carry, broken = _insert(
            carry,
            get_rows(products, i),
            first + i,
            state.size + i,
            acc,
            breakdown_tol,
            reorthogonalize,
        )
        return carry, nbroken + broken.astype(jnp.int32)

    if b == 1:
        carry, nbroken = one(0, (carry, jnp.asarray(0, jnp.int32)))
    else:
        carry, nbroken = lax.fori_loop(0, b, one, (carry, jnp.asarray(0, jnp.int32)))
    status = jnp.where(~finite, NONFINITE, jnp.where(nbroken == b, BREAKDOWN, RUNNING))
    basis, coeffs, scale = carry
    return State(state.size + b, basis, coeffs, scale, status.astype(state.status.dtype))


def mark_converged(state: State, monitor: Callable[[State], jax.Array] | None) -> State:
    """``state`` with status CONVERGED where it is running and
    ``monitor(state)`` accepts it."""
    if monitor is None:
        return state
    done = monitor(state)
    return state._replace(
        status=jnp.where((state.status == RUNNING) & done, CONVERGED, state.status)
    )


def run(
    state: State,
    mv: Callable,
    num_columns: Any,
    *,
    batching: str,
    acc: Any,
    breakdown_tol: Any,
    reorthogonalize: bool = True,
    monitor: Callable[[State], jax.Array] | None = None,
    progress: Any = None,
    stop_on_breakdown: bool = True,
) -> State:
    """Steps until ``num_columns`` basis vectors are multiplied, or breakdown,
    a non-finite product, or ``monitor(state)`` returns True (CONVERGED).

    ``num_columns`` may be traced; everything runs in one ``lax.while_loop``.
    ``progress``: a progress-bar token (``_progress``) advanced every step.
    ``stop_on_breakdown=False`` goes on through a breakdown (the vectors
    inserted are then zero), so that the products spent do not depend on
    the data: the count stays static under ``jax.jit``.
    """

    def cond(s):
        go = (s.status == RUNNING) | ((s.status == BREAKDOWN) & (not stop_on_breakdown))
        return (s.num_columns < num_columns) & go

    def body(s):
        s = step(
            s,
            mv,
            batching=batching,
            acc=acc,
            breakdown_tol=breakdown_tol,
            reorthogonalize=reorthogonalize,
        )
        s = mark_converged(s, monitor)
        if progress is not None:
            advance(progress, s.block)
        return s

    return lax.while_loop(cond, body, state)


def flat_product(lm: LinearMap) -> Callable:
    """The operator's product on the kernel's stored form, bound (and, for a
    Hessian, linearised) here: call once inside a compiled function."""
    layout, mv = lm.layout, lm.bind()
    return lambda v: layout.flatten_leaves(mv(layout.unflatten_leaves(v)))


def start(lm: LinearMap, v0: PyTree, num_columns: int, acc: Any) -> State:
    """The initial state for the stacked start vectors ``v0`` (leaves
    ``(b, *leaf.shape)``, in the operator's layout), projected onto the
    operator's block (``LinearMap.project``) so that the Krylov space stays
    in it."""
    return init(lm.layout.flatten_leaves(lm.conform(lm.project(v0), lead=1)), num_columns, acc)


def as_vectors(stack: PyTree, layout: Layout) -> PyTree:
    """Rows of the kernel's basis (the stored form, k rows) as vectors in
    ``layout``'s shapes (leaves ``(k, *leaf.shape)``)."""
    return layout.unflatten_leaves(stack)


# --------------------------------------------------------------------------
# Start vectors and checks


def start_vector(lm: LinearMap, key: Any, v0: Any, *, name: str = "v0") -> Any:
    """A start vector in the operator's layout: ``v0`` (a pytree like params
    or a flat (n,) array) or a Gaussian one drawn from ``key``.

    ``v0`` may also be a block of vectors: an (n, k) flat array, or a stacked
    pytree whose leaves carry a leading axis k (an ``Eigenpairs``'
    ``tree_vectors``). Their sum starts the Krylov space, which then holds
    each of them after k steps: started from k exact eigenvectors, Lanczos
    finds them in k products.

    Raises:
        ValueError: ``v0`` of the wrong size or structure, zero or not finite.
    """
    layout = lm.layout
    if v0 is None:
        key = as_key(key)
        return layout.unravel(jax.random.normal(key, (layout.n,), layout.dtype))
    stack = _as_stack(layout, v0)
    if stack is not None:
        v0 = jax.tree.map(lambda x: jnp.sum(x, axis=0), stack)
    v0 = layout.vector(v0, name=name)
    _check_start(v0, name)
    return v0


def _as_stack(layout: Layout, v: Any) -> Any:
    """``v`` as a stack of vectors (leaves ``(k, *shape)``), or None when it
    is a single vector."""
    leaves = jax.tree.leaves(v)
    if jax.tree.structure(v) == layout.treedef and len(leaves) == len(layout.shapes):
        lead = {jnp.shape(x)[:1] for x in leaves}
        stacked = all(
            jnp.ndim(x) == len(s) + 1 and jnp.shape(x)[1:] == s
            for x, s in zip(leaves, layout.shapes, strict=True)
        )
        if stacked and len(lead) == 1:  # a stack, like tree_vectors
            return layout.cast(v)
    if layout.is_flat(v):
        arr = jnp.asarray(v)
        if arr.ndim == 2 and arr.shape[0] == layout.n:  # (n, k) columns, like .vectors
            return layout.unravel(arr.T.astype(layout.dtype))
    return None


def _check_start(v0: Any, name: str) -> None:
    if is_traced(v0):
        return
    if not all_finite(v0):
        raise ValueError(f"{name} must be finite; it holds NaN or inf.")
    if not any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(v0)):
        raise ValueError(f"{name} must be a nonzero vector; got all zeros.")


def raise_if_nonfinite(status: Any, step: Any, what: str = "Lanczos") -> None:
    """``FloatingPointError`` if a product came back NaN or inf (eager only)."""
    if not is_traced(status) and int(status) == NONFINITE:
        raise FloatingPointError(
            f"the operator product (HVP) at {what} step {int(step)} returned NaN or inf; "
            "check the loss and the data at these params."
        )


# --------------------------------------------------------------------------
# Extraction


def padded_projection(state: State) -> jax.Array:
    """``T = Q^T A Q`` of the multiplied columns, symmetric, in an
    ``(num_columns_max, num_columns_max)`` array.

    Rows and columns past ``state.num_columns`` are decoupled and hold a
    value above ``||T||`` on the diagonal, so the first ``num_columns``
    ascending eigenvalues of the result are the Ritz values.
    """
    m = state.coeffs.shape[1]
    low = jnp.tril(state.coeffs[:m])
    t = low + jnp.tril(low, -1).T
    valid = jnp.arange(m) < state.num_columns
    t = jnp.where(valid[:, None] & valid[None, :], t, 0)
    bound = jnp.sum(jnp.abs(t)) + 1
    return t + jnp.diag(jnp.where(valid, 0, bound))


def ritz(state: State) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Ritz values (ascending; the first ``num_columns`` are valid), the
    eigenvectors ``u`` of T as columns, and the residual norms
    ``|beta_last * u[last, i]|`` of the Ritz pairs (``b = 1``), exact up to
    rounding with full reorthogonalisation."""
    theta, u = jnp.linalg.eigh(padded_projection(state))
    last = state.num_columns - 1
    beta = state.coeffs[state.size - 1, last]
    res = jnp.abs(beta * u[last])
    return theta, u, res


def ritz_vectors(state: State, u: jax.Array) -> PyTree:
    """Stacked Ritz vectors ``Q u[:, i]`` for the columns of ``u``
    (``(num_columns_max, k)``), k rows in the stored form (``as_vectors``
    gives the params' shapes)."""
    rows = state.coeffs.shape[0]
    coeffs = jnp.zeros((u.shape[1], rows), u.dtype).at[:, : u.shape[0]].set(u.T)
    return basis_combine(coeffs, state.basis)
