"""How accurate can a 100-HVP trace estimate of the W-mid Hessian be?

``python benchmarks/trace_floor.py`` (float64, about 2 minutes on 2 cores;
not part of ``make bench``) computes the 300 largest eigenpairs of the W-mid
Hessian with ``ht.eigenpairs`` and the squared Frobenius norm left past them
(``||(I - VV^T) H (I - VV^T)||_F^2`` from 128 projected Gaussian probes).
With ``F(d)`` the squared Frobenius norm past the d-th eigenvalue, every
"deflate d directions, then Hutchinson with the other m - d probes" estimator
(Hutch++, its Krylov and exchangeable variants) has an error of variance at
least ``2 F(d) / (m - d)`` (Gaussian probes; Rademacher probes drop the
remainder's diagonal, which is small here), and that only if its d
directions were the exact top-d eigenvectors bought at one HVP each. The
median |error| of a normal variable is 0.674 sigma, so

    floor(m) = min_d 0.674 sqrt(2 F(d) / (m - d)) / tr H

is a lower bound on the median relative error of such estimators with m
HVPs. It writes ``trace_floor_<workload>.json`` next to the cached
parameters; ``run.py`` reports it with the trace table.
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import references
import workloads as wl

BIG = "W-mid"
TOP = 300
PROBES = 128


def floor_path(name: str) -> str:
    return wl.params_path(name).replace("params_", "trace_floor_").replace(".npz", ".json")


def median_error_floor(values: np.ndarray, tail: float, trace: float, m: int) -> tuple:
    """(floor, best d): min over d < m of 0.674 sqrt(2 F(d) / (m - d)) / trace."""
    lam2 = np.sort(np.asarray(values, np.float64) ** 2)[::-1]
    f = tail + np.concatenate([np.cumsum(lam2[::-1])[::-1], [0.0]])  # f[d] = F(d)
    d = np.arange(min(m, len(lam2) + 1))
    err = 0.674 * np.sqrt(2 * f[d] / (m - d)) / abs(trace)
    return float(err.min()), int(d[err.argmin()])


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    import hessian_tools as ht

    t0 = time.time()
    w = wl.get_workload(BIG)
    params, x, y = wl.as_jax(w, jnp.float64)
    op = ht.HessianOperator(wl.loss, params, x, y)
    res = ht.eigenpairs(op, TOP, key=jax.random.PRNGKey(0), rtol=1e-6, max_matvecs=4000)
    if not res.converged:
        raise RuntimeError(f"top-{TOP} eigenpairs did not converge in {res.num_matvecs} HVPs")
    v = res.vectors
    sq = []
    for i in range(PROBES // 32):
        z = jax.random.normal(jax.random.PRNGKey(100 + i), (op.n, 32), jnp.float64)
        z = z - v @ (v.T @ z)
        hz = op.matmat(z)
        hz = hz - v @ (v.T @ hz)
        sq.append(np.asarray(jnp.sum(hz**2, axis=0)))
    sq = np.concatenate(sq)
    with open(references.refs_path(BIG)) as fh:
        trace = json.load(fh)["trace"]
    tail = float(sq.mean())
    floor, d = median_error_floor(np.asarray(res.values), tail, trace, 100)
    out = {
        "top_values": np.asarray(res.values, np.float64).tolist(),
        "top_hvps": int(res.num_matvecs),
        "tail_frobenius_sq": tail,
        "tail_frobenius_sq_stderr": float(sq.std(ddof=1) / np.sqrt(len(sq))),
        "trace": trace,
        "floor_100": floor,
        "best_d_100": d,
        "seconds": time.time() - t0,
    }
    with open(floor_path(BIG), "w") as fh:
        json.dump(out, fh)
    print(
        f"{BIG}: ||H||_F^2 past the top {TOP}: {tail:.4g}; median-error floor with 100 HVPs "
        f"{floor:.2e} (best d = {d}); {out['seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
