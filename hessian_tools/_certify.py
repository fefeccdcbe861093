"""What an eigenvalue certificate of ``eigenpairs`` rests on, in one place.

Three parts, each a guard against a failure seen in practice:

* ``error_bounds``: the a-posteriori bound of a Ritz value, quadratic
  (Kato-Temple) only where the gap to the rest of the spectrum is safely
  known, otherwise the residual (Krylov-Bogoliubov).
* ``product_floor``: the operator's own rounding, measured from the products
  already computed (the asymmetry of the projected matrix), added to every
  bound; ``verdict`` turns a tolerance below it (or below what the dtype can
  reach) into ``converged=False`` and one warning naming the cause.
* ``certified``'s completeness check: after a solve, a short Lanczos run
  from a fresh random vector, deflated against the returned vectors
  (``deflated``; the same compiled program as the solve), looks for an
  eigenvalue beyond them that the solve's Krylov space missed.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools._tree import basis_combine, basis_dot

__all__ = [
    "GAP_SAFETY",
    "certified",
    "check_steps",
    "deflated",
    "error_bounds",
    "min_columns",
    "missed",
    "product_floor",
    "project",
    "verdict",
]

#: the gap estimate must exceed the residual this many times over before the
#: quadratic bound r^2 / gap is used (otherwise the residual r)
GAP_SAFETY = 10.0


def min_columns(k: int) -> int:
    """Krylov columns needed before the quadratic bound counts: the start
    vector, the k wanted pairs and ``max(k, 4)`` more, so that the Ritz
    values next to the wanted ones come from a space of their own and not
    from the start vector alone (a warm start is a good start for the wanted
    pair only)."""
    return 1 + k + max(k, 4)


def error_bounds(
    theta: jax.Array,
    res: jax.Array,
    cols: Any,
    rounding: Any = 0.0,
    *,
    min_cols: Any = 0,
    floor: Any = 0.0,
) -> jax.Array:
    """A-posteriori bounds on the eigenvalue error of each Ritz pair.

    Rule (Parlett 1998, "The Symmetric Eigenvalue Problem", sec. 11.5-11.7;
    Saad 2011, "Numerical Methods for Large Eigenvalue Problems", sec. 4.3):

    * ``r_i = res_i + 2 floor``: the residual with respect to the exact
      operator, the computed one plus the products' own error (``floor``
      estimates ``||A_computed - A||``, ``product_floor``).
    * Krylov-Bogoliubov: an eigenvalue lies within ``r_i`` of ``theta_i``,
      whatever the rest of the spectrum. Always valid.
    * Kato-Temple: within ``r_i^2 / gap_i`` when no other eigenvalue lies
      within ``gap_i`` of ``theta_i``. The gap is estimated from the other
      Ritz values less their residuals, ``gap_i = min_j |theta_i - theta_j|
      - r_j``. Ritz values lie inside the spectrum (interlacing), so while
      the Krylov space is small the neighbour ``theta_j`` sits far inside
      and the estimate is too large (a warm start stopped after 2 HVPs 17x
      outside a bound of this kind). So the quadratic term counts only when
      (a) the space has at least ``min_cols`` columns (``min_columns(k)``:
      ``max(k, 4)`` beyond the start vector and the k wanted pairs), and
      (b) the estimated gap exceeds ``GAP_SAFETY = 10`` times ``r_i``.
      Otherwise the bound is ``r_i``.

    ``bound_i = min(r_i, r_i^2 / gap_i) + rounding + floor``, ``rounding``
    being the solver's own error (``10 eps ||A||``) and ``floor`` the
    products' error on the Rayleigh quotient.

    Assumptions: (i) the quadratic term assumes no eigenvalue lies between
    ``theta_i`` and its estimated gap that no Ritz value has seen yet: after
    ``min_cols`` columns with a tenfold margin this is the working
    hypothesis of every Krylov eigensolver, not a theorem. A cluster
    narrower than the residual that the space holds one copy of (a single
    start vector cannot split it) is certified as a whole: the bound is then
    on the distance to the cluster's interval. (ii) A bound says
    that *an* eigenvalue lies within it; that it is the i-th largest needs
    the completeness check (``certified``).

    Entries past ``cols`` (invalid Ritz values) are inf.
    """
    m = theta.shape[0]
    valid = jnp.arange(m) < cols
    r = res + 2 * floor
    dist = jnp.abs(theta[:, None] - theta[None, :]) - r[None, :]
    dist = jnp.where(valid[None, :] & ~jnp.eye(m, dtype=bool), dist, jnp.inf)
    gap = jnp.min(dist, axis=1)
    gap = jnp.where(jnp.isfinite(gap), gap, 0)  # no other Ritz value: no gap known
    safe = jnp.where(gap > 0, gap, 1)
    quadratic = (gap > GAP_SAFETY * r) & (cols >= min_cols)
    bound = jnp.where(quadratic, jnp.minimum(r, r**2 / safe), r) + rounding + floor
    return jnp.where(valid, bound, jnp.inf)


def product_floor(coeffs: jax.Array, cols: Any, norm: Any, n: int) -> jax.Array:
    """An estimate of the products' own error ``||(A_computed - A) v||`` for a
    unit vector, from the Lanczos coefficients already computed. Costs no HVP.

    The kernel stores ``q_i . A q_j`` twice for ``i < j``: below the
    diagonal when ``q_i``'s product was orthogonalised, above it when
    ``q_j``'s was (``_krylov._insert``). An exact symmetric product makes
    them equal up to the orthogonalisation's rounding; a product computed
    partly in a lower precision (a float32 softmax inside a float64 model)
    does not. A product error ``e`` of norm ``delta`` spread over n
    coordinates puts about ``delta / sqrt(n)`` on each basis vector, so the
    estimate is ``4 sqrt(n)`` times the root-mean-square asymmetry, scaled
    from the size of the projected matrix's entries to ``||A||`` (rounding
    errors are relative to the products they come from). Measured on a
    one-block transformer (n = 736): float32 products 4.4e-7 against an
    estimate of 2.0e-6; float64 with a float32 softmax 1.3e-7 against 2.1e-7.
    """
    m = coeffs.shape[1]
    c = coeffs[:m].astype(jnp.float64 if coeffs.dtype == jnp.float64 else coeffs.dtype)
    valid = jnp.arange(m) < cols
    pair = jnp.triu(valid[:, None] & valid[None, :], 1)
    asym = jnp.where(pair, c - c.T, 0)
    count = jnp.maximum(jnp.sum(pair), 1)
    rms = jnp.sqrt(jnp.sum(asym**2) / count)
    low = jnp.where(jnp.tril(valid[:, None] & valid[None, :]), c, 0)
    col_norm = jnp.sqrt(jnp.sum(low**2 + jnp.tril(low, -1).T ** 2) / jnp.maximum(cols, 1))
    scale = jnp.where(col_norm > 0, jnp.maximum(norm, col_norm) / jnp.maximum(col_norm, 1e-300), 1)
    return jnp.where(cols >= 2, 4 * jnp.sqrt(n).astype(rms.dtype) * rms * scale, 0.0)


def verdict(values, bounds, floor, norm, rtol, atol, dtype) -> tuple[np.ndarray, str | None]:
    """Which eigenvalues met their tolerance, and the warning to give when a
    tolerance lies below what the products or the dtype can reach (None
    when all is well). Host-side (concrete values).

    A tolerance ``max(rtol |theta|, atol)`` counts as met when the bound
    (which includes the products' measured floor) is below it, or below
    the rounding level ``max(20 eps ||A||, 3 floor)`` (an eigenvalue near
    zero has no relative accuracy to certify), the floor counting only while
    it is the dtype's own (below ``1e4 eps ||A||``: 1.2e-3 in float32, 2e-12 in
    float64; a float32 network's own floor reached 3.3e-4 on a 22k-parameter
    BatchNorm MLP in train mode, while a float32 part inside a float64 model
    gives about 1e-7). When ``rtol`` itself is below
    ``10 eps``, only the tolerance counts: no relative accuracy beyond the
    dtype's can be certified.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    name = np.dtype(dtype).name
    values, bounds = np.abs(np.asarray(values, np.float64)), np.asarray(bounds, np.float64)
    wanted = np.maximum(rtol * values, atol)
    level = 20 * eps * float(norm)
    if rtol < 10 * eps:
        ok = bounds <= wanted
        message = (
            f"rtol = {rtol:.1e} is below what {name} can certify (about {10 * eps:.0e}): "
            f"the results are not marked converged. Ask for rtol >= {10 * eps:.0e}, or "
            "compute in float64 for more digits."
        )
        return ok, None if np.all(ok) else message
    floor = float(floor)
    own = 1e4 * eps * float(norm)  # above it: a lower precision inside the model
    if floor <= own:  # the dtype's own rounding, as in any model
        level = max(level, 3 * floor)
    ok = bounds <= np.maximum(wanted, level)
    if np.all(ok) or not np.any(floor > np.maximum(wanted, level)[~ok]):
        return ok, None
    rel = floor / max(float(norm), 1e-300)
    if floor > own:
        cause = (
            f"far above {name}'s {eps:.1e}. The likely cause is a lower-precision computation "
            "inside the model, such as an attention softmax in float32 "
            "(jax.nn.dot_product_attention, Flax attention) in a float64 model. Fix: compute "
            "that part in the model's dtype, or ask for rtol/atol above the floor"
        )
    else:
        cause = f"the level of {name} for this model. Ask for rtol/atol above it, or use float64"
    return ok, (
        f"the operator's products are accurate to about {rel:.1e} ||H|| (measured from their "
        f"asymmetry), {cause}: eigenvalues whose tolerance lies below it are not marked "
        "converged (see Eigenpairs.rounding_floor)."
    )


def warn_once(message: str | None) -> None:
    """Warn (Python's default filter shows each message once per place)."""
    if message is not None:
        warnings.warn(message, RuntimeWarning, stacklevel=6)


def check_steps(used: int, n: int, k: int) -> int:
    """Products of the completeness check: 15% of the solve's, at least 6
    (a copy inside a cluster at the wanted end, 1e-4 from the one found,
    took 6 steps from a fresh vector to show up; 3 found nothing), at most
    20 and at most ``n - k``."""
    return int(max(0, min(n - k, max(6, min(_MAX_CHECK_STEPS, -(-15 * int(used) // 100))))))


_MAX_CHECK_STEPS = 20


def deflated(lm, locked: Any):
    """``P A P`` as a ``LinearMap``, P the projector onto the complement of
    the stacked vectors ``locked`` (leaves ``(k, *leaf.shape)``, orthonormal
    rows or zero rows: zero rows leave ``A`` as it is). Its static parts are
    the same for every ``locked`` of one shape, so that a solve (nothing
    locked) and its completeness check (the returned vectors locked) run
    one compiled program."""
    mv, prepare = _projected(lm.matvec, lm.prepare)
    return dataclasses.replace(lm, matvec=mv, prepare=prepare, operands=(lm.operands, locked))


def project(q: Any, v: Any) -> Any:
    """``v`` minus its components along the stacked vectors ``q``."""
    return jax.tree.map(jnp.subtract, v, basis_combine(basis_dot(q, v), q))


@functools.cache
def _projected(matvec, prepare):
    """``(matvec, prepare)`` of ``P A P``, P the projector onto the
    complement of the stacked vectors held as the last operand (one object
    per product, so the compiled solver is reused)."""

    def projected_matvec(v, inner, q):
        return project(q, matvec(project(q, v), *inner))

    if prepare is None:
        return projected_matvec, None

    def projected_prepare(inner, q):
        product = prepare(*inner)
        return None if product is None else (lambda v: project(q, product(project(q, v))))

    return projected_matvec, projected_prepare


def missed(values, bounds, residuals, floor, low, high, k: int, which: str) -> bool:
    """Whether the check's extreme Ritz values ``low``/``high`` lie beyond
    the k-th returned eigenvalue at the wanted end(s) by more than the
    bounds allow: ``max bound + 2 ||residuals|| + floor`` (the returned
    vectors are eigenvectors only up to their residuals, which can raise a
    Rayleigh quotient of ``P A P`` by about twice their norm)."""
    values = np.asarray(values, np.float64)  # numpy: no eager jax programs
    bounds, residuals = np.asarray(bounds, np.float64), np.asarray(residuals, np.float64)
    margin = float(np.max(bounds) + 2 * np.sqrt(np.sum(np.square(residuals))) + float(floor))
    top = {"largest": values, "smallest": values[:0], "both": values[k // 2 :]}[which]
    bottom = {"largest": values[:0], "smallest": values, "both": values[: k // 2]}[which]
    return bool(
        (top.size and float(high) > np.min(top) + margin)
        or (bottom.size and float(low) < np.max(bottom) - margin)
    )


def certified(lm, out, run, cfg, budget, rtol, atol) -> tuple[dict, dict]:
    """The completeness check after a converged solve (one more solve, warm
    started from the returned vectors plus the check's find, when it finds
    a missed eigenvalue), then ``verdict`` on the tolerances; warns once
    when either fails. ``run(start, key, budget, locked=None, check=False)``
    is the solve (from a random vector drawn from ``key`` when ``start`` is
    None) (``_thick_restart.lanczos_eigenpairs``); the check is the
    same compiled solve on the operator deflated against the returned
    vectors (``deflated``), from a fresh random vector, accepting nothing:
    after ``check_steps`` products its extreme Ritz values of ``P A P``
    (Courant-Fischer: were the returned pairs the k wanted eigenpairs, every
    one of them would lie inside the rest of the spectrum, so a value beyond
    the k-th returned one, by more than the bounds, reveals an eigenvalue
    the solve missed). It finds what ``check_steps`` Lanczos steps from a
    random start would find: a missed eigenvalue well separated from the
    rest, not one hidden inside a cluster; a negative outcome is evidence,
    not proof.

    Returns:
        The solve's output dict and the counts for the result (Python values).
    """
    k, which = cfg.k, cfg.which
    spent, extra, complete = int(out["num_matvecs"]), 0, None
    for attempt in range(2):
        steps = check_steps(int(out["num_matvecs"]), int(lm.dim), k)
        if not bool(out["converged"]) or steps == 0:
            break
        # from a fresh random vector, drawn in the program from the solve's key
        probe = run(None, out["key"], steps, locked=out["vectors"], check=True)
        low, high, found = probe["low"], probe["high"], probe["ends"]
        extra += int(probe["num_matvecs"])
        skipped = missed(
            out["values"], out["bounds"], out["residuals"], out["floor"], low, high, k, which
        )
        complete = not skipped
        if complete or attempt == 1 or spent + k >= budget:
            break
        # warm start from the returned vectors and the missed direction: their
        # span is nearly invariant, so the new Krylov space holds all of them
        row = 1 if which == "largest" or (which == "both" and float(high) > 0) else 0
        flat = lm.layout.flatten_leaves(out["vectors"])
        start = lm.layout.unflatten_leaves(
            jax.tree.map(lambda v, f, r=row: jnp.sum(v, axis=0) + 2 * f[r], flat, found)
        )
        out = run(start, out["key"], budget - spent - extra)
        spent += int(out["num_matvecs"])
    ok, message = verdict(
        out["values"], out["bounds"], out["floor"], out["norm"], rtol, atol, cfg.dtype
    )
    if complete is False:
        message = (
            "the completeness check found an eigenvalue beyond the returned ones that the "
            f"Krylov space missed (a Ritz value {float(high if which != 'smallest' else low):.6g} "
            "of the operator deflated against them), even after a second solve: the result "
            "is not marked converged. Ask for a larger k or another key."
        )
    warn_once(message)
    counts = {
        "converged": bool(out["converged"]) and bool(np.all(ok)) and complete is not False,
        "num_matvecs": spent + extra,
        "num_restarts": int(out["num_restarts"]),
        "norm": float(out["norm"]),
        "floor": float(out["floor"]),
        "complete": complete,
        "check_matvecs": extra,
    }
    return out, counts
