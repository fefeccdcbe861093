"""Spectral density of a symmetric operator by stochastic Lanczos quadrature.

For a unit probe ``v``, ``m`` Lanczos steps give the Gauss quadrature rule of
the measure ``sum_i (v . u_i)^2 delta(lambda_i)``: nodes are the eigenvalues
of T and weights the squared *first components* of T's eigenvectors (Golub &
Meurant 1994). Averaging over Rademacher probes gives an unbiased estimate of
the spectral measure ``(1/n) sum_i delta(lambda_i)`` (Ubaru, Chen & Saad 2017,
"Fast estimation of tr(f(A)) via stochastic Lanczos quadrature"; Ghorbani,
Krishnan & Xiao 2019, "An investigation into neural net optimization via
Hessian eigenvalue density"). Several probes are needed: one probe
misjudges the mass of small groups of eigenvalues (e.g. the negative ones).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import _krylov
from hessian_tools._checks import (
    as_key,
    check_accumulate_dtype,
    check_int,
    check_positive,
    is_traced,
)
from hessian_tools._chunks import CHUNK_BYTES, chunks, fit
from hessian_tools._compile import jit
from hessian_tools._driver import drive
from hessian_tools._operator import as_linear_map
from hessian_tools._progress import progress_bar

__all__ = ["SpectralDensity", "spectral_density"]

#: default Gaussian width, relative to the spectral width (max - min node)
DEFAULT_RELATIVE_SIGMA = 1e-3


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SpectralDensity:
    """A stochastic-Lanczos-quadrature estimate of the eigenvalue density.

    Attributes:
        grid: (g,) points where the smoothed density is evaluated.
        density: (g,) Gaussian-smoothed density on ``grid``; it integrates to
            about 1 (a probability density over eigenvalues, i.e. the
            eigenvalue count divided by n).
        nodes: (num_probes, num_steps) quadrature nodes (Ritz values) per
            probe; entries past a probe's breakdown carry zero weight.
        weights: (num_probes, num_steps) quadrature weights, the squared first
            components of T's eigenvectors; each row sums to 1.
        sigma: the Gaussian width used for ``density``.
        num_matvecs: HVPs spent (all probes).

    Under ``jax.jit`` every field is a traced array; the methods below need
    concrete values (call them outside).
    """

    grid: jax.Array
    density: jax.Array
    nodes: jax.Array
    weights: jax.Array
    sigma: Any
    num_matvecs: Any

    @property
    def num_probes(self) -> int:
        return int(self.nodes.shape[0])

    @property
    def lambda_max(self) -> float:
        """Largest node: an estimate (from below) of the largest eigenvalue."""
        return float(np.max(np.where(np.asarray(self.weights) > 0, self.nodes, -np.inf)))

    @property
    def lambda_min(self) -> float:
        """Smallest node: an estimate (from above) of the smallest eigenvalue."""
        return float(np.min(np.where(np.asarray(self.weights) > 0, self.nodes, np.inf)))

    def _per_probe(self, fn) -> np.ndarray:
        nodes = np.asarray(self.nodes, np.float64)
        weights = np.asarray(self.weights, np.float64)
        return np.sum(weights * fn(nodes), axis=-1)

    def cdf(self, x: Any) -> np.ndarray:
        """Estimated fraction of eigenvalues ``<= x`` (array-valued in x),
        from the quadrature nodes and weights, not the smoothed curve.
        Monotone, from 0 below the smallest node to 1 above the largest."""
        x = np.asarray(x, np.float64)
        nodes = np.asarray(self.nodes, np.float64).ravel()
        weights = np.asarray(self.weights, np.float64).ravel() / self.num_probes
        order = np.argsort(nodes)
        cum = np.concatenate([[0.0], np.cumsum(weights[order])])
        out = cum[np.searchsorted(nodes[order], x, side="right")]
        return np.clip(out, 0.0, 1.0)

    def moment(self, k: int) -> tuple[float, float]:
        """Estimate of ``tr(A^k) / n`` with its standard error over probes."""
        per = self._per_probe(lambda t: t**k)
        return float(per.mean()), _stderr(per)

    def negative_fraction(self, threshold: float | None = None) -> tuple[float, float]:
        """Estimated fraction of eigenvalues below ``threshold`` and its
        standard error over probes.

        Args:
            threshold: default ``-1e-3 * lambda_max`` (eigenvalues closer to
                zero count as zero, not negative).

        Returns:
            ``(value, stderr)``; multiply by n for the index (count).
        """
        if threshold is None:
            threshold = -1e-3 * max(self.lambda_max, 0.0)
        per = self._per_probe(lambda t: (t < threshold).astype(np.float64))
        return float(per.mean()), _stderr(per)


def _stderr(per_probe: np.ndarray) -> float:
    p = per_probe.shape[0]
    return float(per_probe.std(ddof=1) / np.sqrt(p)) if p > 1 else float("inf")


def rademacher_probes(key: jax.Array, num: int, n: int, dtype: Any) -> jax.Array:
    """(num, n) Rademacher probes (entries +-1), the ones ``spectral_density``
    draws from ``key``."""
    return jax.random.rademacher(key, (num, n), dtype)


def _stored(lm, probes):
    """Probes in the kernel's stored form, with the parameters' shardings."""
    return lm.layout.flatten_leaves(lm.conform(probes, lead=1))


def _slq(drv, probes, breakdown_tol, *, m, acc):
    """Lanczos from each probe of the stack, all sharing one ``prepare``
    (compiled: one after another or vmapped, by ``lm.batching``; on the
    host: all at once); the coefficients of each T."""
    starts = drv.call(_stored, drv.lm, probes)
    return drv.map_runs(_coefficients, starts, m, acc=acc, breakdown_tol=breakdown_tol)


def _coefficients(state: _krylov.State):
    """(steps, alphas, betas, status) of one probe's run."""
    m = state.coeffs.shape[1]
    idx, c = jnp.arange(m), state.coeffs
    return state.num_columns, c[idx, idx], c[idx + 1, idx], state.status


def _quadrature(alphas: jax.Array, betas: jax.Array, steps: jax.Array):
    """Gauss nodes and weights of one probe's T (padded to len(alphas)):
    the eigenvalues of T and the squared first components of its
    eigenvectors; entries past ``steps`` repeat the last node with weight 0."""
    m = alphas.shape[0]
    idx = jnp.arange(m)
    valid = idx < steps
    off = jnp.where(idx[:-1] < steps - 1, betas[:-1], 0)
    t = jnp.diag(jnp.where(valid, alphas, 0)) + jnp.diag(off, 1) + jnp.diag(off, -1)
    t = t + jnp.diag(jnp.where(valid, 0, jnp.sum(jnp.abs(t)) + 1))  # padding sorts last
    theta, u = jnp.linalg.eigh(t)
    last = theta[jnp.maximum(steps - 1, 0)]
    return jnp.where(valid, theta, last), jnp.where(valid, u[0] ** 2, 0)


def _smooth(nodes: jax.Array, weights: jax.Array, grid: jax.Array, sigma: jax.Array) -> jax.Array:
    """Average over probes of sum_i w_i N(x; node_i, sigma^2), in chunks of
    nodes (a (grid, chunk) block at a time)."""
    probes = nodes.shape[0]
    t, w = nodes.ravel(), weights.ravel()
    chunk = 256
    pad = (-t.shape[0]) % chunk
    t = jnp.concatenate([t, jnp.zeros((pad,), t.dtype)]).reshape(-1, chunk)
    w = jnp.concatenate([w, jnp.zeros((pad,), w.dtype)]).reshape(-1, chunk)
    scale = 1.0 / (jnp.sqrt(2 * jnp.pi) * sigma)

    def add(total, tw):
        tc, wc = tw
        z = (grid[:, None] - tc[None, :]) / sigma
        return total + jnp.sum(wc[None, :] * jnp.exp(-0.5 * z**2), axis=1), None

    total, _ = jax.lax.scan(add, jnp.zeros_like(grid), (t, w))
    return total * scale / probes


@functools.partial(jit, static_argnames=("grid_size",))
def _density(alphas, betas, steps, sigma, grid, *, grid_size):
    """Nodes, weights, sigma, grid and the smoothed density (see
    ``spectral_density``); ``sigma``/``grid`` None for the defaults."""
    nodes, weights = jax.vmap(_quadrature)(alphas, betas, steps)
    width = jnp.max(nodes) - jnp.min(nodes)
    if sigma is None:
        scale = jnp.maximum(
            jnp.maximum(width, jnp.max(jnp.abs(nodes))), jnp.finfo(nodes.dtype).tiny
        )
        sigma = DEFAULT_RELATIVE_SIGMA * scale
    if grid is None:
        grid = jnp.linspace(jnp.min(nodes) - 6 * sigma, jnp.max(nodes) + 6 * sigma, grid_size)
    grid = jnp.asarray(grid, nodes.dtype)
    return nodes, weights, sigma, grid, _smooth(nodes, weights, grid, sigma)


def spectral_density(
    op: Any,
    *,
    key: jax.Array,
    num_matvecs: int = 1536,
    num_probes: int = 12,
    sigma: float | None = None,
    grid: Any = None,
    grid_size: int = 4096,
    linearize: bool = True,
    accumulate_dtype: Any = None,
    chunk_size: int | None = None,
    progress: bool = False,
    num_steps: int | None = None,
) -> SpectralDensity:
    """Eigenvalue density by stochastic Lanczos quadrature (SLQ).

    Runs ``num_matvecs // num_probes`` Lanczos steps with full
    reorthogonalisation (the library's kernel) from each of ``num_probes``
    Rademacher probes and averages the Gauss quadrature rules (Ubaru, Chen &
    Saad 2017; Ghorbani, Krishnan & Xiao 2019). Weights are the squared first
    components of T's eigenvectors. Probes run one after another on CPU and
    vectorised on accelerators (the operator's ``batching``), in chunks.

    Args:
        op: a ``HessianOperator`` (any ``CurvatureOperator``) or a dense
            symmetric array.
        key: PRNG key for the probes.
        num_matvecs: HVP budget, split evenly over the probes; the steps per
            probe (nodes per probe), ``num_matvecs // num_probes``, must be
            between 1 and n.
        num_probes: number of probes; the standard errors shrink as
            1/sqrt(num_probes).
        sigma: Gaussian width of the smoothed ``density`` (default 1e-3 of
            the spectral width, max - min node).
        grid: points for ``density`` (default ``grid_size`` points spanning
            the nodes plus 6 sigma each side).
        grid_size: number of default grid points.
        linearize: share one forward pass between the HVPs of a chunk.
        accumulate_dtype: dtype for T's entries (e.g. float64 with x64 on).
        chunk_size: probes per compiled call (default: all of them when
            probes run one after another; as many as fit in about 256 MB of
            Lanczos bases when vectorised, ``chunk * (steps + 1) * n``
            numbers).
        progress: show a progress bar of HVPs.
        num_steps: Lanczos steps per probe (nodes per probe), instead of
            ``num_matvecs // num_probes``.

    Returns:
        A ``SpectralDensity`` with ``.grid``, ``.density``, ``.nodes``,
        ``.weights``, ``.cdf(x)``, ``.negative_fraction()``, ``.moment(k)``.

    Cost: ``num_probes * steps`` HVPs (fewer after breakdowns). The
    defaults (128 steps, 12 probes) and their accuracy on a network Hessian
    are in the user guide; fewer steps blur the mass next to zero into one
    node.

    Raises:
        ValueError: a bad budget, probe count, sigma or grid.
        FloatingPointError: a product returned NaN or inf (names the probe).
    """
    lm = as_linear_map(op, linearize=linearize)
    n, dtype = int(lm.dim), lm.dtype  # a block's size (its map acts on all the variables)
    num_probes = check_int("num_probes", num_probes, low=1)
    if num_steps is None:
        total = check_int("num_matvecs", num_matvecs, low=num_probes)
        num_steps = total // num_probes
    m = check_int("num_steps (steps per probe)", num_steps, low=1)
    if m > n:
        raise ValueError(
            f"steps per probe must be <= n = {n} (a Krylov basis has at most n vectors); got "
            f"{m}. Lower num_matvecs or raise num_probes."
        )
    sigma = check_positive("sigma", sigma)
    acc = check_accumulate_dtype(accumulate_dtype, dtype)
    bd_tol = _krylov.default_breakdown_tol(n, dtype)
    # probes in the operator's block, whose Krylov spaces stay there
    probes = lm.project(lm.layout.unravel(rademacher_probes(as_key(key), num_probes, lm.n, dtype)))
    if chunk_size is None:  # vectorised: the Lanczos bases of a chunk in about 256 MB
        item = (m + 1) * lm.n * jnp.dtype(dtype).itemsize
        bases = fit(item, cap=num_probes, budget=4 * CHUNK_BYTES)
        chunk_size = num_probes if lm.batching == "map" else bases
    chunk = check_int("chunk_size", chunk_size, low=1)
    results = []
    with progress_bar(num_probes * m, "spectral density", progress) as bar:
        # padded with repeated probes: a zero start vector has no Krylov space
        for start, take, block in chunks(probes, chunk, pad="repeat"):
            part = drive(_slq, lm, block, bd_tol, bar=bar, m=m, acc=acc)
            part = [x[:take] for x in part]
            if not is_traced(part[0]):
                for i, s in enumerate(np.asarray(part[0])):
                    _krylov.raise_if_nonfinite(part[3][i], int(s) - 1, f"SLQ (probe {start + i})")
            results.append(part)
    steps, alphas, betas = (jnp.concatenate([r[i] for r in results]) for i in range(3))
    if grid is not None and not is_traced(grid):
        grid = np.asarray(grid, np.float64)
        if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) <= 0):
            raise ValueError("grid must be a 1-D increasing array of at least 2 points.")
    nodes, weights, sigma, grid, density = _density(
        alphas, betas, steps, sigma, grid, grid_size=check_int("grid_size", grid_size, low=2)
    )
    total = jnp.sum(steps)
    return SpectralDensity(
        grid=grid,
        density=density,
        nodes=nodes,
        weights=weights,
        sigma=sigma if is_traced(sigma) else float(sigma),
        num_matvecs=total if is_traced(total) else int(total),
    )
