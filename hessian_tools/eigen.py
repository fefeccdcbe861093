"""Extreme eigenpairs of a symmetric matrix or curvature operator, with
certified error bounds.

Small problems (and dense arrays) are decomposed exactly. Large operators use
thick-restart Lanczos (Wu & Simon 2000, "Thick-restart Lanczos method for
large symmetric eigenvalue problems", SIAM J. Matrix Anal. Appl. 22(2)) on the
library's one Lanczos kernel, with full reorthogonalisation; it stops as soon
as every wanted eigenvalue's a-posteriori error bound (``min(r, r^2 / gap)``
with a safely known gap, plus the products' measured rounding floor,
``hessian_tools._certify``) is at most ``max(rtol |lambda|, atol)``, then
checks that no eigenvalue beyond the returned ones was missed.
The whole solve is one compiled loop and runs inside ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import _thick_restart
from hessian_tools._checks import (
    check_choice,
    check_int,
    check_positive,
    is_traced,
)
from hessian_tools._eigen_grad import attach
from hessian_tools._operator import (
    LinearMap,
    as_linear_map,
    as_square_matrix,
    is_explicit,
    num_elements_of,
    prefer_dense,
)
from hessian_tools._thick_restart import basis_size, lanczos_cost
from hessian_tools._tree import Layout

__all__ = ["Eigenpairs", "check_symmetric", "eigenpairs"]

Which = Literal["largest", "smallest", "both"]
WHICH = ("largest", "smallest", "both")


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "values",
        "tree_vectors",
        "residuals",
        "error_bounds",
        "converged",
        "num_matvecs",
        "norm_estimate",
        "num_restarts",
        "rounding_floor",
        "complete",
    ],
    meta_fields=["layout", "exact"],
)
@dataclasses.dataclass(frozen=True)
class Eigenpairs:
    """Eigenvalues and eigenvectors of a symmetric operator, with error bounds.

    Attributes:
        values: (k,) eigenvalues, ordered algebraically: descending for
            ``which="largest"``, ascending for ``"smallest"`` and ``"both"``.
        tree_vectors: the unit eigenvectors as a pytree like params whose
            leaves carry a leading axis k (``vectors`` is the flat view).
        residuals: (k,) residual norms ``||A v - lambda v||``.
        error_bounds: (k,) a bound on each eigenvalue's error,
            ``min(r, r^2 / gap) + rounding_floor`` (see
            ``_certify.error_bounds`` for when the quadratic term counts and
            its assumptions); rounding-level on the dense path. A bound
            certifies that an eigenvalue of the operator lies within it,
            not that it is the k-th largest: like every Krylov method,
            Lanczos can miss an eigenvalue whose eigenvector is nearly
            orthogonal to the start vector, most easily when the top two
            are close (e.g. 19.94 and 18.31 at the edge of stability, where
            one start in many stops at 18.31 after 8 HVPs); the
            completeness check (``complete``) looks for such a miss.
        converged: True when every bound met the requested tolerance (or
            the dtype's rounding level), the tolerance was not below the
            measured rounding floor, and the completeness check found no
            missed eigenvalue.
        num_matvecs: operator products (HVPs) spent.
        norm_estimate: the largest |eigenvalue| seen, an estimate of
            ``||A||`` (exact on the dense path).
        num_restarts: thick restarts performed (0 on the dense path).
        rounding_floor: the products' own error (measured from the
            asymmetry of the Lanczos coefficients) plus the solver's
            rounding, included in every bound; no bound can be below it.
            When a tolerance lies below it, ``converged`` is False and a
            warning names the likely cause.
        complete: the completeness check's outcome: True when a short
            Lanczos run from a fresh random vector, deflated against the
            returned vectors, found no eigenvalue beyond them at the wanted
            end(s); False when it did (even after a second, warm-started
            solve; ``converged`` is then False too); None when not checked
            (not converged, or under ``jax.jit``). True on the
            dense path. It finds a missed eigenvalue that is separated from
            the rest, not one inside a cluster: evidence, not proof.
        layout: structure of a vector (static).
        exact: True when computed by a dense eigendecomposition (static).

    Under ``jax.jit`` the counts and ``converged`` are traced arrays.
    """

    values: jax.Array
    tree_vectors: Any
    residuals: jax.Array
    error_bounds: jax.Array
    converged: Any
    num_matvecs: Any
    norm_estimate: Any
    num_restarts: Any
    rounding_floor: Any
    complete: Any
    layout: Layout
    exact: bool

    @property
    def vectors(self) -> jax.Array:
        """(n, k) unit eigenvectors as columns, in ``ravel_pytree`` order
        (computed on request from ``tree_vectors``)."""
        return self.layout.ravel(self.tree_vectors).T


def select(w: Any, k: int, which: str) -> np.ndarray:
    """Indices into ascending eigenvalues ``w`` for the requested end(s).

    ``"both"`` follows scipy's ``eigsh(which="BE")``: k in all, ceil(k/2)
    from the top and floor(k/2) from the bottom, returned ascending.
    """
    return np.asarray(_thick_restart.wanted_positions(np.shape(w)[0], k, which))


def dense_eigenpairs(
    matrix: jax.Array, k: int, which: str, num_matvecs: int, product_error: float = 0.0
) -> Eigenpairs:
    """Exact eigenpairs of a dense symmetric matrix via LAPACK's ``syevd``:
    scipy's on the host for a concrete matrix held by CPU devices (no
    program to compile, so a new size, e.g. each block of
    ``block_spectra``, costs no compilation; on a 2,410 x 2,410 float32
    matrix 0.75 s against jnp's 0.90 s and numpy's 1.50 s),
    ``jnp.linalg.eigh`` for a traced one or one on an accelerator.

    The bounds are those of the eigensolver on this matrix (its residual,
    at least ``n eps ||A||``) plus ``product_error``, the error of the
    matrix itself when it was built from products (by Weyl's inequality an
    eigenvalue moves by at most the error's spectral norm). For a matrix
    from HVPs, eigenpairs passes the estimate of ``_to_dense`` (the rounding
    of lower-precision leaves' rows, and the products' asymmetry): measured
    on a float64 model with a float32 layer (tests/test_certify.py), errors
    up to 1.4e-6 against bounds of about 1e-5, where the solver's own bound
    was 5e-13 and the asymmetry alone gave 1.3e-6."""
    host = _on_host(matrix)
    xp = np if host else jnp
    a = np.asarray(matrix) if host else matrix
    if host:
        import scipy.linalg  # here: importing it costs a fresh process 0.15 s

        w, v = scipy.linalg.eigh(a, driver="evd", check_finite=False)
    else:
        w, v = jnp.linalg.eigh(a)
    idx = select(w, k, which)
    values, vectors = w[idx], v[:, idx]
    residuals = xp.linalg.norm(a @ vectors - vectors * values[None, :], axis=0)
    scale = xp.max(xp.abs(w))
    # eigh is backward stable: each eigenvalue within ~n eps ||A|| of the truth
    floor = a.shape[0] * np.finfo(w.dtype).eps * scale
    bounds = xp.maximum(residuals, floor) + product_error
    floor = floor + product_error
    values, vectors, residuals, bounds, scale, floor = (
        jax.device_put(x) for x in (values, vectors.T, residuals, bounds, scale, floor)
    )
    layout = Layout.of(jax.ShapeDtypeStruct((a.shape[0],), a.dtype))
    return Eigenpairs(
        values, vectors, residuals, bounds, True, num_matvecs, scale, 0, floor, True, layout, True
    )


def _on_host(matrix: Any) -> bool:
    """A numpy array, or a concrete jax array whose devices are all CPUs."""
    if isinstance(matrix, np.ndarray):
        return True
    if is_traced(matrix):
        return False
    devices = getattr(matrix, "devices", None)
    return devices is not None and all(d.platform == "cpu" for d in devices())


# --------------------------------------------------------------------------
# Randomised symmetry check


@jax.jit  # products: jax's own options (_compile)
def _two_products(lm: LinearMap, key: jax.Array):
    u, v = (lm.layout.unravel(x) for x in jax.random.normal(key, (2, lm.n), lm.dtype))
    mv = lm.bind()
    return u, v, mv(u), mv(v)


def check_symmetric(op: Any, *, key: jax.Array | None = None, rtol: float | None = None) -> float:
    """Randomised symmetry test: compares ``u . (A v)`` with ``v . (A u)``.

    Raises ``ValueError`` when the relative asymmetry
    ``|u.Av - v.Au| / (|u| |Av| + |v| |Au|)`` exceeds ``rtol`` (default
    ``10 sqrt(eps)``, loose enough for float32 HVP rounding). Costs 2 HVPs.

    Returns:
        The measured relative asymmetry.
    """
    from hessian_tools._tree import norm, vdot

    lm = as_linear_map(op, linearize=False)
    key = jax.random.PRNGKey(1) if key is None else key
    u, v, au, av = _two_products(lm, key)
    lhs, rhs = float(vdot(u, av)), float(vdot(v, au))
    denom = float(norm(u) * norm(av) + norm(v) * norm(au))
    err = abs(lhs - rhs) / denom if denom > 0 else 0.0
    rtol = 10 * float(np.sqrt(np.finfo(np.dtype(lm.dtype)).eps)) if rtol is None else rtol
    if not err <= rtol:
        raise ValueError(
            f"the operator must be symmetric (Lanczos assumes A = A^T); got u.(Av) = {lhs:.6g} "
            f"but v.(Au) = {rhs:.6g}, a relative asymmetry of {err:.2e} > rtol {rtol:.1e}."
        )
    return err


# --------------------------------------------------------------------------
# Thick-restart Lanczos (the algorithm lives in hessian_tools._thick_restart)


def eigenpairs(
    op: Any,
    k: int,
    *,
    which: Which = "largest",
    key: jax.Array | None = None,
    v0: Any = None,
    rtol: float | None = None,
    atol: float = 0.0,
    max_matvecs: int | None = None,
    method: Literal["auto", "dense", "lanczos"] = "auto",
    max_basis: int | None = None,
    linearize: bool = True,
    accumulate_dtype: Any = None,
    true_residuals: bool = False,
    check_symmetry: bool = False,
    progress: bool = False,
) -> Eigenpairs:
    """The k algebraically largest / smallest eigenpairs of a symmetric
    operator, each eigenvalue with an error bound.

    "largest" means algebraically largest (most positive), never largest in
    modulus, so negative eigenvalues are never mixed into a top-k list;
    "smallest" gives the most negative ones (the negative curvature that
    saddle analysis needs); "both" gives ceil(k/2) from the top and
    floor(k/2) from the bottom, like scipy's ``eigsh(which="BE")``.

    Two methods. ``"dense"``: the exact eigendecomposition (an operator is
    formed with n HVPs). ``"lanczos"``: thick-restart Lanczos (Wu & Simon
    2000) with full reorthogonalisation, stopping as soon as every wanted
    eigenvalue's error bound is at most ``max(rtol |lambda|, atol)`` or at
    the rounding level, below which nothing can be certified. The bound is
    ``min(r, r^2 / gap)`` (``r`` the residual ``||A v - lambda v||``), the
    quadratic term only once the Krylov space has ``1 + k + max(k, 4)``
    columns and the gap to the other Ritz values (less their residuals) is
    10 r or more, plus ``rounding_floor``: the products' own error measured
    from the asymmetry of the Lanczos coefficients (a float32 softmax in a
    float64 model shows up there). A tolerance below that floor, or an
    ``rtol`` below 10 eps, gives ``converged=False`` and one warning naming
    the cause. After convergence a completeness check (a deflated Lanczos
    run from a fresh vector, 15% of the solve's HVPs, at least 6) looks for
    an eigenvalue the solve missed (``complete``); see
    ``hessian_tools._certify`` and the concepts page for what it can and
    cannot promise. ``"auto"`` takes the dense path only where it is predicted to take no
    more time (``hessian_tools._operator.dense_is_cheaper``: explicit arrays
    up to n = 2048; for operators, n HVPs and ``eigh`` against the HVPs
    Lanczos typically spends and its per-step work, from the HVP's flops).

    Single-vector Lanczos finds one copy of an exactly repeated eigenvalue
    (further copies only through rounding); clusters are found in full.

    Args:
        op: a ``CurvatureOperator`` such as ``HessianOperator``, or a
            symmetric (n, n) array.
        k: number of eigenpairs, 1 <= k <= n (k < n for Lanczos).
        which: "largest" (values descending), "smallest" (ascending) or
            "both" (ascending).
        key: PRNG key or int seed for the random vectors: the start, the
            completeness check's, restarts after a breakdown (default
            ``PRNGKey(0)``). On one CPU device they are drawn on the host,
            by numpy seeded from the key; elsewhere, and inside
            ``jax.jit``, by ``jax.random`` in the compiled solver. A key
            always gives the same result in one setting.
        v0: start vector instead of a random one: a flat (n,) array or a
            pytree like params (e.g. the previous checkpoint's top
            eigenvector).
        rtol: relative accuracy wanted for each eigenvalue (default 1e-4 in
            float32, 1e-8 in float64).
        atol: absolute accuracy floor for eigenvalues near zero (default 0).
        max_matvecs: HVP budget for Lanczos (default ``max(1000, 50 m)``);
            when it runs out the result has ``converged=False``.
        method: "auto", "dense" or "lanczos".
        max_basis: Lanczos basis size m (default ``max(2k + 10, 30)`` for
            "largest" and ``max(2k + 10, 60)`` for "smallest" and "both",
            whose wanted end often lies in a dense cluster; at most n).
            Memory is ``(m + 1) n`` numbers (plus as much again briefly at
            each restart); a smaller m bounds memory and costs more restarts.
        linearize: share one forward pass between the HVPs
            (``jax.linearize``; holds the activations in memory).
        accumulate_dtype: dtype for T's entries (e.g. float64 with x64 on).
        true_residuals: recompute the residuals with k extra HVPs instead of
            reading them off the Lanczos relation (which full
            reorthogonalisation keeps exact up to rounding).
        check_symmetry: first run ``check_symmetric`` (2 HVPs) and raise if
            the operator is not symmetric.
        progress: show a progress bar of HVPs spent.

    Returns:
        An ``Eigenpairs`` result: values, vectors (n, k) and tree_vectors,
        residuals, error_bounds, converged, num_matvecs (every HVP spent).

    Cost: dense: n HVPs for an operator and O(n^3) flops. Lanczos: the HVPs
    until convergence (often 2k to 4k + 10), plus O(m^2 n) flops per cycle,
    plus the completeness check (15% of that, at least 6 and at most 20
    HVPs; once more after a re-solve).

    Derivatives: ``jax.grad`` and ``jax.jvp`` of ``.values`` with respect to
    the operator's params and data (the operator built inside the
    differentiated function) give ``d lambda = v^T (dH) v`` for a simple
    eigenvalue, the vector held fixed (Hellmann-Feynman; Magnus 1985). The
    solver's loops are not differentiated: each derivative costs one
    third-order product (the JVP of an HVP, about two HVPs) per eigenvalue.
    Under differentiation the Lanczos path is used. A sharpness penalty in a
    jitted training step::

        def penalised(params, x, y):
            op = ht.HessianOperator(loss, params, x, y)
            return loss(params, x, y) + 0.1 * ht.eigenpairs(op, 1).values[0]

        grads = jax.jit(jax.grad(penalised))(params, x, y)

    Raises:
        ValueError: k out of range, a bad ``which``, ``method``, ``rtol``,
            ``v0`` or budget; a non-symmetric operator with
            ``check_symmetry``; ``method="dense"`` inside ``jax.jit``;
            differentiating a repeated eigenvalue (two values equal within
            their bounds, or one the completeness check found unreturned).
        FloatingPointError: a product returned NaN or inf.
    """
    check_choice("which", which, WHICH)
    check_choice("method", method, ("auto", "dense", "lanczos"))
    n = num_elements_of(op)
    k = check_int("k", k, low=1, high=n)
    rtol = check_positive("rtol", rtol)
    if not (np.isfinite(atol) and atol >= 0):
        raise ValueError(f"atol must be a finite number >= 0; got {atol!r}.")
    explicit = is_explicit(op)
    extra = 0
    if check_symmetry:
        check_symmetric(op, key=key)
        extra = 2
    traced = not explicit and is_traced(getattr(op, "params", None))
    dense = method == "dense" or (
        method == "auto"
        and not traced  # inside jit or a derivative: the matrix cannot be built on the host
        and prefer_dense(
            op, lanczos_cost(n, k, which, max_basis), basis_size(n, k, which, max_basis)
        )
    )
    if dense:
        if explicit:
            matrix, spent, product_error = as_square_matrix(op), 0, 0.0
        else:
            if traced:
                raise ValueError(
                    'method="dense" cannot run inside jax.jit (it builds the matrix on the '
                    'host); use method="lanczos".'
                )
            if hasattr(op, "_to_dense"):
                (matrix, product_error), spent = op._to_dense(progress=progress), n
            else:  # an operator of another kind with a to_dense of its own
                matrix, spent, product_error = op.to_dense(progress=progress), n, 0.0
        # the products' own error (a float32 part inside a float64 model) is
        # not in the eigensolver's residuals: operators._to_dense estimates it
        result = dense_eigenpairs(matrix, k, which, spent + extra, product_error)
        if not explicit:
            vectors = result.tree_vectors  # cut on the host when it is there
            vectors = np.asarray(vectors) if _on_host(vectors) else vectors
            result = dataclasses.replace(
                result, layout=op.layout, tree_vectors=op.layout.unravel(vectors)
            )
        return result
    lm = as_linear_map(op, linearize=linearize)
    # a block's map acts on all the variables (a mask): v0 and the vectors
    # move between the block's layout and that one (operators.to_space)
    to_space, from_space = getattr(op, "to_space", None), getattr(op, "from_space", None)
    out = _thick_restart.lanczos_eigenpairs(
        lm.stop_gradient(),  # the loops are never differentiated: see attach
        k,
        which,
        key=key,
        v0=v0 if v0 is None or to_space is None else to_space(v0),
        rtol=rtol,
        atol=float(atol),
        max_matvecs=max_matvecs,
        max_basis=max_basis,
        accumulate_dtype=accumulate_dtype,
        true_residuals=true_residuals,
        progress=progress,
        product_seconds=getattr(op, "_product_seconds", None),
    )
    # differentiable: jax.grad / jax.jvp of the values (hessian_tools._eigen_grad)
    values = attach(lm, out["values"], out["vectors"], out["bounds"], out["complete"])
    return Eigenpairs(
        values,
        out["vectors"] if from_space is None else from_space(out["vectors"]),
        out["residuals"],
        out["bounds"],
        out["converged"],
        out["num_matvecs"] + extra,
        out["norm"],
        out["num_restarts"],
        out["floor"],
        out["complete"],
        lm.layout if from_space is None else op.layout,
        False,
    )
