"""The Monte Carlo part of the trace and diagonal estimators.

Rademacher probes as stacked pytrees (drawn flat, one key per probe, so the
probes do not depend on how they are chunked), their products in chunks of
one compiled block product each (counted, refused when not finite), and the
sequential Hutchinson loop that stops on a relative standard error. The
reductions ``z . A z`` happen here, outside any compiled loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools._checks import check_int, is_traced
from hessian_tools._operator import LinearMap, apply_linear_map
from hessian_tools._tree import Layout, basis_combine, stack_dot

__all__ = ["Products", "exact_diagonal", "mean_stderr", "project_out", "quad", "sequential"]


@functools.partial(jax.jit, static_argnums=(1, 2))
def _rademacher_rows(keys: jax.Array, n: int, dtype: Any) -> jax.Array:
    # one key per probe, so the probes do not depend on how they are chunked
    return jax.vmap(lambda k: jax.random.rademacher(k, (n,), dtype))(keys)


class Products:
    """Applies the operator to stacks of probes in chunks, counting HVPs and
    refusing non-finite products."""

    def __init__(self, lm: LinearMap, chunk_size: int | None, bar: Any):
        self.lm, self.layout, self.bar, self.count = lm, lm.layout, bar, 0
        if chunk_size is None:
            # about 64 MB of probe vectors per chunk (vmap holds the HVP's
            # intermediates per probe too), at most 256
            chunk_size = max(1, min(256, (64 << 20) // max(1, lm.n * lm.dtype.itemsize)))
        self.chunk = check_int("chunk_size", chunk_size, low=1)

    def probes(self, key: jax.Array, k: int) -> Any:
        """k Rademacher probes as a stack (flat draw, one key per probe)."""
        rows = _rademacher_rows(jax.random.split(key, k), self.lm.n, self.lm.dtype)
        return self.layout.unravel(rows)

    def __call__(self, z: Any) -> Any:
        """``A z_i`` for a stack of vectors, chunk by chunk (the last chunk
        padded to keep one compiled shape)."""
        total = jax.tree.leaves(z)[0].shape[0]
        out = []
        for start in range(0, total, self.chunk):
            take = min(self.chunk, total - start)
            block = jax.tree.map(lambda x, s=start, t=take: x[s : s + t], z)
            pad = self.chunk - take if total > self.chunk else 0
            if pad:
                block = jax.tree.map(lambda x, p=pad: jnp.concatenate([x, x[:p] * 0]), block)
            res = apply_linear_map(self.lm, block)
            if pad:
                res = jax.tree.map(lambda x, t=take: x[:t], res)
            if not is_traced(res) and not all(
                bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(res)
            ):
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


@functools.partial(jax.jit, static_argnums=2)
def project_out(basis: Any, z: Any, layout: Layout) -> Any:
    """``z_i - V V^T z_i`` for each vector of the stack z (leaves
    ``(k, *leaf.shape)``); the basis V is stored with flat leaves
    ``(d, leaf.size)``, as the Lanczos kernel keeps it."""
    flat = layout.flatten_leaves(z, lead=1)
    projected = jax.tree.map(jnp.subtract, flat, basis_combine(stack_dot(flat, basis), basis))
    return layout.unflatten_leaves(projected, lead=1)


def mean_stderr(samples: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sample mean over axis 0 and its standard error (ddof=1)."""
    m = samples.shape[0]
    return jnp.mean(samples, axis=0), jnp.std(samples, axis=0, ddof=1) / np.sqrt(m)


def sequential(
    products: Products,
    key: jax.Array,
    budget: int,
    sample: Callable[[Any, Any], jax.Array],
    offset: jax.Array,
    rtol: float | None,
    size: Callable[[jax.Array], jax.Array],
    transform: Callable[[Any], Any] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Monte Carlo part: per-probe ``sample(z, A z)`` (rows of a flat array);
    chunk by chunk when stopping on ``rtol`` (relative standard error of
    ``offset + mean``). ``transform`` maps the probes first (a projection)."""
    keys = jax.random.split(key, budget)
    step = budget if rtol is None else max(2, min(products.chunk, 16))
    samples = []
    used = 0
    while used < budget:
        take = min(step, budget - used)
        if budget - used - take == 1:  # never leave a single probe behind
            take += 1
        rows = _rademacher_rows(keys[used : used + take], products.lm.n, products.lm.dtype)
        z = products.layout.unravel(rows)
        if transform is not None:
            z = transform(z)
        samples.append(sample(z, products(z)))
        used += take
        mean, err = mean_stderr(jnp.concatenate(samples))
        if is_traced(mean):
            continue  # inside jax.jit: the fixed budget (rtol is refused there)
        products.bar.set_postfix(value=f"{float(jnp.sum(offset + mean)):.4g}")
        if rtol is not None and float(size(err)) <= rtol * float(size(offset + mean)):
            break
    mean, err = mean_stderr(jnp.concatenate(samples))
    return offset + mean, err


def exact_diagonal(products: Products) -> jax.Array:
    out, n, layout = [], products.lm.n, products.layout
    for start in range(0, n, products.chunk):
        idx = start + np.arange(min(products.chunk, n - start))
        basis = jnp.asarray(idx[:, None] == np.arange(n)[None, :], dtype=products.lm.dtype)
        out.append(jnp.sum(basis * layout.ravel(products(layout.unravel(basis))), axis=1))
    return jnp.concatenate(out)
