"""Do the eigenvalue certificates hold? (issue 19: "Certified means certified").

Writes ``benchmarks/RESULTS_bounds.md``:

* "bounds held": cold and warm starts x top-5 / bottom-5 x float32 / float64
  on the small MLP, the CNN, the Equinox MLP and a small transformer, plus
  float64 with a float32 softmax inside; the worst ratio of true error to
  bound per row (target <= 1). The true error is against eigh of the dense
  float64 Hessian at the same point (the float32 parameters cast), in the
  results' order (so a skipped eigenvalue counts), less the reference's own
  slack sqrt(n) eps64 ||H||.
* completeness: top-5 and bottom-5 from 10 start keys on the MLP, the CNN
  and the transformer (float32): every wanted eigenvalue found? the extra
  HVPs of the check as % of the solve;
* the cost of the safer rule on W-mid (top-1, top-10 against ARPACK, warm
  top-1 along training), next to the figures of ``RESULTS.md``.

Run: ``python benchmarks/bounds.py`` (about 8 minutes on a 2-core CPU).
"""

from __future__ import annotations

import os
import platform
import sys
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import ours
import workloads as wl

import hessian_tools as ht
from hessian_tools import _certify

K = 5
OUT = os.path.join(HERE, "RESULTS_bounds.md")


def _problem(name: str, dtype, softmax32: bool = False) -> wl.Problem:
    if name == "transformer":
        return wl.transformer(dtype, jnp.float32 if softmax32 else None)
    return wl.problem(wl.get_workload(name), dtype)


def _reference(name: str) -> np.ndarray:
    """Ascending eigenvalues of the dense float64 Hessian (cached)."""
    path = os.path.join(wl.cache_dir(), f"bounds-ref-{name}.npy")
    if not os.path.exists(path):
        p = _problem(name, jnp.float64)
        # small chunks: 256 vectorised conv HVPs in float64 took 14 GB
        op = ht.HessianOperator(p.loss, p.params, *p.args)
        op.chunk_size = 16
        dense = op.to_dense()
        np.save(path, np.linalg.eigvalsh(np.asarray(dense, np.float64)))
    return np.load(path)


class Counter:
    """Counts the completeness check's HVPs (wraps ``_certify.completeness``)."""

    def __init__(self):
        self.hvps, self.orig = 0, _certify.completeness

    def __call__(self, *args, steps, **kwargs):
        self.hvps += steps
        return self.orig(*args, steps=steps, **kwargs)


CHECK = Counter()
_certify.completeness = CHECK


def _solve(op, which, **kw):
    CHECK.hvps = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = ht.eigenpairs(op, K, which=which, method="lanczos", **kw)
    return r, CHECK.hvps, len(caught)


def _ratio(r, exact) -> float:
    ref = exact[::-1][:K] if r.values[0] >= r.values[-1] else exact[:K]
    err = np.abs(np.asarray(r.values, np.float64) - ref)
    slack = np.sqrt(exact.size) * np.finfo(np.float64).eps * np.max(np.abs(exact))
    return float(np.max(np.maximum(err - slack, 0) / np.asarray(r.error_bounds, np.float64)))


def _nudged(p: wl.Problem, scale=1e-3, seed=1):
    """The parameters one small step away (a previous checkpoint)."""
    leaves, tree = jax.tree.flatten(p.params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    moved = [
        x + scale * jnp.std(x) * jax.random.normal(kk, x.shape, x.dtype)
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)
        else x
        for kk, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(tree, moved)


MODELS = ("small", "CNN", "eqx-MLP", "transformer")


def bounds_table(models=MODELS) -> list[list]:
    rows = []
    cases = [(m, d, False) for m in models for d in (32, 64)]
    if "transformer" in models:
        cases.append(("transformer", 64, True))
    for name, bits, sm32 in cases:
        exact = _reference(name)
        dtype = jnp.float32 if bits == 32 else jnp.float64
        p = _problem(name, dtype, sm32)
        op = ht.HessianOperator(p.loss, p.params, *p.args)
        for which in ("largest", "smallest"):
            for start in ("cold", "warm"):
                calls, hvps, ratios, conv, warned = 0, 0, [], 0, 0
                for seed in range(2):
                    if start == "cold":
                        r, _, w = _solve(op, which, key=jax.random.PRNGKey(seed))
                    else:  # v0: the previous checkpoint's vectors, summed
                        prev = ht.HessianOperator(p.loss, _nudged(p, seed=seed + 1), *p.args)
                        r0, _, _ = _solve(prev, which, key=jax.random.PRNGKey(seed))
                        r, _, w = _solve(op, which, v0=jnp.sum(r0.vectors, axis=1))
                    calls += 1
                    hvps += int(r.num_matvecs)
                    ratios.append(_ratio(r, exact))
                    conv += bool(r.converged)
                    warned += w > 0
                label = f"{name} float{bits}" + (" + float32 softmax" if sm32 else "")
                rows.append(
                    [label, start, f"{which} {K}", calls, hvps / calls, max(ratios), conv, warned]
                )
                print(rows[-1], flush=True)
    return rows


def completeness_table(models=("small", "CNN", "transformer"), keys=10) -> list[list]:
    rows = []
    for name in models:
        exact = _reference(name)
        p = _problem(name, jnp.float32)
        op = ht.HessianOperator(p.loss, p.params, *p.args)
        for which in ("largest", "smallest"):
            ref = exact[::-1][:K] if which == "largest" else exact[:K]
            found, solve, extra, incomplete = 0, 0, 0, 0
            for seed in range(keys):
                r, check, _ = _solve(op, which, key=jax.random.PRNGKey(100 + seed))
                err = np.abs(np.asarray(r.values, np.float64) - ref)
                slack = np.sqrt(exact.size) * np.finfo(np.float64).eps * np.max(np.abs(exact))
                found += bool(np.all(err <= np.asarray(r.error_bounds) + slack))
                incomplete += r.complete is False
                solve += int(r.num_matvecs) - check
                extra += check
            rows.append(
                [
                    name,
                    f"{which} {K}",
                    f"{found}/{keys}",
                    incomplete,
                    solve / keys,
                    100 * extra / solve,
                ]
            )
            print(rows[-1], flush=True)
    return rows


def cost_table() -> list[list]:
    w = wl.get_workload("W-mid")
    p = wl.problem(w)
    op = ht.HessianOperator(p.loss, p.params, *p.args)
    rows = []
    top1 = [_solve_k(op, 1, s) for s in range(3)]
    rows.append(["W-mid top-1 (median of 3 keys)", "7", _median(top1)])
    top10 = [_solve_k(op, 10, s) for s in range(3)]
    arpack = [ours.arpack_run(w, 10, "largest", 1e-4, s)["hvps"] for s in range(3)]
    rows.append(
        [
            "W-mid top-10 (median of 3) vs ARPACK tol 1e-4 (same 3 starts)",
            "23 vs 28 (0.82x)",
            f"{_median(top10)} vs {int(np.median(arpack))} "
            f"({np.median([t[0] for t in top10]) / np.median(arpack):.2f}x)",
        ]
    )
    res = ours.warm_runs(w, lr=0.5, steps=60, every=20, ks=(1,))[1]
    hc = sum(q["hvps"] for q in res["cold"][1:])
    hw = sum(q["hvps"] for q in res["warm"][1:])
    rows.append(
        [
            "W-mid warm top-1 along training (3 checkpoints)",
            "0.29x",
            f"{hw} vs {hc} ({hw / hc:.2f}x)",
        ]
    )
    return rows


def _solve_k(op, k, seed):
    CHECK.hvps = 0
    r = ht.eigenpairs(op, k, key=jax.random.PRNGKey(seed), method="lanczos")
    return int(r.num_matvecs), CHECK.hvps


def _median(runs) -> str:
    total = int(np.median([t[0] for t in runs]))
    check = int(np.median([t[1] for t in runs]))
    return f"{total} ({total - check} solve + {check} check)"


def _table(title, header, rows, note="") -> str:
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + ("\n\n" + note if note else "") + "\n"


def main(argv=None) -> None:
    """``--models a,b``: the bounds table's models; ``--complete a,b``: the
    completeness table's; ``--no-cost``: skip the W-mid costs."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--complete", default="small,CNN,transformer")
    ap.add_argument("--no-cost", action="store_true")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    t0 = time.time()
    parts = ["## Certificates (issue 19)", ""]
    parts.append(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}; "
        f"Python {platform.python_version()}, jax {jax.__version__}; "
        f"command: `python benchmarks/bounds.py {' '.join(sys.argv[1:])}`.\n"
    )
    rows = bounds_table(tuple(args.models.split(",")))
    parts.append(
        _table(
            "Bounds held (top-5 / bottom-5, default rtol)",
            [
                "model",
                "start",
                "which",
                "calls",
                "HVPs/call",
                "worst error/bound",
                "conv.",
                "warned",
            ],
            rows,
            "Error: against eigh of the dense float64 Hessian at the same point, in the "
            "results' order, less sqrt(n) eps64 ||H||. Warm: v0 = the sum of the top/bottom-5 "
            "vectors at parameters moved by 1e-3 of their spread (a previous checkpoint). "
            "The float32-softmax rows are expected to warn and not converge.",
        )
    )
    rows = completeness_table(tuple(args.complete.split(",")))
    parts.append(
        _table(
            "Completeness (float32, 10 start keys)",
            [
                "model",
                "which",
                "all found",
                "complete=False",
                "solve HVPs/call",
                "check % of solve",
            ],
            rows,
        )
    )
    rows = [] if args.no_cost else cost_table()
    parts.append(
        _table(
            "Cost of the safer rule (W-mid, float32, rtol 1e-4)",
            ["measurement", "before (RESULTS.md)", "now"],
            rows,
        )
    )
    parts.append(f"Total run time {time.time() - t0:.0f} s.\n")
    with open(args.out, "w") as fh:
        fh.write("\n".join(parts))
    print(open(args.out).read())


if __name__ == "__main__":
    main()
