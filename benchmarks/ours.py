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
from _timing import settle
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
    """Cold call (compile + run), then ``reps`` warm calls (after the
    optimised programs that a second call compiles in the background:
    ``_timing.settle``); compilations counted."""
    with CompileCounter() as cold_c:
        t0 = time.perf_counter()
        out = fn()
        cold = time.perf_counter() - t0
    if reps:
        settle(fn, calls=1)
    times = []
    with CompileCounter() as warm_c:
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    warm = statistics.median(times) if times else cold  # reps=0: the cold call only
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

    p = wl.problem(w)
    return HessianOperator(p.loss, p.params, *p.args)


def jitted_grad(p: wl.Problem) -> Callable[[], object]:
    """A call of the jitted gradient of ``p.loss`` with respect to the inexact
    array leaves of ``p.params`` (Equinox's rule: an ``eqx.Module``'s
    functions are held fixed, closed over)."""
    leaves, treedef = jax.tree.flatten(p.params)
    idx = [i for i, a in enumerate(leaves) if eqx_inexact(a)]

    def loss_of(variables, *args):
        full = list(leaves)
        for i, a in zip(idx, variables, strict=True):
            full[i] = a
        return p.loss(jax.tree.unflatten(treedef, full), *args)

    grad = jax.jit(jax.grad(loss_of))
    variables = [leaves[i] for i in idx]
    return lambda: _block(grad(variables, *p.args))


def eqx_inexact(a) -> bool:
    return isinstance(a, (jax.Array, np.ndarray)) and jnp.issubdtype(a.dtype, jnp.inexact)


# ---------------------------------------------------------------------------
# sections


def hvp_times(w: wl.Workload, reps: int, loop: int = 20) -> list[dict]:
    """Gradient, HVP (op @ v), and HVPs inside a jitted loop (jvp-of-grad, linearized)."""
    grad = jitted_grad(wl.problem(w))
    op = fresh_operator(w)
    v = jax.random.normal(jax.random.PRNGKey(0), (op.n,), jnp.float32)
    rows = []
    g = timed_calls(grad, reps)
    rows.append({"impl": "ours: jax.grad (jit)", "per_call": g["seconds"], "hvps": 0, **g})
    h = timed_calls(lambda: _block(fresh_operator(w).matvec(v)), reps)
    h["per_call"] = h["seconds"]
    rows.append({"impl": "ours: op @ v, jvp-of-grad (new operator each call)", "hvps": 1, **h})
    h_only = timed_calls(lambda: _block(op.matvec(v)), reps)
    h_only["per_call"] = h_only["seconds"]
    rows.append({"impl": "ours: op @ v, jvp-of-grad (same operator)", "hvps": 1, **h_only})
    if loop and hasattr(op, "linear_map"):
        for linearize in (False, True):
            r = timed_calls(power_loop(op, linearize, loop), reps)
            r["per_call"] = r["seconds"] / loop
            name = "linearized once" if linearize else "jvp-of-grad"
            rows.append({"impl": f"ours: {loop} HVPs in a jitted loop, {name}", "hvps": loop, **r})
    for r in rows:
        r["ratio_to_grad"] = r["per_call"] / g["seconds"] if r["hvps"] else None
        r.pop("out", None)
    return rows


def power_loop(op, linearize: bool, loop: int) -> Callable[[], object]:
    """A call of ``loop`` power-iteration HVPs inside one jitted ``fori_loop``
    on ``op``'s linear map (``linearize``: the gradient linearised once)."""
    lm = op.linear_map(linearize=linearize)

    @jax.jit
    def power(lm, v0):
        mv = lm.bind()

        def body(_, u):
            hu = mv(u)
            scale = jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(hu)))
            return jax.tree.map(lambda x: x / scale, hu)

        return jax.lax.fori_loop(0, loop, body, v0)

    v = op.unravel(jax.random.normal(jax.random.PRNGKey(0), (op.n,), jnp.float32))
    return lambda: _block(power(lm, v))


def eig_run(w: wl.Workload, k: int, which: str, reps: int, **options) -> dict:
    """``eigenpairs`` (default settings unless ``options``) on a new operator."""
    eigenpairs = require("eigen", "eigenpairs")

    def call():
        op = fresh_operator(w)
        res = eigenpairs(op, k, which=which, key=jax.random.PRNGKey(0), **options)
        return _block(res)

    r = timed_calls(call, reps)
    res = r.pop("out")
    r.update(
        values=np.asarray(res.values, np.float64).tolist(),
        residuals=np.asarray(res.residuals, np.float64).tolist(),
        bounds=np.asarray(res.error_bounds, np.float64).tolist(),
        converged=bool(res.converged),
        hvps=int(res.num_matvecs),
        exact=bool(res.exact),
    )
    return r


def eig_seeds(w: wl.Workload, k: int, which: str, seeds: int, **options) -> dict:
    """One warm ``eigenpairs`` call per start vector (key s, s < seeds), after a
    compiling call; times, HVPs and values per seed."""
    eigenpairs = require("eigen", "eigenpairs")

    def call(s):
        op = fresh_operator(w)
        return _block(eigenpairs(op, k, which=which, key=jax.random.PRNGKey(s), **options))

    settle(lambda: call(0))
    times, hvps, values, bounds = [], [], [], []
    for s in range(seeds):
        t0 = time.perf_counter()
        res = call(s)
        times.append(time.perf_counter() - t0)
        hvps.append(int(res.num_matvecs))
        values.append(np.asarray(res.values, np.float64).tolist())
        bounds.append(np.asarray(res.error_bounds, np.float64).tolist())
    return {"seconds": times, "hvps": hvps, "values": values, "bounds": bounds}


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


# ---------------------------------------------------------------------------
# issue 9: HVPs inside the solvers, defaults, the 2-D slice


def schedule_of(op) -> str:
    """How the library applies blocks of products and where its solvers loop
    (``hessian_tools._operator.schedule``), e.g. ``"map, device"``."""
    lm = op.linear_map()
    return f"{lm.batching}, {lm.loop}"


def inloop_runs(w: wl.Workload, reps: int, *, k: int, trace_matvecs: int, density_matvecs: int):
    """One standalone HVP (``op @ v``, jitted) and the per-HVP cost inside
    eigenpairs, trace, spectral_density and a block product, on one
    operator (the solvers' compiled code is reused between calls)."""
    import hessian_tools as ht

    op = fresh_operator(w)
    v = jax.random.normal(jax.random.PRNGKey(0), (op.n,), jnp.float32)
    block = jax.random.normal(jax.random.PRNGKey(1), (op.n, 8), jnp.float32)
    key = jax.random.PRNGKey(0)
    standalone = timed_calls(lambda: _block(op.matvec(v)), max(3 * reps, 5))
    standalone.pop("out")
    calls = {
        f"eigenpairs(k={k}, method='lanczos')": lambda: ht.eigenpairs(
            op, k, key=key, method="lanczos"
        ),
        f"trace(num_matvecs={trace_matvecs})": lambda: ht.trace(
            op, key=key, num_matvecs=trace_matvecs
        ),
        f"spectral_density(num_matvecs={density_matvecs})": lambda: ht.spectral_density(
            op, key=key, num_matvecs=density_matvecs
        ),
    }
    rows = []
    for label, fn in calls.items():
        r = timed_calls(lambda fn=fn: _block(fn()), reps)
        out = r.pop("out")
        r["hvps"] = int(out.num_matvecs)
        r["label"] = label
        rows.append(r)
        print(f"[bench]   {w.name} {label}: {r['hvps']} HVPs, {r['seconds']:.2f} s", flush=True)
    r = timed_calls(lambda: _block(op.matmat(block)), max(reps, 2))
    r.pop("out")
    r.update(hvps=8, label="op @ V, V of shape (n, 8)")
    rows.append(r)
    for r in rows:
        r["per_hvp"] = r["seconds"] / r["hvps"]
        r["ratio"] = r["per_hvp"] / standalone["seconds"]
    return {"schedule": schedule_of(op), "n": op.n, "standalone": standalone, "rows": rows}


def defaults_runs(w: wl.Workload, *, run_classify: bool, density_seconds_per_hvp: float) -> dict:
    """``eigenpairs(op, 1)`` with the default method (a compiling call, then a
    warm one) and ``classify`` with its default method.

    ``classify`` reports the HVPs it spent (``CriticalPoint.num_matvecs``).
    With ``run_classify`` False (an overloaded machine, where its planned
    CNN HVPs would take many minutes) classify is not called: its path and
    HVPs come from its cost rule (``classify_cost``) and its time is
    estimated at ``density_seconds_per_hvp`` an HVP.
    """
    import hessian_tools as ht
    from hessian_tools.critical import classify_cost

    out = {"eig": eig_run(w, 1, "largest", 1)}
    p = wl.problem(w)
    n = w.n
    planned = int(classify_cost(n, 6))
    r = {"planned_hvps": planned, "n": n, "ran": run_classify}
    if not run_classify:
        exact = n <= planned
        r.update(exact=exact, hvps=n if exact else planned)
        r.update(seconds=r["hvps"] * density_seconds_per_hvp, kind="not run")
        out["classify"] = r
        return out
    c = timed_calls(lambda: _block(ht.classify(p.loss, p.params, *p.args)), 0)
    cp = c.pop("out")
    r.update(
        seconds=c["cold_seconds"],
        kind=cp.kind,
        exact=bool(cp.exact),
        index=int(cp.index),
        index_stderr=float(cp.index_stderr),
    )
    r["hvps"] = int(cp.num_matvecs)  # what it spent, dense or not
    out["classify"] = r
    return out


def slice2d_run(w: wl.Workload, directions, xs, ys, reps: int = 1) -> dict:
    """``ht.landscape.slice_2d`` of the loss over the grid (after a compiling call)."""
    from hessian_tools.landscape import slice_2d

    p = wl.problem(w)
    r = timed_calls(lambda: _block(slice_2d(p.loss, p.params, directions, xs, ys, *p.args)), reps)
    r["values"] = np.asarray(r.pop("out").values, np.float64)
    return r


def random_directions(w: wl.Workload, seed: int = 0):
    """Two filter-normalised random directions (Li et al.), as pytrees like
    the params, and as npz arrays by the workload's npz names."""
    from hessian_tools.landscape import random_direction

    p = wl.problem(w)
    dirs = [
        random_direction(jax.random.PRNGKey(seed + i), p.params, "filter", filter_axis=-1)
        for i in range(2)
    ]
    named = []
    for d in dirs:
        if w.kind != "mlp":
            raise ValueError("the 2-D slice benchmark is for the list-of-dicts MLPs")
        named.append(
            {f"{k}{i}": np.asarray(layer[k], np.float32) for i, layer in enumerate(d) for k in "wb"}
        )
    return dirs, named


# ---------------------------------------------------------------------------
# issue 10: ARPACK on our HVP, warm starts along a training run


def arpack_run(w: wl.Workload, k: int, which: str, tol: float, seed: int = 0) -> dict:
    """scipy's ``eigsh`` (ARPACK) on our HVP (``op.as_linear_operator()``),
    HVPs counted; the operator's compiled product is warmed up first."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    op = fresh_operator(w)
    lin = op.as_linear_operator()
    count = [0]

    def mv(x):
        count[0] += 1
        return lin.matvec(x)

    counted = LinearOperator(lin.shape, matvec=mv, rmatvec=mv, dtype=lin.dtype)
    v0 = np.random.default_rng(seed).standard_normal(op.n).astype(lin.dtype)
    lin.matvec(v0)  # compile
    t0 = time.perf_counter()
    try:
        vals = eigsh(counted, k=k, which="LA" if which == "largest" else "SA", tol=tol, v0=v0)[0]
    except ArpackNoConvergence as exc:
        return {"error": f"ArpackNoConvergence after {count[0]} HVPs: {exc}", "hvps": count[0]}
    seconds = time.perf_counter() - t0
    vals = np.sort(np.asarray(vals, np.float64))
    return {
        "seconds": seconds,
        "hvps": count[0],
        "values": (vals[::-1] if which == "largest" else vals).tolist(),
        "tol": tol,
    }


def warm_runs(w: wl.Workload, *, lr: float, steps: int, every: int, ks=(1, 5)) -> dict:
    """Full-batch gradient descent from the workload's parameters; at every
    ``every`` steps, the top-k eigenpairs cold (``eigenpairs``, random
    start ``PRNGKey(checkpoint)``) and warm (``track_spectrum`` with the
    previous record: v0 = the previous eigenvectors), same default rtol."""
    import hessian_tools as ht

    p = wl.problem(w)
    grad = jax.jit(jax.grad(p.loss))

    @jax.jit
    def gd(params, *args):
        def body(_, q):
            g = grad(q, *args)
            return jax.tree.map(lambda a, b: a - lr * b, q, g)

        return jax.lax.fori_loop(0, every, body, params)

    out = {k: {"cold": [], "warm": [], "lambda": []} for k in ks}
    params, records = p.params, dict.fromkeys(ks)
    for c in range(steps // every + 1):
        if c:
            params = _block(gd(params, *p.args))
        for k in ks:
            op = ht.HessianOperator(p.loss, params, *p.args)
            t0 = time.perf_counter()
            cold = _block(ht.eigenpairs(op, k, key=jax.random.PRNGKey(c), method="lanczos"))
            t_cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            rec = _block(ht.track_spectrum(p.loss, params, *p.args, previous=records[k], k=k))
            t_warm = time.perf_counter() - t0
            records[k] = rec
            o = out[k]
            o["cold"].append(
                {
                    "hvps": int(cold.num_matvecs),
                    "seconds": t_cold,
                    "bound": float(np.max(cold.error_bounds / np.abs(cold.values))),
                    "converged": bool(cold.converged),
                }
            )
            o["warm"].append(
                {
                    "hvps": int(rec.num_matvecs),
                    "seconds": t_warm,
                    "bound": float(np.max(rec.error_bounds / np.abs(rec.values))),
                    "converged": bool(rec.converged),
                    "diff": float(
                        np.max(np.abs(np.asarray(rec.values) - np.asarray(cold.values)))
                        / abs(float(cold.values[0]))
                    ),
                    "abs_bounds": float(np.max(rec.error_bounds + cold.error_bounds))
                    / abs(float(cold.values[0])),
                }
            )
            o["lambda"].append(float(cold.values[0]))
    return out
