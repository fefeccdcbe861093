"""Measurements of hessian_tools itself (float32, in the benchmark process).

Every spectral call is timed the way a user pays for it: the
``HessianOperator`` is built *inside* the timed function, from fresh parameter
arrays each time. The first call includes JIT compilation; later calls
(median reported) must not compile again, which ``CompileCounter`` checks by
counting XLA backend compilations.

Modules that have not landed yet are reported as "not available yet".
"""

from __future__ import annotations

import importlib
import inspect
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import workloads as wl
from scipy.stats import wasserstein_distance

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class NotAvailable(Exception):
    """A hessian_tools function this benchmark needs has not landed yet."""


class CompileCounter:
    """Counts XLA backend compilations (and their seconds) while active."""

    def __init__(self):
        self.count, self.seconds = 0, 0.0

    def _listener(self, event, duration, **_):
        if event == _COMPILE_EVENT:
            self.count += 1
            self.seconds += duration

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


def require(module: str, name: str) -> Callable:
    """``hessian_tools.<module>.<name>``, or NotAvailable if it has not landed."""
    try:
        mod = importlib.import_module(f"hessian_tools.{module}")
    except ImportError as exc:
        raise NotAvailable(f"hessian_tools.{module} not available yet ({exc})") from None
    if not hasattr(mod, name):
        raise NotAvailable(f"hessian_tools.{module}.{name} not available yet")
    return getattr(mod, name)


def iterative_eigenpairs() -> Callable:
    """``eigenpairs`` if its Lanczos path has landed (else it would form an 85k dense matrix)."""
    eigenpairs = require("eigen", "eigenpairs")
    require("lanczos", "lanczos")
    if "lanczos" not in inspect.getsource(importlib.import_module("hessian_tools.eigen")):
        raise NotAvailable("eigen.eigenpairs has no Lanczos path yet (dense only)")
    return eigenpairs


def _block(x):
    return jax.block_until_ready(x)


def timed_calls(fn: Callable[[], object], reps: int) -> dict:
    """Cold call (compile + run), then ``reps`` warm calls; compilations counted."""
    with CompileCounter() as cold_c:
        t0 = time.perf_counter()
        out = fn()
        cold = time.perf_counter() - t0
    times = []
    with CompileCounter() as warm_c:
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    warm = statistics.median(times)
    return {
        "seconds": warm,
        "cold_seconds": cold,
        "compile_seconds": max(cold - warm, 0.0),
        "compiles_cold": cold_c.count,
        "recompiles": warm_c.count,
        "out": out,
    }


def fresh_operator(w: wl.Workload):
    """A new HessianOperator from new float32 arrays (as at a new checkpoint)."""
    from hessian_tools.operators import HessianOperator

    params, x, y = wl.as_jax(w)
    return HessianOperator(wl.loss, params, x, y)


# ---------------------------------------------------------------------------
# sections


def hvp_times(w: wl.Workload, reps: int, loop: int = 20) -> list[dict]:
    """Gradient, HVP (op @ v), and HVPs inside a jitted loop (jvp-of-grad, linearized)."""
    params, x, y = wl.as_jax(w)
    grad = jax.jit(jax.grad(wl.loss))
    op = fresh_operator(w)
    v = jax.random.normal(jax.random.PRNGKey(0), (op.n,), jnp.float32)
    rows = []
    g = timed_calls(lambda: _block(grad(params, x, y)), reps)
    rows.append({"impl": "ours: jax.grad (jit)", "per_call": g["seconds"], "hvps": 0, **g})
    h = timed_calls(lambda: _block(fresh_operator(w).matvec(v)), reps)
    h["per_call"] = h["seconds"]
    rows.append({"impl": "ours: op @ v, jvp-of-grad (new operator each call)", "hvps": 1, **h})
    h_only = timed_calls(lambda: _block(op.matvec(v)), reps)
    h_only["per_call"] = h_only["seconds"]
    rows.append({"impl": "ours: op @ v, jvp-of-grad (same operator)", "hvps": 1, **h_only})
    if hasattr(op, "linear_map"):
        for linearize in (False, True):
            lm = op.linear_map(linearize=linearize)

            @jax.jit
            def power(lm, v0):
                mv = lm.bind()

                def body(_, u):
                    hu = mv(u)
                    scale = jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(hu)))
                    return jax.tree.map(lambda x: x / scale, hu)

                return jax.lax.fori_loop(0, loop, body, v0)

            v_tree = op.unravel(v)
            r = timed_calls(lambda p=power, o=lm, u=v_tree: _block(p(o, u)), reps)
            r["per_call"] = r["seconds"] / loop
            name = "linearized once" if linearize else "jvp-of-grad"
            rows.append({"impl": f"ours: {loop} HVPs in a jitted loop, {name}", "hvps": loop, **r})
    for r in rows:
        r["ratio_to_grad"] = r["per_call"] / g["seconds"] if r["hvps"] else None
        r.pop("out", None)
    return rows


def eig_run(w: wl.Workload, k: int, which: str, reps: int, **options) -> dict:
    """``eigenpairs`` (default settings unless ``options``) on a new operator."""
    eigenpairs = iterative_eigenpairs()

    def call():
        op = fresh_operator(w)
        res = eigenpairs(op, k, which=which, key=jax.random.PRNGKey(0), **options)
        return _block(res)

    r = timed_calls(call, reps)
    res = r.pop("out")
    r.update(
        values=np.asarray(res.values, np.float64).tolist(),
        residuals=np.asarray(res.residuals, np.float64).tolist(),
        converged=bool(res.converged),
        hvps=int(res.num_matvecs),
    )
    return r


def eig_seeds(w: wl.Workload, k: int, which: str, seeds: int, **options) -> dict:
    """One warm ``eigenpairs`` call per start vector (key s, s < seeds), after a
    compiling call; times, HVPs and values per seed."""
    eigenpairs = iterative_eigenpairs()

    def call(s):
        op = fresh_operator(w)
        return _block(eigenpairs(op, k, which=which, key=jax.random.PRNGKey(s), **options))

    call(0)
    times, hvps, values = [], [], []
    for s in range(seeds):
        t0 = time.perf_counter()
        res = call(s)
        times.append(time.perf_counter() - t0)
        hvps.append(int(res.num_matvecs))
        values.append(np.asarray(res.values, np.float64).tolist())
    return {"seconds": times, "hvps": hvps, "values": values}


def trace_runs(w: wl.Workload, seeds: dict[str, int], num_matvecs: int = 100) -> dict:
    """``trace`` for each method in ``seeds`` over that many keys; values and stderr per seed."""
    trace = require("estimators", "trace")
    out = {}
    for method, count in seeds.items():
        vals, errs, times, hvps = [], [], [], []
        compile_s = None
        try:
            for s in range(count + 1):  # call 0 compiles; it is not counted
                t0 = time.perf_counter()
                est = trace(
                    fresh_operator(w),
                    key=jax.random.PRNGKey(s),
                    num_matvecs=num_matvecs,
                    method=method,
                )
                value = float(est.value)
                elapsed = time.perf_counter() - t0
                if s == 0:
                    compile_s = elapsed
                    continue
                vals.append(value)
                errs.append(float(est.stderr))
                times.append(elapsed)
                hvps.append(int(est.num_matvecs))
        except (ValueError, NotImplementedError, TypeError) as exc:
            out[method] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        warm = statistics.median(times)
        out[method] = {
            "values": vals,
            "stderrs": errs,
            "seconds": warm,
            "hvps": hvps,
            "compile_seconds": max(compile_s - warm, 0.0),
        }
    return out


def density_run(w: wl.Workload) -> dict:
    """Default-settings ``spectral_density``; nodes, weights and the negative fraction."""
    spectral_density = require("density", "spectral_density")

    def call():
        return spectral_density(fresh_operator(w), key=jax.random.PRNGKey(0))

    r = timed_calls(call, 1)
    sd = r.pop("out")
    r["nodes"] = np.asarray(sd.nodes, np.float64).ravel()
    r["weights"] = np.asarray(sd.weights, np.float64).ravel()
    r["grid"] = np.asarray(sd.grid, np.float64)
    r["density"] = np.asarray(sd.density, np.float64)
    r["cdf"] = sd.cdf
    r["hvps"] = getattr(sd, "num_matvecs", None)
    r["negative_fraction"] = getattr(sd, "negative_fraction", None)
    return r


def score_density(exact: np.ndarray, nodes, weights, cdf=None) -> dict:
    """W1 to the exact spectrum / spectral width, and the fraction below -1e-3 lambda_max."""
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    width = exact.max() - exact.min()
    thr = -1e-3 * exact.max()
    w1 = wasserstein_distance(exact, nodes, v_weights=weights) / width
    frac_nodes = float(weights[nodes < thr].sum() / weights.sum())
    frac = float(cdf(thr)) if cdf is not None else frac_nodes
    return {
        "w1_rel": w1,
        "neg_frac": frac,
        "neg_frac_nodes": frac_nodes,
        "exact_neg_frac": float(np.mean(exact < thr)),
        "threshold": thr,
    }
