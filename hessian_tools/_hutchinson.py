"""The Monte Carlo part of the trace and diagonal estimators.

Rademacher probes as stacked pytrees (drawn flat, one key per probe, so the
probes do not depend on how they are chunked), their products in chunks of
one compiled block product each (counted, refused when not finite), and the
sequential Hutchinson loop that stops on a relative standard error. The
reductions ``z . A z`` happen here, outside any compiled loop.

Standard errors: ``Samples`` takes the spread of the per-probe samples
(ddof=1). ``DeflatedQuad``, the Hutchinson part of the deflated trace
estimators, estimates the variance of ``p^T A p`` from the images instead:
for a Rademacher z and symmetric ``B = (I - VV^T) A (I - VV^T)``,
``Var(z^T B z) = 2 sum_{k != l} B_kl^2 = 2 sum_k Var(z_k (B z)_k)``, and each
``Var(z_k (B z)_k)`` is estimated, unbiased, by the sample variance of
``z_k (B z)_k`` over the probes (``B z = (I - VV^T) A p`` is one projection
of a product already computed). The same unbiasedness as the spread of the
samples, but over n coordinates instead of one number per probe, so the
estimate does not rise and fall with the skewed samples of a residual that
keeps a few dominant eigenvalues (where the spread is too narrow exactly
when the mean is too low).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools._checks import all_finite, check_int, is_traced
from hessian_tools._chunks import chunks, fit
from hessian_tools._compile import jit
from hessian_tools._operator import LinearMap, apply_linear_map, block_rows
from hessian_tools._tree import Layout, basis_combine, stack_dot

__all__ = [
    "DeflatedQuad",
    "Products",
    "Samples",
    "deflated_stats",
    "draw_probes",
    "exact_diagonal",
    "mean_stderr",
    "project_out",
    "projected",
    "quad",
    "rademacher",
    "sequential",
]


@functools.partial(jit, static_argnums=2)
def _rademacher(keys: jax.Array, lm: LinearMap, project: bool) -> Any:
    """A stack of Rademacher probes in the map's layout, one key per probe
    (so the probes do not depend on how they are chunked), drawn flat; in
    the map's block with ``project``. One program per map and count, not
    one per leaf shape (``Layout.unravel`` run eagerly)."""
    rows = jax.vmap(lambda k: jax.random.rademacher(k, (lm.n,), lm.dtype))(keys)
    z = lm.layout.unravel(rows)
    return lm.project(z) if project else z


def rademacher(lm: LinearMap, keys: jax.Array) -> Any:
    """Rademacher probes in the map's layout, one per key, not projected onto
    its block (``sequential``'s probes)."""
    return _rademacher(keys, lm, False)


def draw_probes(lm: LinearMap, key: jax.Array, *, count: int) -> Any:
    """``count`` Rademacher probes as a stack (flat draw, one key per probe),
    in the map's block (``LinearMap.project``)."""
    return _rademacher(jax.random.split(key, count), lm, True)


class Products:
    """Applies the operator to stacks of probes in chunks, counting HVPs and
    refusing non-finite products."""

    def __init__(self, lm: LinearMap, chunk_size: int | None, bar: Any):
        self.lm, self.layout, self.bar, self.count = lm, lm.layout, bar, 0
        if chunk_size is None:  # vmap holds the HVP's intermediates per probe too
            chunk_size = fit(lm.n * lm.dtype.itemsize)
        self.chunk = check_int("chunk_size", chunk_size, low=1)

    def probes(self, key: jax.Array, k: int) -> Any:
        """k Rademacher probes as a stack (flat draw, one key per probe), in
        the operator's block (``LinearMap.project``)."""
        return draw_probes(self.lm, key, count=k)

    def __call__(self, z: Any) -> Any:
        """``A z_i`` for a stack of vectors, chunk by chunk (``_chunks``)."""
        out = []
        for _, take, chunk in chunks(z, self.chunk):
            res = apply_linear_map(self.lm, chunk)
            if take < jax.tree.leaves(res)[0].shape[0]:
                res = jax.tree.map(lambda x, t=take: x[:t], res)
            if not is_traced(res) and not all_finite(res):
                raise FloatingPointError(
                    f"an operator product returned NaN or inf (products {self.count + 1} to "
                    f"{self.count + take}); check the loss and params."
                )
            self.count += take
            self.bar.update(take)
            out.append(res)
        return jax.tree.map(lambda *xs: jnp.concatenate(xs), *out) if len(out) > 1 else out[0]


def quad(z: Any, az: Any) -> jax.Array:
    """Per-probe ``z_i . A z_i`` of two stacks."""
    parts = [
        jnp.sum(a * b, axis=tuple(range(1, a.ndim)))
        for a, b in zip(jax.tree.leaves(z), jax.tree.leaves(az), strict=True)
    ]
    return sum(parts[1:], parts[0])


@functools.partial(jit, static_argnums=2)
def project_out(basis: Any, z: Any, layout: Layout) -> Any:
    """``z_i - V V^T z_i`` for each vector of the stack z (leaves
    ``(k, *leaf.shape)``); the basis V is stacked in the
    form the Lanczos kernel keeps (``Layout.flatten_leaves``)."""
    return layout.unflatten_leaves(projected(basis, layout.flatten_leaves(z)))


def projected(basis: Any, w: Any, rows: int | None = None) -> Any:
    """``w_i - V V^T w_i`` for a stack w, both in the kernel's stored form;
    V the first ``rows`` rows of ``basis`` (all by default), read in place
    (no copy of them out of a loop's state)."""
    coeffs = stack_dot(w, basis)
    if rows is not None:
        coeffs = jnp.where(jnp.arange(coeffs.shape[1]) < rows, coeffs, 0)
    return jax.tree.map(jnp.subtract, w, basis_combine(coeffs, basis))


def mean_stderr(samples: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sample mean over axis 0 and its standard error (ddof=1)."""
    m = samples.shape[0]
    return jnp.mean(samples, axis=0), jnp.std(samples, axis=0, ddof=1) / np.sqrt(m)


class Samples:
    """Per-probe samples ``fn(z, A z)`` (rows of a flat array); their mean and
    its standard error from their spread (``mean_stderr``)."""

    def __init__(self, fn: Callable[[Any, Any], jax.Array]):
        self.fn, self.rows = fn, []

    def add(self, z: Any, tz: Any, a_tz: Any) -> None:
        """One chunk: the raw probes z, the probes as applied, their images."""
        del z
        self.rows.append(self.fn(tz, a_tz))

    def result(self) -> tuple[jax.Array, jax.Array]:
        return mean_stderr(jnp.concatenate(self.rows))


@functools.partial(jit, static_argnums=4)
def _deflated_chunk(basis, z, p, ap, layout):
    """``p_i . A p_i``, and the mean and centred sum of squares over the chunk
    of ``d_i = z_i * B z_i`` with ``B z_i = (I - VV^T) A p_i`` (flat (n,))."""
    d = layout.ravel(z) * layout.ravel(project_out(basis, ap, layout))
    mean = jnp.mean(d, axis=0)
    return quad(p, ap), mean, jnp.sum(jnp.square(d - mean[None]), axis=0)


def deflated_stats(basis: Any, z: Any, p: Any, ap: Any, layout: Layout) -> tuple:
    """``DeflatedQuad`` of g probes in one chunk, traced into the caller's
    program (the krylov trace's, ``_deflation.krylov_trace``): the probes z,
    ``p = (I - VV^T) z`` and ``A p`` as stacks in ``layout``, the basis V in
    the stored form. Returns the mean of ``p_i . A p_i`` and its standard
    error (``DeflatedQuad.result``)."""
    q, _, m2 = _deflated_chunk(basis, z, p, ap, layout)
    g = q.shape[0]
    variance = 2 * jnp.sum(m2) / (g - 1)  # of one sample p^T A p
    return jnp.mean(q), jnp.sqrt(variance / g)


@jit
def _merge(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    # Chan et al.'s pairwise update of (mean, sum of squared deviations)
    count = count_a + count_b
    delta = mean_b - mean_a
    return mean_a + delta * (count_b / count), m2_a + m2_b + delta**2 * (count_a * count_b / count)


class DeflatedQuad:
    """Hutchinson on ``B = (I - VV^T) A (I - VV^T)``: samples ``p_i . A p_i``
    with ``p_i = (I - VV^T) z_i`` for Rademacher ``z_i``.

    The standard error of their mean is ``sqrt(2 sum_k s_k^2 / g)`` with
    ``s_k^2`` the sample variance (ddof=1) over the g probes of
    ``z_ik (B z_i)_k``: ``2 sum_k s_k^2`` is an unbiased estimate of
    ``Var(z^T B z) = 2 (||B||_F^2 - sum_k B_kk^2)``, the exact variance for
    Rademacher probes (equivalently ``2 mean_i ||B z_i||^2`` less a
    U-statistic of ``sum_k B_kk^2``; never negative). Running moments, so
    the chunks need not be kept.
    """

    def __init__(self, basis: Any, layout: Layout):
        self.basis, self.layout = basis, layout
        self.q, self.count, self.moments = [], 0, None

    def add(self, z: Any, p: Any, ap: Any) -> None:
        """One chunk: the Rademacher probes z, ``p = (I - VV^T) z``, ``A p``."""
        q, mean, m2 = _deflated_chunk(self.basis, z, p, ap, self.layout)
        take = q.shape[0]
        if self.moments is None:
            self.moments = (mean, m2)
        else:
            self.moments = _merge(self.count, *self.moments, take, mean, m2)
        self.q.append(q)
        self.count += take

    def result(self) -> tuple[jax.Array, jax.Array]:
        q = jnp.concatenate(self.q)
        g = q.shape[0]
        variance = 2 * jnp.sum(self.moments[1]) / (g - 1)  # of one sample p^T A p
        return jnp.mean(q), jnp.sqrt(variance / g)


def sequential(
    products: Products,
    key: jax.Array,
    budget: int,
    stats: Samples | DeflatedQuad,
    offset: jax.Array,
    rtol: float | None,
    size: Callable[[jax.Array], jax.Array],
    transform: Callable[[Any], Any] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Monte Carlo part: Rademacher probes z, ``stats.add(z, t(z), A t(z))``
    per chunk (``transform`` t, a projection, or none); chunk by chunk when
    stopping on ``rtol`` (relative standard error of ``offset + mean``).
    Returns ``offset + mean`` and the standard error, from ``stats``."""
    keys = jax.random.split(key, budget)
    step = budget if rtol is None else max(2, min(products.chunk, 16))
    used = 0
    while used < budget:
        take = min(step, budget - used)
        if budget - used - take == 1:  # never leave a single probe behind
            take += 1
        z = _rademacher(keys[used : used + take], products.lm, False)
        tz = z if transform is None else transform(z)
        stats.add(z, tz, products(tz))
        used += take
        mean, err = stats.result()
        if is_traced(mean):
            continue  # inside jax.jit: the fixed budget (rtol is refused there)
        products.bar.set_postfix(value=f"{float(jnp.sum(offset + mean)):.4g}")
        if rtol is not None and float(size(err)) <= rtol * float(size(offset + mean)):
            break
    mean, err = stats.result()
    return offset + mean, err


def exact_diagonal(products: Products) -> jax.Array:
    """The diagonal from basis vectors, one product each: (n,). For a block
    (a masked map) only the block's coordinates are multiplied, in chunks of
    power-of-two sizes (a few compiled shapes serve every block), and the
    rest of the diagonal is 0."""
    out, n, layout = [], products.lm.n, products.layout
    within = products.lm.block_indices()
    if within is not None:  # numpy on the host: no program per chunk size
        diag, k = np.zeros((n,), np.dtype(products.lm.dtype)), within.size
        for start in range(0, k, products.chunk):
            rows = np.arange(start, min(start + products.chunk, k))
            basis = np.zeros((rows.size, k), diag.dtype)
            basis[np.arange(rows.size), rows] = 1
            got = block_rows(products.lm, within, basis, products.chunk)
            diag[within[rows]] = got[np.arange(rows.size), rows]
            products.count += rows.size
            products.bar.update(rows.size)
        return jax.device_put(diag)
    for start in range(0, n, products.chunk):
        idx = start + np.arange(min(products.chunk, n - start))
        basis = jnp.asarray(idx[:, None] == np.arange(n)[None, :], dtype=products.lm.dtype)
        out.append(jnp.sum(basis * layout.ravel(products(layout.unravel(basis))), axis=1))
    return jnp.concatenate(out)
