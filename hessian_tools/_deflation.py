"""The low-rank parts of the deflated trace and diagonal estimators.

* The block-Krylov basis (``krylov_basis``): block Lanczos on the library's
  one kernel (``_krylov``), all ``k * depth`` products on the loop driver
  (one compiled loop sharing one linearisation, or compiled steps);
  ``tr(V^T A V)`` is the trace of the kernel's projected matrix, and
  ``diag(V V^T A)`` follows from it without storing the images (``A V = Q C``,
  C the projected matrix with its coupling to the next block).
* The Hutch++ / Diag++ sketch (``sketch_basis``): ``V = orth(A S)``.
* XTrace (``xtrace``): Epperly, Tropp & Webber 2024.

Shapes: probes and bases are stacked pytrees (leaves ``(k, *leaf.shape)``);
the QR-based methods work on their flat ``(k, n)`` view.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from hessian_tools import _krylov
from hessian_tools._checks import finite_in_program
from hessian_tools._compile import jit
from hessian_tools._driver import drive, prefetch
from hessian_tools._hutchinson import deflated_stats, draw_probes, projected, rademacher
from hessian_tools._operator import apply_first
from hessian_tools._progress import advance
from hessian_tools._tree import basis_combine, get_rows

__all__ = [
    "KRYLOV_SPLIT",
    "krylov_basis",
    "krylov_shape",
    "krylov_trace",
    "prefetch_krylov_trace",
    "xtrace_estimates",
]

#: (products per block, share of m spent on the basis) of the krylov methods
KRYLOV_SPLIT = {"trace": (25, 0.55), "diagonal": (10, 0.8)}


def krylov_shape(m: int, target: str = "trace") -> tuple[int, int]:
    """Block size k and depth for m products, so that k*depth ~ share*m.

    Trace: the Hutchinson part's variance is ``2 F(d) / (m - d)``, with
    ``F(d)`` the squared Frobenius norm left after deflating a d-dimensional
    space. For a spectrum decaying like ``lambda_i ~ i^-a`` (network
    Hessians: a ~ 1), ``F(d) ~ d^(1-2a)`` and the best d is
    ``m (2a - 1) / (2a)``, about m/2; a Krylov space captures a bit less
    than the same number of eigenvectors, hence 55%. Small blocks (m/25)
    make the space deep, which resolves a decaying spectrum best. The
    diagonal keeps (m/10, 80%), the split it was measured with (the guide
    gives the figures). The Hutchinson part always keeps at least 2 probes.
    """
    per, share = KRYLOV_SPLIT[target]
    k = max(1, round(m / per))
    depth = max(1, min(round(share * m / k), (m - 2) // k))
    return k, depth


def krylov_basis(lm, probes, breakdown_tol, bar, *, depth: int, acc: Any, diagonal: bool):
    """Orthonormal basis V of span{S, AS, ..., A^(depth-1) S} for the stacked
    probes S (k of them), by block Lanczos with full reorthogonalisation, on
    the loop driver (``_driver``; ``bar`` counts the products).

    Returns ``(V, products, status, trace_low, diag_low)``: V in the
    kernel's stored form (``Layout.flatten_leaves``; zero past a
    breakdown), the products spent, the kernel's status, ``tr(V^T A V)``,
    and ``diag(V V^T A)`` as a pytree (None unless ``diagonal``).
    """
    return drive(
        _krylov_basis,
        lm,
        probes,
        breakdown_tol,
        bar=bar,
        depth=depth,
        acc=acc,
        diagonal=diagonal,
    )


def _krylov_basis(drv, probes, breakdown_tol, *, depth, acc, diagonal):
    cols = jax.tree.leaves(probes)[0].shape[0] * depth
    state = drv.call(_krylov.start, drv.lm, probes, num_columns=cols, acc=acc)
    # k * depth products, whatever the data: the count stays static
    state = drv.run(state, cols, acc=acc, breakdown_tol=breakdown_tol, stop_on_breakdown=False)
    return drv.call(_basis_parts, drv.lm, state, diagonal=diagonal)


def krylov_trace(
    lm,
    keys,
    breakdown_tol,
    bar,
    *,
    block: int,
    depth: int,
    samples: int,
    acc: Any,
):
    """The whole krylov trace estimate in one program of one loop: ``block``
    probes drawn from ``keys[0]`` (as ``Products.probes``), ``depth`` steps
    of block Lanczos building their Krylov basis V (as ``krylov_basis``),
    then Hutchinson on ``(I - VV^T) A (I - VV^T)`` with ``samples`` probes
    from ``keys[1]`` (the ones ``_hutchinson.sequential`` draws in one
    chunk). The probes are projected once, in bulk, when the basis is
    complete; then the loop multiplies ``block`` of them per iteration (the
    last block's padding skipped), and the statistics are taken once after
    it. Every product is the loop's one product, so the program holds the
    operator's product once: a second loop of products cost as much
    compilation again, and projecting ``block`` probes per iteration read
    the whole basis each time (``estimators._one_program`` has the
    figures). For the device driver (``drv.mv``).

    Returns ``(status, value, stderr, finite)``: the kernel's status, the
    estimate ``tr(V^T A V)`` plus the Hutchinson mean, its standard error,
    and whether the Hutchinson products were finite.
    """
    return drive(
        _krylov_trace,
        lm,
        keys,
        breakdown_tol,
        bar=bar,
        block=block,
        depth=depth,
        samples=samples,
        acc=acc,
    )


def prefetch_krylov_trace(lm, keys, breakdown_tol, **options: Any) -> None:
    """Start compiling ``krylov_trace``'s program for these arguments in the
    background (``_driver.prefetch``); the same keywords but ``bar``."""
    prefetch(_krylov_trace, lm, keys, breakdown_tol, **options)


def _krylov_trace(drv, keys, breakdown_tol, *, block, depth, samples, acc):
    lm, cols = drv.lm, block * depth
    state = _krylov.start(lm, draw_probes(lm, keys[0], count=block), cols, acc)
    rounds = -(-samples // block)
    # the Hutchinson probes (sequential's, in one chunk), padded with zero
    # rows, with the parameters' shardings (the loop's carry keeps them)
    z = rademacher(lm, jax.random.split(keys[1], samples))
    pad = lambda x: jnp.concatenate(
        [x, jnp.zeros((rounds * block - samples, *x.shape[1:]), x.dtype)]
    )
    z = lm.layout.flatten_leaves(lm.conform(jax.tree.map(pad, z), lead=1))

    def body(carry):
        t, state, p, ap, finite = carry
        basis_step = t < depth
        at = (t - depth) * block
        # the probes projected once, when the basis is complete
        p = lax.cond(t == depth, lambda: projected(state.basis, z, cols), lambda: p)
        count = jnp.where(basis_step, block, jnp.minimum(block, samples - at))
        rows = lax.cond(
            basis_step, lambda: _krylov.step_rows(state), lambda: get_rows(p, at, block)
        )
        prods = apply_first(drv.mv, rows, count, lm.batching)
        state = lax.cond(
            basis_step,
            lambda: _krylov.insert_products(
                state, prods, acc=acc, breakdown_tol=breakdown_tol, reorthogonalize=True
            ),
            lambda: state,
        )
        ap = lax.cond(
            basis_step,
            lambda: ap,
            lambda: jax.tree.map(
                lambda a, x: lax.dynamic_update_slice_in_dim(a, x, at, 0), ap, prods
            ),
        )
        finite = finite & (basis_step | finite_in_program(prods))
        if drv.token is not None:
            advance(drv.token, jnp.where(basis_step, block, 0))
        return t + 1, state, p, ap, finite

    def cond(carry):
        t, state, _, _, finite = carry
        return (t < depth + rounds) & (state.status != _krylov.NONFINITE) & finite

    zeros = jax.tree.map(jnp.zeros_like, z)
    start = (jnp.asarray(0, jnp.int32), state, zeros, zeros, jnp.asarray(True))
    _, state, p, ap, finite = lax.while_loop(cond, body, start)
    basis, _, _, low, _ = _basis_parts(lm, state, diagonal=False)
    z, p, ap = (
        lm.layout.unflatten_leaves(jax.tree.map(lambda x: x[:samples], x)) for x in (z, p, ap)
    )
    mean, err = deflated_stats(basis, z, p, ap, lm.layout)
    return state.status, low + mean, err, finite


def _basis_parts(lm, state: _krylov.State, diagonal: bool):
    cols = state.coeffs.shape[1]
    low = jnp.tril(state.coeffs[:cols])
    t = low + jnp.tril(low, -1).T
    basis = get_rows(state.basis, 0, cols)
    diag = None
    if diagonal:
        # A V = Q C: T for the basis itself, the coupling rows for the next block
        c = jnp.concatenate([t, state.coeffs[cols:]], axis=0)
        images = basis_combine(c.T, state.basis)
        diag = jax.tree.map(lambda v, av: jnp.sum(v * av, axis=0), basis, images)
        diag = lm.layout.unflatten_leaves(diag)
    return basis, state.num_columns, state.status, jnp.trace(t), diag


@jit
def xtrace_estimates(om, y, q, r, z):
    """XTrace's k leave-one-out estimates, their mean and stderr, from
    Omega, Y = A Omega = QR and Z = A Q, all flat (n, k) (Epperly, Tropp &
    Webber 2024, "XTrace: making the most of every sample in stochastic
    trace estimation", their reference code ``xtrace.m``, without the sphere
    rescaling)."""
    k = om.shape[1]
    w = q.T @ om
    eye = jnp.eye(k, dtype=q.dtype)
    # S = rownormalise(I - triu(R, 1) R^{-1})^T
    s = eye - jax.scipy.linalg.solve_triangular(r, jnp.triu(r, 1).T, trans="T", lower=False).T
    s = (s / jnp.linalg.norm(s, axis=1, keepdims=True)).T
    h = q.T @ z
    hw = h @ w
    t = z.T @ om
    dp = lambda a, b: jnp.sum(a * b, axis=0)  # column-wise dot products
    d_sw, d_shs = dp(w, s), dp(s, h @ s)
    ests = (
        jnp.trace(h)
        - d_shs
        + dp(om, y)
        - dp(w, r)
        - dp(t, w)
        + dp(w, hw)
        + d_sw * dp(s, r - hw)
        + d_sw**2 * d_shs
        + dp(t - h.T @ w, s) * d_sw
    )
    return jnp.mean(ests), jnp.std(ests, ddof=1) / jnp.sqrt(k)
