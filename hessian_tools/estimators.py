"""Randomised trace and diagonal estimators from matrix-vector products.

Every estimator returns an ``Estimate``: the value, its standard error and the
number of operator products (HVPs) spent. Probes are Rademacher vectors
(pytrees like params), applied in chunks of one compiled block product
each; the reductions ``z . A z`` happen afterwards, outside any compiled
loop.

Methods for the trace, at equal cost ``m`` products:

* ``"hutchinson"`` (Hutchinson 1989): mean of ``z^T A z``; error ~ ||A||_F/sqrt(m).
* ``"hutch++"`` (Meyer, Musco, Musco & Woodruff 2021): the trace of A on a
  sketched dominant subspace exactly, plus Hutchinson on the deflated rest;
  error ~ 1/m instead of 1/sqrt(m) when a few eigenvalues dominate, as for
  the Hessian of a trained network (a few outliers over a large bulk near 0).
* ``"xtrace"`` (Epperly, Tropp & Webber 2024): the exchangeable,
  leave-one-out symmetrisation of Hutch++; uses every product for both the
  low-rank and the Hutchinson part, with its own error estimate.
* ``"krylov"`` (default): Hutch++ whose deflation basis is a block Krylov
  space (Chen & Hallman 2023), built by the library's Lanczos kernel in one
  compiled loop, so every product enlarges it; the most accurate of these
  on network Hessians (figures in the user guide).

Standard errors: plain Hutchinson and the diagonal estimators take the
spread of their per-probe samples; the deflated trace estimators (krylov,
hutch++) estimate the variance of their Hutchinson part from the images of
its probes (``_hutchinson.DeflatedQuad``), which stays calibrated when the
deflated residual keeps a few dominant eigenvalues and its samples are
skewed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import _deflation, _krylov
from hessian_tools._checks import as_key, check_choice, check_int, check_positive, is_traced
from hessian_tools._hutchinson import (
    DeflatedQuad,
    Products,
    Samples,
    exact_diagonal,
    project_out,
    quad,
    sequential,
)
from hessian_tools._operator import as_linear_map
from hessian_tools._progress import progress_bar

__all__ = ["Estimate", "diagonal", "trace"]

TraceMethod = Literal["krylov", "hutch++", "hutchinson", "xtrace"]
DiagonalMethod = Literal["krylov", "diag++", "hutchinson"]

# fewest products each method needs to give a value *and* a standard error
_MIN_MATVECS = {"hutchinson": 2, "hutch++": 4, "xtrace": 4, "diag++": 4, "krylov": 4}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Estimate:
    """A randomised estimate with its standard error.

    Attributes:
        value: the estimate; a scalar for ``trace``, an (n,) vector in
            ``ravel_pytree`` order for ``diagonal`` (``op.unravel(value)``
            gives a pytree like params).
        stderr: its estimated standard error (same shape as ``value``): the
            square root of an unbiased estimate of the estimator's variance
            (for the deflated methods, conditional on their basis), so the
            true error should exceed 2 ``stderr`` for about 5% of seeds (the
            user guide has the measured fractions); for "xtrace", the spread
            of its leave-one-out estimates, which runs a little narrow; 0
            when the value is exact. The methods' docstrings say how each
            one is computed.
        num_matvecs: operator products (HVPs) spent.
        method: the estimator used ("krylov", "hutchinson", "hutch++",
            "xtrace", "diag++" or "exact").
    """

    value: jax.Array
    stderr: jax.Array
    num_matvecs: int = dataclasses.field(metadata=dict(static=True))
    method: str = dataclasses.field(default="krylov", metadata=dict(static=True))


def _check(method: str, methods: tuple, num_matvecs: Any, rtol: Any, op: Any = None) -> int:
    check_choice("method", method, methods)
    m = check_int("num_matvecs", num_matvecs)
    low = _MIN_MATVECS[method]
    if m < low:
        raise ValueError(
            f"method {method!r} needs num_matvecs >= {low} to give a value and a standard "
            f"error; got {m}."
        )
    check_positive("rtol", rtol)
    if rtol is not None and method == "xtrace":
        raise ValueError('rtol must be None for method="xtrace" (it is not sequential).')
    if rtol is not None and is_traced(getattr(op, "variables", op)):
        raise ValueError(
            "rtol must be None inside jax.jit: the early stop needs concrete values; give "
            "a fixed budget (num_matvecs)."
        )
    return m


def _deflate(products: Products, key: jax.Array, m: int, method: str, target: str):
    """Deflation basis V (stack), its exact part (``tr(V^T A V)`` or
    ``diag(V V^T A)``), and the probes g left of m.

    Hutch++ / Diag++: k = m//3 sketch probes, V = orth(A S), k more products
    for A V; g = m - 2k. Krylov: the block Krylov basis of
    ``_deflation.krylov_shape(m, target)``; g = m - products spent.
    """
    layout, lm = products.layout, products.lm
    if method == "krylov":
        k, depth = _deflation.krylov_shape(m, target)
        probes = products.probes(key, k)
        bd_tol = _krylov.default_breakdown_tol(lm.n, lm.dtype)
        options = dict(depth=depth, acc=lm.dtype, diagonal=target == "diagonal")
        parts = _deflation.krylov_basis(lm, probes, bd_tol, products.bar, **options)
        v, _, status, low_trace, low_diag = parts
        spent = k * depth  # static: the loop goes on through a breakdown
        _refuse_nonfinite_basis(status, spent)
        products.count += spent
        low = low_trace if target == "trace" else layout.ravel(low_diag)
        return v, low, m - spent
    k = (m - 2) // 2 if m < 6 else m // 3
    sketch = layout.ravel(products(products.probes(key, k)))
    q = jnp.linalg.qr(sketch.T)[0]  # (n, k)
    basis = layout.unravel(q.T)
    av = layout.ravel(products(basis))
    v = layout.flatten_leaves(basis)  # the form the kernel stores bases in
    low = jnp.sum(q * av.T) if target == "trace" else jnp.sum(q * av.T, axis=1)
    return v, low, m - 2 * k


def _one_program(products: Products, m: int) -> dict | None:
    """The settings of the krylov trace in one program
    (``_deflation.krylov_trace``), or None: for maps iterated in a compiled
    loop (``LinearMap.loop``; the host driver compiles pieces either way),
    where the Hutchinson probes fit in one chunk (``Products.chunk``, the
    memory rule).

    Against the basis program plus the Hutchinson part's own programs, a
    first estimate (100 products, fresh processes, alternating) took 3.0 s
    against 3.8 s on W-mid, 1.8 against 3.0 s on the Equinox MLP and
    3.9-4.4 s against 6.6 s on the small transformer, with the Hutchinson
    products in a loop of their own. In the basis loop (one product in the
    program), the per-block study's trace program compiled in 2.3-2.7 s
    against 4.4-5.7 s. Warm, one program ÷ the chunked path (one process,
    alternating): W-mid 1.01-1.04x, Equinox MLP 0.98-1.05x, the small
    transformer 0.89-0.91x (the products compile with the solvers'
    options, ``_compile``). Projecting 4 probes per iteration instead of
    all of them once made W-mid 1.10-1.19x: each projection reads the
    whole basis."""
    if products.lm.loop != "device":
        return None
    k, depth = _deflation.krylov_shape(m, "trace")
    g = m - k * depth
    if g > products.chunk:
        return None
    return dict(block=k, depth=depth, samples=g, acc=products.lm.dtype)


def _krylov_trace(products: Products, key: jax.Array, plan: dict) -> tuple:
    """The krylov trace with a fixed budget, in one program
    (``_deflation.krylov_trace``): the same probes and value as the basis
    (``_deflate``), then ``sequential`` in one chunk."""
    lm, spent = products.lm, plan["block"] * plan["depth"]
    args = _trace_program_args(lm, key)
    status, value, err, finite = _deflation.krylov_trace(lm, *args, products.bar, **plan)
    _refuse_nonfinite_basis(status, spent)
    if not is_traced(status):
        if not bool(finite):
            raise FloatingPointError(
                f"an operator product returned NaN or inf (products {spent + 1} to "
                f"{spent + plan['samples']}); check the loss and params."
            )
    products.count += spent + plan["samples"]
    products.bar.update(plan["samples"])
    if not is_traced(value):
        products.bar.set_postfix(value=f"{float(value):.4g}")
    return value, err


def prefetch_trace(op: Any, *, key: Any, num_matvecs: int) -> None:
    """Start compiling the program of ``trace(op, key=key,
    num_matvecs=num_matvecs)`` (krylov, no rtol, no progress bar) in the
    background, for a caller with other work to do first
    (``block_spectra``: its eigensolver compiles meanwhile). Nothing where
    that trace is not one compiled program (exact, host-driven, chunked) or
    programs compile in the foreground (``_compile._Tiered.prefetch``)."""
    lm = as_linear_map(op)
    m = int(num_matvecs)
    if m >= int(lm.dim):
        return
    plan = _one_program(Products(lm, None, None), m)
    if plan is None:
        return
    _deflation.prefetch_krylov_trace(lm, *_trace_program_args(lm, as_key(key)), **plan)


def _trace_program_args(lm: Any, key: jax.Array) -> tuple:
    """The one program's array arguments (its two keys, the breakdown
    tolerance): the same for the call and its prefetch, whose signatures
    must match."""
    return tuple(jax.random.split(key)), _krylov.default_breakdown_tol(lm.n, lm.dtype)


def _refuse_nonfinite_basis(status: Any, spent: int) -> None:
    if not is_traced(status) and int(status) == _krylov.NONFINITE:
        raise FloatingPointError(
            f"an operator product returned NaN or inf while building the Krylov basis "
            f"(within the first {spent} products); check the loss and params."
        )


def _xtrace(products: Products, key: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """XTrace with k Rademacher probes (2k products)."""
    layout = products.layout
    om_tree = products.probes(key, k)
    om = layout.ravel(om_tree).T  # (n, k)
    y = layout.ravel(products(om_tree)).T
    q, r = jnp.linalg.qr(y)
    diag_r = jnp.abs(jnp.diag(r))
    z = layout.ravel(products(layout.unravel(q.T))).T
    # A Omega rank-deficient: rank(A) < k and Q spans A's range, so tr(Q^T A Q)
    # is the trace itself (up to rounding); the leave-one-out formulas would
    # divide by the vanishing diagonal of R
    deficient = jnp.min(diag_r) <= 10 * jnp.finfo(r.dtype).eps * jnp.max(diag_r)
    safe_r = jnp.where(deficient, jnp.eye(k, dtype=r.dtype), r)
    value, err = _deflation.xtrace_estimates(om, y, q, safe_r, z)
    exact = jnp.sum(q * z)
    return jnp.where(deficient, exact, value), jnp.where(deficient, 0, err)


# --------------------------------------------------------------------------
# Trace


def trace(
    op: Any,
    *,
    key: jax.Array,
    num_matvecs: int = 100,
    method: TraceMethod = "krylov",
    rtol: float | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Estimate:
    """Randomised estimate of the trace of a (symmetric) operator.

    With ``m = num_matvecs`` products and Rademacher probes z:

    * ``"krylov"`` (default): deflation by a block Krylov space, then
      Hutchinson on the rest. About 55% of the products build an orthonormal
      basis V of span{S, AS, ..., A^(d-1) S} (block Lanczos on the library's
      kernel, ~m/25 probes S, depth d ~ 14), giving ``tr(V^T A V)`` exactly;
      the remaining ~45% probes estimate ``tr((I - VV^T) A (I - VV^T))``.
      This is Hutch++ with a Krylov sketch (Meyer et al. 2021, Sec. 4; Chen &
      Hallman 2023, "Krylov-aware stochastic trace estimation"): every
      product enlarges the deflated subspace, so it captures the outlier
      eigenvalues of a network Hessian far better than one sketch. Best when
      a few eigenvalues dominate; for a flat spectrum use "hutchinson".
    * ``"hutch++"``: Q = orth(A S) for ``m//3`` probes S, then
      ``tr(Q^T A Q)`` (``m//3`` products) exactly, plus Hutchinson with the
      remaining probes on ``(I - QQ^T) A (I - QQ^T)`` (Meyer, Musco, Musco &
      Woodruff 2021, "Hutch++: optimal stochastic trace estimation").
    * ``"hutchinson"``: ``mean_i z_i^T A z_i`` (Hutchinson 1989, "A stochastic
      estimator of the trace of the influence matrix"); error about
      ``||A||_F sqrt(2/m)``.
    * ``"xtrace"``: ``m//2`` probes used for both parts with leave-one-out
      exchangeability (Epperly, Tropp & Webber 2024, "XTrace: making the most
      of every sample in stochastic trace estimation"); stderr from the
      spread of the ``m//2`` leave-one-out estimates.

    Stderr. For the deflated methods it is that of the Hutchinson part,
    conditional on the basis (whose part is exact), from the images of its
    probes rather than the spread of its samples: with
    ``B = (I - VV^T) A (I - VV^T)`` and g probes, the variance of the mean
    is ``2 (||B||_F^2 - sum_k B_kk^2) / g``, exact for Rademacher probes,
    and each coordinate's share ``sum_{l != k} B_kl^2`` is estimated without
    bias by the sample variance of ``z_k (B z)_k`` over the probes
    (``B z = (I - VV^T) A p``, the projection of a product already
    computed: no extra products). That estimate averages n coordinates, so
    unlike the spread of g skewed samples ``p^T A p`` it does not shrink
    when their mean falls short (a residual with a few dominant
    eigenvalues): measured on such a matrix, 15% of 400 seeds beyond 2
    stderr with the spread, 6.8% with this. For "hutchinson" the stderr is
    the spread of the samples (ddof=1), for "xtrace" that of its
    leave-one-out estimates. The user guide has the measured accuracy and
    calibration on network Hessians and what limits them.

    Memory: the deflated methods keep the basis, about 0.55 m (krylov) or
    m/3 (hutch++) vectors of length n.

    When ``num_matvecs >= n`` the trace is computed exactly from n products
    with basis vectors (``method="exact"``, stderr 0).

    Compilation: ``"krylov"`` with a fixed budget (no ``rtol``) is one
    compiled program of one loop (probes, basis and Hutchinson part; where
    the solvers iterate in compiled loops and the probes fit in one chunk);
    the user guide's "Speed" section has the figures.

    Args:
        op: a ``CurvatureOperator`` (``HessianOperator``, ``GGNOperator``, ...)
            or a square array.
        key: PRNG key for the probes (an int seed is accepted).
        num_matvecs: budget of operator products (HVPs); at least 2 for
            Hutchinson and 4 for the others.
        method: "krylov", "hutch++", "hutchinson" or "xtrace".
        rtol: stop early once ``stderr <= rtol * |value|``, checked after
            every chunk of Hutchinson probes (after the deflation basis is
            built, for krylov and hutch++); the budget still caps the cost.
            Not for xtrace.
        chunk_size: probes per vectorised product (default: as many as fit
            in ~64 MB of vectors).
        progress: show a progress bar (HVPs done, ETA).

    Returns:
        An ``Estimate`` with a scalar value; ``num_matvecs`` is the number
        of products actually spent.

    Raises:
        ValueError: a bad method, budget, rtol or key; a non-square array.
        FloatingPointError: a product returned NaN or inf.

    Example:
        >>> import jax, jax.numpy as jnp, hessian_tools as ht
        >>> op = ht.HessianOperator(lambda p: jnp.sum(p**4), jnp.arange(1.0, 301.0))
        >>> est = ht.trace(op, key=jax.random.key(0), num_matvecs=40, method="hutchinson")
        >>> bool(abs(est.value - 12 * jnp.sum(jnp.arange(1.0, 301.0) ** 2)) < 3 * est.stderr)
        True
    """
    m = _check(method, ("krylov", "hutch++", "hutchinson", "xtrace"), num_matvecs, rtol, op)
    key = as_key(key)
    lm = as_linear_map(op)
    with progress_bar(m, f"trace ({method})", progress) as bar:
        products = Products(lm, chunk_size, bar)
        if m >= int(lm.dim):  # a block's size (its map acts on all the variables)
            diag = exact_diagonal(products)
            return Estimate(jnp.sum(diag), jnp.zeros((), diag.dtype), products.count, "exact")
        if method == "xtrace":
            value, err = _xtrace(products, key, m // 2)
            return Estimate(value, err, products.count, method)
        zero = jnp.zeros((), lm.dtype)
        if method == "hutchinson":
            value, err = sequential(products, key, m, Samples(quad), zero, rtol, jnp.abs)
            return Estimate(value, err, products.count, method)
        plan = _one_program(products, m) if method == "krylov" and rtol is None else None
        if plan is not None:
            value, err = _krylov_trace(products, key, plan)
            return Estimate(value, err, products.count, method)
        k1, k2 = jax.random.split(key)
        v, low, g = _deflate(products, k1, m, method, "trace")
        # Hutchinson on (I - VV^T) A (I - VV^T): p^T A p with p = (I - VV^T) z
        project = functools.partial(project_out, v, layout=lm.layout)
        stats = DeflatedQuad(v, lm.layout)
        value, err = sequential(products, k2, g, stats, low, rtol, jnp.abs, transform=project)
        return Estimate(value, err, products.count, method)


# --------------------------------------------------------------------------
# Diagonal


def diagonal(
    op: Any,
    *,
    key: jax.Array,
    num_matvecs: int = 100,
    method: DiagonalMethod = "krylov",
    rtol: float | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Estimate:
    """Randomised estimate of the diagonal of a (symmetric) operator.

    * ``"krylov"`` (default): deflation by a block Krylov basis V built
      with ~80% of the products (~m/10 probes, depth ~8: the split it was
      measured with), ``diag(V V^T A)`` exactly, plus Hutchinson on
      ``(I - VV^T) A`` with the rest.
    * ``"diag++"``: the same with V = orth(A S) from ``m//3`` probes
      (Baston & Nakatsukasa 2022, "Stochastic diagonal estimation:
      probabilistic bounds and an improved algorithm").
    * ``"hutchinson"``: ``mean_i z_i * (A z_i)`` with Rademacher z
      (Bekas, Kokiopoulou & Saad 2007, "An estimator for the diagonal of a
      matrix"); entry j has variance ``sum_{l != j} A_jl^2 / m``.

    Stderr is per entry, from the sample variance (ddof=1) of the
    Hutchinson part: for entry j of ``C = (I - VV^T) A`` (C = A for
    "hutchinson") its samples ``z_j (C z)_j`` have the exact variance
    ``sum_{l != j} C_jl^2`` for Rademacher z, and their sample variance is
    an unbiased estimate of it (it equals the deflated trace's estimate
    from the images, ``(C z)_j^2`` less a U-statistic of ``C_jj^2``, since
    ``z_j^2 = 1``). Diagonal estimates of network Hessians are noisy: the
    off-diagonal mass is large (figures in the user guide).

    When ``num_matvecs >= n`` the diagonal is computed exactly from n products
    (``method="exact"``, stderr 0).

    Args:
        op: a ``CurvatureOperator`` or a square array.
        key: PRNG key for the probes.
        num_matvecs: budget of operator products (at least 2 for
            Hutchinson, 4 for the others).
        method: "krylov", "diag++" or "hutchinson".
        rtol: stop early once ``||stderr||_2 <= rtol * ||value||_2``.
        chunk_size: probes per vectorised product.
        progress: show a progress bar.

    Returns:
        An ``Estimate`` whose value and stderr are (n,) vectors in
        ``ravel_pytree`` order (``op.unravel(est.value)`` for a pytree).

    Raises:
        ValueError: a bad method, budget, rtol or key; a non-square array.
        FloatingPointError: a product returned NaN or inf.
    """
    m = _check(method, ("krylov", "diag++", "hutchinson"), num_matvecs, rtol, op)
    key = as_key(key)
    lm = as_linear_map(op)
    layout = lm.layout
    with progress_bar(m, f"diagonal ({method})", progress) as bar:
        products = Products(lm, chunk_size, bar)
        if m >= int(lm.dim):  # a block's size (its map acts on all the variables)
            diag = _in_block(lm, exact_diagonal(products))
            return Estimate(diag, jnp.zeros_like(diag), products.count, "exact")
        norm = jnp.linalg.norm

        def plain(z, az):
            return layout.ravel(z) * layout.ravel(az)

        if method == "hutchinson":
            zero = jnp.zeros((lm.n,), lm.dtype)
            value, err = sequential(products, key, m, Samples(plain), zero, rtol, norm)
            return Estimate(_in_block(lm, value), _in_block(lm, err), products.count, method)
        k1, k2 = jax.random.split(key)
        v, low, g = _deflate(products, k1, m, method, "diagonal")

        def sample(z, az):
            # z * (I - VV^T) A z
            return layout.ravel(z) * layout.ravel(project_out(v, az, layout))

        value, err = sequential(products, k2, g, Samples(sample), low, rtol, norm)
        return Estimate(_in_block(lm, value), _in_block(lm, err), products.count, method)


def _in_block(lm: Any, flat: jax.Array) -> jax.Array:
    """A diagonal of all the variables restricted to the operator's block
    (itself without one)."""
    within = lm.block_indices()
    return flat if within is None else jax.device_put(np.asarray(flat)[within])
