"""Float64 references for the benchmark workloads (run as a separate process).

``python benchmarks/references.py NAME`` enables ``jax_enable_x64`` in *this*
process only (the benchmarks of our float32 code run elsewhere), evaluates the
Hessian of the float64 loss at the workload's float32 parameters, and writes
``refs_<NAME>.json`` next to the cached parameters:

* "small", "CNN", "eqx-MLP" (n <= 5k, ``workloads.DENSE_REFERENCE``): the
  dense Hessian (n HVPs) and all its eigenvalues by ``jnp.linalg.eigh``; the
  trace is the sum of its diagonal.
* "W-mid" (n = 85,002): the 10 largest and 5 smallest eigenvalues by
  ``scipy.sparse.linalg.eigsh`` (ARPACK, tol=1e-10) on the float64 HVP as a
  ``LinearOperator``; the exact trace from the layer structure of the MLP:
  for a dense layer z = a W + b,  d²l/dW_ij² = a_i² [∇²_z l]_jj, so
  tr H = (1/N) Σ_s Σ_layers (1 + |a_s|²) tr ∇²_z l_s, with the per-sample
  Hessians ∇²_z l_s of the loss with respect to each layer's pre-activation
  (at most 256 x 256). This costs seconds instead of n = 85,002 HVPs, and is
  checked against the dense trace on the small model.
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
import workloads as wl


def refs_path(name: str) -> str:
    return wl.params_path(name).replace("params_", "refs_").replace(".npz", ".json")


def layer_trace(params, x, y, chunk: int = 128) -> float:
    """Exact tr H of the mean cross-entropy of a tanh MLP (see module docstring)."""

    def rest(z, yy, start):
        # per-sample loss as a function of the pre-activation of layer `start`
        h = z
        for i in range(start, len(params)):
            if i > start:
                h = h @ params[i]["w"] + params[i]["b"]
            if i < len(params) - 1:
                h = jnp.tanh(h)
        return -jnp.sum(yy * jax.nn.log_softmax(h))

    total = 0.0
    for start in range(len(params)):
        fn = lambda z, yy, s=start: jnp.trace(jax.hessian(rest)(z, yy, s))
        per_sample = jax.jit(jax.vmap(fn))
        a = x
        for i in range(start):
            a = jnp.tanh(a @ params[i]["w"] + params[i]["b"])
        z = a @ params[start]["w"] + params[start]["b"]
        for lo in range(0, x.shape[0], chunk):
            t = per_sample(z[lo : lo + chunk], y[lo : lo + chunk])
            total += float(jnp.sum((1.0 + jnp.sum(a[lo : lo + chunk] ** 2, axis=1)) * t))
    return total / x.shape[0]


def dense_refs(w: wl.Workload) -> dict:
    """All eigenvalues of the dense float64 Hessian (n HVPs) and its trace."""
    from hessian_tools.dense import hessian

    p = wl.problem(w, jnp.float64)
    t0 = time.perf_counter()
    h = hessian(p.loss, p.params, *p.args)
    if h.dtype != jnp.float64:
        raise RuntimeError(f"{w.name}: the reference Hessian came out {h.dtype}, not float64")
    evals = np.asarray(jnp.linalg.eigh(h)[0])
    elapsed = time.perf_counter() - t0
    out = {
        "method": "dense float64 Hessian (n HVPs) + jnp.linalg.eigh",
        "seconds": elapsed,
        "eigenvalues": evals.tolist(),  # ascending, all n
        "top": evals[::-1][:10].tolist(),
        "bottom": evals[:5].tolist(),
        "trace": float(jnp.trace(h)),
        "trace_method": "sum of the dense float64 Hessian's diagonal",
    }
    if w.kind == "mlp":  # the per-layer formula that W-mid's trace relies on, checked here
        formula = layer_trace(*wl.as_jax(w, jnp.float64))
        out["trace_layer_formula"] = formula
        out["trace_formula_rel_diff"] = abs(formula - out["trace"]) / abs(out["trace"])
    return out


def wmid_refs(w: wl.Workload, out: dict, save) -> dict:
    from scipy.sparse.linalg import LinearOperator, eigsh

    from hessian_tools.operators import HessianOperator

    params, x, y = wl.as_jax(w, jnp.float64)
    op = HessianOperator(wl.loss, params, x, y)
    count = [0]

    def mv(v):
        count[0] += 1
        return np.asarray(op.matvec(jnp.asarray(np.ravel(v), jnp.float64)))

    lin = LinearOperator(op.shape, matvec=mv, rmatvec=mv, dtype=np.float64)
    # ARPACK tol is relative to |lambda|; 1e-6 on the small negative eigenvalues
    # (|lambda| ~ 1e-3 ||H||, gaps ~ 1e-5 ||H||) still means < 1e-6 relative
    # error, while 1e-10 takes ARPACK an hour in that cluster.
    for which, k, key, tol in (("LA", 10, "top", 1e-10), ("SA", 5, "bottom", 1e-6)):
        if key in out:
            continue
        count[0] = 0
        t0 = time.perf_counter()
        vals, vecs = eigsh(lin, k=k, which=which, tol=tol, ncv=max(20 * k, 100))
        elapsed = time.perf_counter() - t0
        order = np.argsort(vals)[::-1] if which == "LA" else np.argsort(vals)
        vals, vecs = vals[order], vecs[:, order]
        res = [float(np.linalg.norm(mv(vecs[:, i]) - vals[i] * vecs[:, i])) for i in range(k)]
        out[key] = vals.tolist()
        out[f"{key}_residuals"] = res
        out[f"{key}_hvps"] = count[0]
        out[f"{key}_seconds"] = elapsed
        out[f"{key}_tol"] = tol
        save(out)
        print(f"{key}: {count[0]} HVPs, {elapsed:.0f} s", flush=True)
    if "trace" not in out:
        t0 = time.perf_counter()
        out["trace"] = layer_trace(params, x, y)
        out["trace_seconds"] = time.perf_counter() - t0
    out["method"] = (
        "scipy eigsh (ARPACK; tol 1e-10 for the top 10, 1e-6 relative to |λ| for the "
        "bottom 5) on the float64 HVP"
    )
    out["trace_method"] = "exact: per-layer pre-activation Hessians (float64)"
    return out


def main(name: str) -> None:
    # x64 in this process only; run.py (which imports refs_path from here) stays float32
    jax.config.update("jax_enable_x64", True)
    w = wl.get_workload(name)
    partial = refs_path(name) + ".partial"

    def save(d):
        with open(partial, "w") as fh:
            json.dump(d, fh)

    if name in wl.DENSE_REFERENCE:
        refs = dense_refs(w)
    else:
        done = {}
        if os.path.exists(partial):
            with open(partial) as fh:
                done = json.load(fh)
        refs = wmid_refs(w, done, save)
    refs["n"] = w.n
    with open(refs_path(name), "w") as fh:
        json.dump(refs, fh)
    print(json.dumps({k: v for k, v in refs.items() if k != "eigenvalues"}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
