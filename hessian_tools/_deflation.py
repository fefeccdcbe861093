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

from hessian_tools import _krylov
from hessian_tools._compile import jit
from hessian_tools._driver import drive, prefetch
from hessian_tools._hutchinson import deflated_samples, draw_probes
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
        _krylov_basis, lm, probes, breakdown_tol, bar=bar, depth=depth, acc=acc, diagonal=diagonal
    )


def _krylov_basis(drv, probes, breakdown_tol, *, depth, acc, diagonal):
    cols = jax.tree.leaves(probes)[0].shape[0] * depth
    state = drv.call(_krylov.start, drv.lm, probes, num_columns=cols, acc=acc)
    # k * depth products, whatever the data: the count stays static
    state = drv.run(state, cols, acc=acc, breakdown_tol=breakdown_tol, stop_on_breakdown=False)
    return drv.call(_basis_parts, drv.lm, state, diagonal=diagonal)


def krylov_trace(
    lm, keys, breakdown_tol, bar, *, block: int, depth: int, samples: int, acc: Any, use: str
):
    """The whole krylov trace estimate in one program: ``block`` probes drawn
    from ``keys[0]`` (as ``Products.probes``), their Krylov basis
    (``krylov_basis``), then Hutchinson on the deflated rest with
    ``samples`` probes from ``keys[1]`` (as ``_hutchinson.sequential`` draws
    them in one chunk), every product by the loop's one linearisation.
    One compilation instead of the basis program plus the Hutchinson part's
    own (probe draws, a stack of products, projections, statistics); the
    figures are at ``estimators._one_program``.

    ``use``: the call's tier (``_driver.drive``).

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
        use=use,
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
    probes = drv.call(draw_probes, drv.lm, keys[0], count=block)
    basis, _, status, low, _ = _krylov_basis(
        drv, probes, breakdown_tol, depth=depth, acc=acc, diagonal=False
    )
    mean, err, finite = drv.call(deflated_samples, drv.lm, basis, keys[1], count=samples)
    return status, low + mean, err, finite


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
