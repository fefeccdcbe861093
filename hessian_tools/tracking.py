"""Tracking the Hessian spectrum along a training run, warm-started.

``track_spectrum`` is a pure function that a training loop calls every few
steps: the top (or bottom) eigenvalues with their certified error bounds,
and optionally the trace and the spectral density, at the current
parameters. Pass the previous call's record back in and the eigensolver
starts from the previous eigenvectors, which change little between nearby
checkpoints, so each measurement costs a fraction of a cold one; the same
loss function object and shapes reuse the compiled solvers. It works under
``jax.jit`` as well (a fixed budget for the trace and the density).

Typical use, watching the sharpness approach the edge of stability
``2 / learning_rate`` under full-batch gradient descent (Cohen et al. 2021,
"Gradient descent on neural networks typically occurs at the edge of
stability")::

    record = None
    for step in range(num_steps):
        params = update(params)
        if step % 10 == 0:
            record = ht.track_spectrum(loss, params, x, y, previous=record)
            print(step, record.values[0], record.error_bounds[0], record.num_matvecs)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import jax

from hessian_tools._checks import as_key
from hessian_tools.density import SpectralDensity, spectral_density
from hessian_tools.eigen import eigenpairs
from hessian_tools.estimators import Estimate, trace
from hessian_tools.operators import HessianOperator

__all__ = ["SpectrumRecord", "track_spectrum"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SpectrumRecord:
    """One measurement of the spectrum.

    Attributes:
        values: (k,) eigenvalues (descending for "largest", ascending
            otherwise).
        error_bounds: (k,) their certified error bounds.
        converged: every bound met the tolerance.
        num_matvecs: HVPs spent on this measurement, all parts.
        tree_vectors: the eigenvectors (leaves with a leading axis k), the
            warm start of the next call.
        trace: an ``Estimate`` of the trace, or None.
        density: a ``SpectralDensity``, or None.
    """

    values: jax.Array
    error_bounds: jax.Array
    converged: Any
    num_matvecs: Any
    tree_vectors: Any
    trace: Estimate | None = None
    density: SpectralDensity | None = None


def track_spectrum(
    f: Callable[..., jax.Array],
    params: Any,
    *args: Any,
    previous: SpectrumRecord | None = None,
    k: int = 1,
    which: str = "largest",
    key: jax.Array | None = None,
    rtol: float | None = None,
    max_matvecs: int | None = None,
    trace_matvecs: int = 0,
    density_matvecs: int = 0,
    batches: Iterable | None = None,
    wrt: Any = None,
) -> SpectrumRecord:
    """The extreme eigenvalues (and optionally trace and density) at params,
    warm-started from ``previous``.

    Args:
        f: the loss ``f(params, *args)``; keep passing the same function
            object so that the compiled solvers are reused.
        params: the current parameters.
        *args: data for ``f``.
        previous: the record of the last call (None for the first): its
            eigenvectors start the eigensolver.
        k, which, rtol, max_matvecs: as in ``eigenpairs``.
        key: PRNG key for the first (cold) start and for the estimators.
        trace_matvecs: HVPs for a trace estimate (0: none).
        density_matvecs: HVPs for a spectral density (0: none), over 12
            probes.
        batches, wrt: as in ``HessianOperator``.

    Returns:
        A ``SpectrumRecord``.

    Cost: the eigenpairs' HVPs (a warm start from nearby eigenvectors needs
    far fewer than a cold one), plus ``trace_matvecs + density_matvecs``.
    """
    key = as_key(key)
    k_eig, k_trace, k_density = jax.random.split(key, 3)
    op = HessianOperator(f, params, *args, batches=batches, wrt=wrt)
    v0 = None if previous is None else previous.tree_vectors
    ep = eigenpairs(
        op,
        k,
        which=which,
        key=k_eig,
        v0=v0,
        rtol=rtol,
        max_matvecs=max_matvecs,
        method="lanczos",
    )
    spent = ep.num_matvecs
    est = density = None
    if trace_matvecs:
        est = trace(op, key=k_trace, num_matvecs=trace_matvecs)
        spent = spent + est.num_matvecs
    if density_matvecs:
        density = spectral_density(op, key=k_density, num_matvecs=density_matvecs)
        spent = spent + density.num_matvecs
    return SpectrumRecord(
        ep.values, ep.error_bounds, ep.converged, spent, ep.tree_vectors, est, density
    )
