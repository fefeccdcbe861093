"""Thick-restart Lanczos for a few extreme eigenpairs (``eigenpairs``' iterative path).

Wu & Simon 2000, "Thick-restart Lanczos method for large symmetric eigenvalue
problems", SIAM J. Matrix Anal. Appl. 22(2). Each cycle extends the basis one
HVP at a time with the Lanczos kernel (``_krylov``), checking after every
product whether the wanted Ritz pairs are accepted; a restart keeps the
wanted Ritz vectors and some spare ones and continues from the Lanczos
residual, their couplings written into the kernel's projected matrix (the
arrowhead). The algorithm is written once on the loop driver
(``_driver``): cycles, restarts and the acceptance test compile into one
program (which also works inside ``jax.jit``), or run from Python one
compiled step at a time for products that are slow in compiled loops.

Acceptance (``Criterion``): every wanted pair's a-posteriori error bound
(``_certify.error_bounds``) at most ``max(rtol |theta|, atol)``, or within
the rounding level that nothing below can be certified.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hessian_tools import _certify, _krylov
from hessian_tools._certify import error_bounds
from hessian_tools._checks import (
    as_key,
    check_accumulate_dtype,
    check_int,
    host_rng,
    is_traced,
)
from hessian_tools._compile import tier_of_use, tiers_apply
from hessian_tools._driver import drive
from hessian_tools._operator import apply_batched
from hessian_tools._progress import progress_bar
from hessian_tools._tree import basis_combine, flat_stacks, set_row

__all__ = [
    "Criterion",
    "basis_size",
    "default_rtol",
    "error_bounds",
    "lanczos_cost",
    "lanczos_eigenpairs",
    "noise_floor",
    "wanted_positions",
]


class Criterion(NamedTuple):
    """When a Ritz pair is accepted: its error bound is at most
    ``max(rtol |theta|, atol, 3 (floor ||A|| + measured floor))``, ``||A||``
    estimated by the largest |Ritz value| seen (arrays, traced). ``dim`` is
    the operator's dimension (``LinearMap.dim``: a block's size is data, so
    every block reuses the compiled solve). ``check`` (a bool array): a
    completeness check's run (``_certify``), which accepts nothing and stops
    at a breakdown, so that it spends its budget exploring the deflated
    operator."""

    rtol: Any
    atol: Any
    floor: Any
    dim: Any
    check: Any = False


def wanted_positions(cols: Any, k: int, which: str) -> jax.Array:
    """Indices of the wanted Ritz values among ``cols`` ascending valid ones,
    in the result's order: descending for "largest", ascending otherwise
    ("both": floor(k/2) from the bottom, then ceil(k/2) from the top).
    Numpy for a concrete count (the dense path: no program per size)."""
    xp = np if isinstance(cols, (int, np.integer)) else jnp
    ar = xp.arange(k)
    if which == "largest":
        pos = cols - 1 - ar
    elif which == "smallest":
        pos = ar
    else:
        pos = xp.where(ar < k // 2, ar, cols - k + ar)
    return xp.clip(pos, 0, xp.maximum(cols - 1, 0))


def _rounding(norm: Any, dtype: Any) -> Any:
    """The solver's own rounding error on a Ritz value, 10 eps ||A||: the
    Lanczos relation holds to a few eps ||A|| with a basis orthonormal to
    working precision (two Gram-Schmidt passes)."""
    return 10 * jnp.finfo(dtype).eps * norm


def _accepted(theta, res, cols, norm, k, which, crit: Criterion, dtype, floor=0.0):
    """Whether the wanted pairs meet the criterion; ``floor`` is the products'
    measured error (``_certify.product_floor``), below which no bound can go:
    a bound within 3 times the rounding (``10 eps ||A||`` + floor) counts as
    met, as nothing better can be certified (``_certify.verdict`` says whether
    that met the user's tolerance)."""
    pos = wanted_positions(cols, k, which)
    bounds = error_bounds(
        theta, res, cols, _rounding(norm, dtype), min_cols=_certify.min_columns(k), floor=floor
    )
    limit = jnp.maximum(
        jnp.maximum(crit.rtol * jnp.abs(theta[pos]), crit.atol),
        3 * (crit.floor * norm + floor),  # the solver's and the products' rounding
    )
    return (cols >= k) & jnp.all(bounds[pos] <= limit) & ~jnp.asarray(crit.check)


def _floor(s: _krylov.State, norm, n: int):
    return _certify.product_floor(s.coeffs, s.num_columns, norm, n)


class _Loop(NamedTuple):
    krylov: _krylov.State
    used: jax.Array  # products spent
    restarts: jax.Array
    norm: jax.Array  # running max |Ritz value|: an estimate of ||A||
    key: jax.Array
    done: jax.Array


def _restart(s: _krylov.State, theta, u, fresh, project, *, keep: int, which: str, acc: Any):
    """The basis and arrowhead after a thick restart that keeps ``keep``
    Ritz pairs (all of them after a breakdown, room permitting, the basis
    then continued from the random vector ``fresh(basis)``, stored form)."""
    m = s.coeffs.shape[1]
    rows = m + 1
    cols = s.num_columns
    broken = s.status == _krylov.BREAKDOWN
    kept = jnp.where(broken, jnp.minimum(cols, m - 1), keep)
    top = {"largest": kept, "smallest": 0, "both": (kept + 1) // 2}[which]
    i = jnp.arange(m - 1)
    pos = jnp.clip(jnp.where(i < kept - top, i, cols - kept + i), 0, m - 1)
    live = i < kept
    coeffs = jnp.zeros((rows, rows), u.dtype)
    coeffs = coeffs.at[: m - 1, :m].set(jnp.where(live[:, None], u[:, pos].T, 0))
    # row `kept` continues from the Lanczos residual (row `cols` of the basis)
    coeffs = coeffs.at[kept].set(jnp.where(jnp.arange(rows) == cols, 1.0, 0.0).astype(u.dtype))
    basis = basis_combine(coeffs, s.basis)

    def continued(b):  # a breakdown: the basis goes on from a new direction
        v = project(fresh(b))  # in the operator's block (stored form)
        v, _ = _krylov.gram_schmidt(b, v)
        v, _ = _krylov.unit(v, acc)
        return set_row(b, kept, v)

    basis = lax.cond(broken, continued, lambda b: b, basis)
    beta = s.coeffs[s.size - 1, cols - 1]
    arrow = jnp.where(broken, 0, beta * u[cols - 1, pos])
    new = jnp.zeros_like(s.coeffs)
    new = new.at[i, i].set(jnp.where(live, theta[pos], 0).astype(new.dtype))
    new = new.at[kept, i].set(jnp.where(live, arrow, 0).astype(new.dtype))
    status = jnp.asarray(_krylov.RUNNING, s.status.dtype)
    return _krylov.State((kept + 1).astype(s.size.dtype), basis, new, s.scale, status)


class Config(NamedTuple):
    """The static settings of a solve (the budget is an array, so that the
    completeness check and a re-solve run the same compiled program)."""

    k: int
    which: str
    m: int  # basis size
    acc: Any  # dtype of the projected matrix
    n: int  # the operator's dimension, capped at m + 1: only m < n matters here
    dtype: Any  # the operator's
    host_draws: bool = False  # random vectors come from the host (``lanczos_eigenpairs``)

    @property
    def keep(self) -> int:
        """Ritz pairs kept at a restart: the wanted ones and about half of
        the rest (all but one when the basis spans everything)."""
        return min(self.m - 2, self.k + (self.m - self.k) // 2) if self.m < self.n else self.m - 1


@functools.cache
def _monitor(cfg: Config) -> Callable:
    """``monitor(state, norm0, *criterion)``: are the wanted pairs
    accepted after this step? One object per configuration (a static
    argument of compiled steps)."""

    def monitor(s, norm0, *crit):
        crit = Criterion(*crit)

        def accepted():
            theta, _, res = _krylov.ritz(s)
            cols = s.num_columns
            norm = jnp.maximum(norm0, jnp.maximum(jnp.abs(theta[0]), jnp.abs(theta[cols - 1])))
            measured = _floor(s, norm, crit.dim)
            return _accepted(theta, res, cols, norm, cfg.k, cfg.which, crit, cfg.dtype, measured)

        # a completeness check accepts nothing: skip the test's eigh per step
        return lax.cond(jnp.asarray(crit.check), lambda: jnp.asarray(False), accepted)

    return monitor


def _begin(lm, v0, key, draw, cfg: Config) -> _Loop:
    # the start vector: v0, or (``draw``, where the host draws nothing) a
    # Gaussian one drawn here, inside the compiled program (eager random
    # draws compile programs of their own)
    if cfg.host_draws:  # flat (n,) from the host, cut into leaves here
        v0 = lm.layout.unravel(jnp.asarray(v0))
    else:
        key, sub = jax.random.split(key)
        v0 = lax.cond(
            draw,
            lambda: lm.layout.unravel(jax.random.normal(sub, (lm.layout.n,), lm.layout.dtype)),
            lambda: jax.tree.map(jnp.asarray, v0),
        )
    # deflated against the locked vectors (zero rows in a plain solve)
    locked = lm.operands[1]
    v0 = _certify.project(locked, _certify.project(locked, v0))
    state = _krylov.start(lm, jax.tree.map(lambda x: x[None], v0), cfg.m, cfg.acc)
    zero = jnp.zeros((), jnp.int32)
    return _Loop(state, zero, zero, jnp.zeros((), cfg.acc), key, jnp.asarray(False))


def _fresh_vector(key, spare, restarts, cfg: Config) -> Callable:
    """The new direction after a breakdown (stored form): ``spare``, a
    Gaussian vector the host drew, rotated by the restart count (the
    entries of a rotated Gaussian vector are again independent Gaussians, and
    uncorrelated with those of every other rotation: each breakdown of a
    solve continues from a new direction, however many there are); without
    host draws, a Gaussian vector drawn in the program from ``key``."""
    if cfg.host_draws:
        return lambda basis: jnp.roll(spare, restarts + 1, axis=-1)

    def drawn(basis):  # one row shaped like the basis's
        leaves, treedef = jax.tree.flatten(basis)
        keys = jax.random.split(key, len(leaves))
        return jax.tree.unflatten(
            treedef,
            [jax.random.normal(k, x.shape[1:], x.dtype) for k, x in zip(keys, leaves, strict=True)],
        )

    return drawn


def _end_cycle(lm, s: _krylov.State, loop: _Loop, start, crit: tuple, budget, spare, cfg: Config):
    """After a cycle's steps: accept, or restart keeping ``cfg.keep`` pairs
    (a completeness check stops at a breakdown instead)."""
    used = loop.used + s.num_columns - start
    theta, u, res = _krylov.ritz(s)
    cols = s.num_columns
    norm = jnp.maximum(loop.norm, jnp.maximum(jnp.abs(theta[0]), jnp.abs(theta[cols - 1])))
    crit_ = Criterion(*crit)
    ok = _accepted(
        theta, res, cols, norm, cfg.k, cfg.which, crit_, cfg.dtype, _floor(s, norm, crit_.dim)
    )
    broken = s.status == _krylov.BREAKDOWN
    spanned = broken & (cols >= crit_.dim)
    done = ok | (used >= budget) | spanned | (s.status == _krylov.NONFINITE)
    done = done | (broken & jnp.asarray(crit_.check))
    key, sub = (loop.key, None) if cfg.host_draws else jax.random.split(loop.key)
    fresh = _fresh_vector(sub, spare, loop.restarts, cfg)

    def project(stored):  # a stored-form vector, into the operator's block
        return lm.layout.flatten_leaves(lm.project(lm.layout.unflatten_leaves(stored)))

    s = lax.cond(
        done,
        lambda s: s,
        lambda s: _restart(
            s, theta, u, fresh, project, keep=cfg.keep, which=cfg.which, acc=cfg.acc
        ),
        s,
    )
    return _Loop(s, used, loop.restarts + (~done), norm, key, done)


def _finish(lm, loop: _Loop, crit: tuple, cfg: Config, true_residuals: bool) -> dict:
    s, k = loop.krylov, cfg.k
    theta, u, res = _krylov.ritz(s)
    cols = s.num_columns
    pos = wanted_positions(cols, k, cfg.which)
    values = theta[pos]
    vectors = _krylov.ritz_vectors(s, u[:, pos])  # stored form (k, n) on one CPU device
    used = loop.used
    criterion = Criterion(*crit)
    if true_residuals:  # (not in a completeness check, which needs none)

        def recomputed(res):
            products = apply_batched(_krylov.flat_product(lm), vectors, lm.batching)
            diff = jax.tree.map(
                lambda av, v: av - values.astype(v.dtype).reshape((-1,) + (1,) * (v.ndim - 1)) * v,
                products,
                vectors,
            )
            squares = [
                jnp.sum(d.astype(cfg.acc) ** 2, axis=tuple(range(1, d.ndim)))
                for d in jax.tree.leaves(diff)
            ]
            return res.at[pos].set(jnp.sqrt(sum(squares)).astype(res.dtype))

        check = jnp.asarray(criterion.check)
        res = lax.cond(check, lambda r: r, recomputed, res)
        used = used + jnp.where(check, 0, k)
    floor = _floor(s, loop.norm, criterion.dim)
    rounding = _rounding(loop.norm, cfg.dtype)
    min_cols = _certify.min_columns(k)
    bounds = error_bounds(theta, res, cols, rounding, min_cols=min_cols, floor=floor)[pos]
    converged = _accepted(theta, res, cols, loop.norm, k, cfg.which, criterion, cfg.dtype, floor)
    spanned = (cols >= criterion.dim) & (s.status == _krylov.BREAKDOWN) & (cols >= k)
    converged = converged | spanned
    ends = jnp.stack([jnp.zeros_like(cols), jnp.maximum(cols, 1) - 1])
    return {
        "values": values,
        "vectors": _krylov.as_vectors(vectors, lm.layout),
        # the extreme Ritz pairs (a completeness check's find, stored form)
        "low": theta[0],
        "high": theta[ends[1]],
        "ends": _krylov.ritz_vectors(s, u[:, ends]),
        "residuals": res[pos],
        "bounds": bounds,
        "converged": converged,
        "num_matvecs": used,
        "num_restarts": loop.restarts,
        "norm": loop.norm,
        "status": s.status,
        "num_ritz": cols,
        "floor": floor + rounding,
        "key": loop.key,  # for the completeness check's fresh vector
    }


def _solve(
    drv, v0, key, draw, spare, crit, breakdown_tol, budget, *, cfg: Config, true_residuals: bool
):
    """Thick-restart Lanczos from ``v0`` (or, where ``draw``, a Gaussian
    vector drawn from ``key``; ``spare``: the host's random vector for
    breakdowns, stored form, with ``cfg.host_draws``) on the driver ``drv`` (``_driver``):
    cycles of kernel steps, each ended by ``_end_cycle`` (accept or
    restart), until accepted or ``budget`` products are spent. The operator
    is ``P A P``, P the projector onto the complement of the locked vectors
    (``_certify.deflated``; zero rows in a plain solve), so that a solve, a
    re-solve and the completeness check share one compiled program. ``crit``
    holds the criterion's arrays (``Criterion``). Returns the dict of
    ``_finish``."""

    def cycle(loop: _Loop) -> _Loop:
        start = loop.krylov.num_columns
        s = drv.run(
            loop.krylov,
            jnp.minimum(cfg.m, start + budget - loop.used),
            acc=cfg.acc,
            breakdown_tol=breakdown_tol,
            monitor=_monitor(cfg),
            monitor_args=(loop.norm, *crit),
        )
        # the loop's old basis was consumed by the steps (donated on the host)
        return drv.call(
            _end_cycle, drv.lm, s, loop._replace(krylov=None), start, crit, budget, spare, cfg=cfg
        )

    loop = drv.call(_begin, drv.lm, v0, key, draw, cfg=cfg)
    loop = drv.while_loop(lambda c: ~c.done, cycle, loop)
    return drv.call(_finish, drv.lm, loop, crit, cfg=cfg, true_residuals=true_residuals)


# --------------------------------------------------------------------------
# Defaults and the eager entry point of eigenpairs' Lanczos path


def default_rtol(dtype: Any) -> float:
    """Default relative accuracy of Lanczos eigenvalues: 1e-4 in float32 (and
    lower precisions), 1e-8 in float64."""
    return 1e-8 if np.dtype(dtype).itemsize >= 8 else 1e-4


def noise_floor(dtype: Any) -> float:
    """The bound below which an eigenvalue counts as converged whatever its
    size, relative to ``||A||``: ``10 eps``. Products carry rounding errors of
    about ``eps ||A||``, so no bound can be certified much below that (the
    most negative eigenvalues of a network Hessian often sit there)."""
    return 10 * float(np.finfo(np.dtype(dtype)).eps)


def basis_size(n: int, k: int, which: str, max_basis: int | None) -> int:
    """Lanczos basis size m: ``max(2k + 10, 30)`` for "largest", ``max(2k +
    10, 60)`` otherwise (the negative end of a network Hessian lies in the
    dense bulk around zero, where a wider basis restarts far less: 5 most
    negative of the 85k-parameter MLP, 470 HVPs with 30 vectors, 222 with 60),
    at most n."""
    floor = 30 if which == "largest" else 60
    return min(n, max(2 * k + 10, floor) if max_basis is None else int(max_basis))


def lanczos_cost(n: int, k: int, which: str, max_basis: int | None = None) -> int:
    """Products that thick-restart Lanczos typically spends: about two bases'
    worth at the top end, four at the bottom (used to choose the method)."""
    return (2 if which == "largest" else 4) * basis_size(n, k, which, max_basis)


def lanczos_eigenpairs(
    lm,
    k,
    which,
    *,
    key,
    v0,
    rtol,
    atol,
    max_matvecs,
    max_basis,
    accumulate_dtype,
    true_residuals,
    progress,
    product_seconds=None,
) -> dict:
    """Validate the options, run ``_solve`` and return its results (Python
    numbers when not traced); see ``hessian_tools.eigen.eigenpairs``.
    ``product_seconds``: None, or a function that measures a product's
    cost (``HessianOperator._product_seconds``), which plans the compiled
    program's first call (``_compile.tier_of_use``).

    Raises:
        ValueError: k >= n, a basis below k + 2, a budget below k.
        FloatingPointError: a product returned NaN or inf.
        RuntimeError: fewer than k Ritz pairs when the budget ran out.
    """
    n = int(lm.dim)  # a block's size (its map acts on all the variables)
    if k >= n:
        raise ValueError(
            f"k must be < n = {n} for Lanczos, which finds a few extreme eigenpairs; got "
            f'k = {k}. For all of them use the exact path, eigenpairs(..., method="dense").'
        )
    acc = check_accumulate_dtype(accumulate_dtype, lm.dtype)
    m = basis_size(n, k, which, max_basis)
    if m < k + 2 and m < n:
        raise ValueError(f"max_basis must be at least k + 2 = {k + 2}; got {m}.")
    budget = max(1000, 50 * m) if max_matvecs is None else check_int("max_matvecs", max_matvecs)
    if budget < k:
        raise ValueError(f"max_matvecs must be >= k = {k} (one product per pair); got {budget}.")
    start = None if v0 is None else _krylov.start_vector(lm, None, v0)
    # Random vectors (a start, a completeness check's probe, a new direction
    # after a breakdown) are drawn on the host on one CPU device: drawn in
    # the program, their random-number code was 51 of its 221 fusions on
    # W-mid (its first call's compilation now takes about 15% less CPU
    # time); elsewhere, and under jax.jit, in the program.
    traced = is_traced(start, key, lm.operands)
    host = flat_stacks() and not traced
    rng = host_rng(key) if host else None
    key = np.zeros(2, np.uint32) if host else as_key(key)  # (unused with host draws)
    rtol = default_rtol(lm.dtype) if rtol is None else rtol
    cfg = Config(k, which, m, acc, min(n, m + 1), jnp.dtype(lm.dtype), host)
    crit = tuple(np.asarray(x, acc) for x in (rtol, atol, noise_floor(lm.dtype), n))
    bd_tol = _krylov.default_breakdown_tol(n, lm.dtype)
    # numpy zeros (no eager jax programs): nothing locked in a solve (the
    # completeness check locks the returned vectors), no v0 when drawn
    unlocked = jax.tree.map(lambda x: np.zeros((k, *x.shape), x.dtype), lm.layout.structs())
    nothing = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), lm.layout.structs())

    flat_dtype, size = np.dtype(lm.layout.dtype), lm.layout.n
    native = np.float64 if flat_dtype.itemsize >= 8 else np.float32

    def flat(tree) -> np.ndarray:  # a start on the host, flat: cut in the program
        leaves = [np.ravel(np.asarray(x, flat_dtype)) for x in jax.tree.leaves(tree)]
        return np.concatenate(leaves) if len(leaves) > 1 else leaves[0]

    # the solve is a user's call; its completeness check and re-solves are not
    planned = product_seconds is not None and lm.loop == "device" and tiers_apply()
    seconds = product_seconds() if planned and not traced else None
    uses = [tier_of_use(lanczos_cost(n, k, which, max_basis), seconds)]

    def run(start, key, budget, locked=None, check=False):
        deflated = _certify.deflated(lm, unlocked if locked is None else locked)
        draw, spare = start is None, np.zeros(0, flat_dtype)
        if host:  # one draw per solve, in the layout's dtype: the spare (flat,
            # the stored form on one CPU device) is rotated before use, so it
            # may be the start itself
            spare = rng.standard_normal(size, native).astype(flat_dtype, copy=False)
            start, draw = (spare if draw else flat(start)), False
        with progress_bar(budget, "eigenpairs", progress) as bar:
            out = drive(
                _solve,
                deflated,
                nothing if start is None else start,
                key,
                np.asarray(draw),
                spare,
                (*crit, np.asarray(check)),
                bd_tol,
                np.asarray(budget, np.int32),
                bar=bar,
                use=uses.pop() if uses else None,
                cfg=cfg,
                true_residuals=bool(true_residuals),
            )
        _krylov.raise_if_nonfinite(out["status"], out["num_matvecs"], "HVP (eigenpairs)")
        return out

    out = run(start, key, budget)
    fields = ("converged", "num_matvecs", "num_restarts", "norm", "floor")
    counts = {f: out[f] for f in fields} | {"complete": None, "check_matvecs": 0}
    if not traced:
        if int(out["num_ritz"]) < k:
            raise RuntimeError(
                f"only {int(out['num_ritz'])} Ritz pairs after {int(out['num_matvecs'])} HVPs; "
                "raise max_matvecs."
            )
        out, counts = _certify.certified(lm, out, run, cfg, budget, rtol, atol)
    dtype = lm.dtype
    return {
        "values": out["values"].astype(dtype),
        "vectors": out["vectors"],
        "residuals": out["residuals"].astype(dtype),
        "bounds": out["bounds"].astype(dtype),
        **counts,
    }
