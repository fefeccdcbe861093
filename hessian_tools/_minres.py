"""MINRES for symmetric, possibly indefinite or singular systems, in JAX.

Paige & Saunders (1975), "Solution of sparse indefinite systems of linear
equations", SIAM J. Numer. Anal. 12(4). The recurrences follow scipy's
``minres`` (no preconditioner, no shift). Written with ``lax.while_loop`` on
flat vectors, so it runs under ``jit`` and ``vmap`` (Newton-MR over many
starting points at once).

For a singular, inconsistent system MINRES converges to a least-squares
solution; the loop then stops on ``||A r|| <= rtol ||A|| ||r||``. A Krylov
breakdown (beta ~ 0: the space is invariant and the iterate is exact within
it) stops the loop instead of dividing by zero.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax


def minres(
    matvec: Callable[[jax.Array], jax.Array],
    b: jax.Array,
    *,
    maxiter: int,
    rtol: float,
) -> tuple[jax.Array, jax.Array]:
    """Approximately solve ``A x = b`` (A symmetric) by MINRES.

    Args:
        matvec: ``v -> A v`` on flat vectors of b's shape.
        b: right-hand side, shape (n,).
        maxiter: at most this many products with A (static).
        rtol: stop when ``||r|| <= rtol ||b||`` or
            ``||A r|| <= rtol ||A|| ||r||`` (least-squares optimality).

    Returns:
        ``(x, num_matvecs)``.

    Cost: one product with A per iteration.
    """
    dtype = b.dtype
    eps = jnp.finfo(dtype).eps
    zero = jnp.zeros((), dtype)
    beta1 = jnp.linalg.norm(b)
    tiny = jnp.finfo(dtype).tiny

    # state: itn, x, r1, r2, y, beta, oldb, dbar, epsln, phibar, cs, sn, w, w2,
    #        tnorm2, gmax, gmin, done
    def cond(s):
        return (s[0] < maxiter) & ~s[-1]

    def body(s):
        itn, x, r1, r2, y, beta, oldb, dbar, epsln, phibar, cs, sn, w, w2, tnorm2, gmax, gmin, _ = s
        v = y / beta
        y = matvec(v)
        y = jnp.where(itn >= 1, y - (beta / jnp.where(oldb > 0, oldb, 1)) * r1, y)
        alfa = jnp.vdot(v, y)
        y = y - (alfa / beta) * r2
        r1, r2 = r2, y
        oldb, beta = beta, jnp.linalg.norm(y)
        tnorm2 = tnorm2 + alfa**2 + oldb**2 + beta**2
        oldeps = epsln
        delta = cs * dbar + sn * alfa
        gbar = sn * dbar - cs * alfa
        epsln = sn * beta
        dbar = -cs * beta
        root = jnp.hypot(gbar, dbar)
        anorm = jnp.sqrt(tnorm2)
        gamma_raw = jnp.hypot(gbar, beta)
        # gamma ~ 0: the new direction lies (numerically) in A's null space
        # (singular, incompatible system). Stepping along it would divide by
        # ~0 and throw the least-squares iterate far away; stop before it.
        singular = gamma_raw <= 8 * eps * anorm
        gamma = jnp.maximum(gamma_raw, eps)
        cs, sn = gbar / gamma, beta / gamma
        phi = jnp.where(singular, zero, cs * phibar)
        phibar = jnp.where(singular, phibar, sn * phibar)
        w1, w2 = w2, w
        w = (v - oldeps * w1 - delta * w2) / gamma
        x_new = x + phi * w
        gmax, gmin = jnp.maximum(gmax, gamma), jnp.minimum(gmin, gamma)
        # scipy's safety stops, checked *before* the step is kept: T_k as
        # ill-conditioned as rounding allows, or x so large that its own
        # rounding swamps b. Either means the step would throw x away.
        bad_step = (gmax >= 0.1 / eps * gmin) | (anorm * jnp.linalg.norm(x_new) * eps >= beta1)
        x = jnp.where(bad_step, x, x_new)
        arnorm = phibar * root  # ||A r|| of the previous iterate, as in scipy
        done = (
            singular
            | bad_step
            | (phibar <= rtol * beta1)
            | (arnorm <= rtol * anorm * phibar)
            | (beta <= eps * anorm + tiny)  # invariant Krylov space: x exact there
        )
        return (
            itn + 1, x, r1, r2, y, beta, oldb, dbar, epsln, phibar, cs, sn, w, w2, tnorm2,
            gmax, gmin, done,
        )  # fmt: skip

    init = (
        jnp.asarray(0),
        jnp.zeros_like(b),
        b,
        b,
        b,
        beta1,
        zero,
        zero,
        zero,
        beta1,
        -jnp.ones((), dtype),
        zero,
        jnp.zeros_like(b),
        jnp.zeros_like(b),
        zero,
        zero,
        jnp.asarray(jnp.finfo(dtype).max, dtype),
        beta1 <= tiny,  # b = 0: x = 0 is the answer
    )
    out = lax.while_loop(cond, body, init)
    return out[1], out[0]
