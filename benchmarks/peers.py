"""Peer measurements (PyHessian, hessian-eigenthings, matfree), one task per process.

Runs in the separate peer venv (``benchmarks/setup_peers.sh`` makes
``.venv-bench``), never in the project's own: ``run.py`` starts
``.venv-bench/bin/python benchmarks/peers.py TASK WORKLOAD [options]`` once per
task so that each task's peak RSS is its own, and reads the JSON object this
prints on its last line. Raw values only; ``run.py`` scores them against the
float64 references.

The torch model is the same MLP as ``workloads.mlp`` (``nn.Linear`` weights are
the transposed JAX weights), float32, full batch, mean cross-entropy; each
peer is called the way its README shows, with its default settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _rss import peak_rss_mb


def _load(name: str):
    import torch
    import workloads as wl

    params, x, y = wl.load_npz(wl.params_path(name))
    layers = []
    for i, p in enumerate(params):
        lin = torch.nn.Linear(*p["w"].shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(p["w"].T.copy()))
            lin.bias.copy_(torch.from_numpy(p["b"]))
        layers.append(lin)
        if i < len(params) - 1:
            layers.append(torch.nn.Tanh())
    model = torch.nn.Sequential(*layers)
    inputs = torch.from_numpy(x)
    targets = torch.from_numpy(y.argmax(axis=1)).long()
    return model, torch.nn.CrossEntropyLoss(), inputs, targets


def _pick_threads(name: str) -> int:
    """Give torch its faster intra-op thread count (1 or all cores) for this workload.

    On a loaded shared machine torch's spinning OpenMP threads can make a
    2-thread gradient 5-30x slower than a 1-thread one; picking the faster
    setting keeps the comparison fair to the peers. HT_BENCH_TORCH_THREADS
    overrides it.
    """
    import torch

    forced = os.environ.get("HT_BENCH_TORCH_THREADS")
    if forced:
        torch.set_num_threads(int(forced))
        return int(forced)
    model, crit, xs, ys = _load(name)
    params = list(model.parameters())
    best = None
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        torch.autograd.grad(crit(model(xs), ys), params)
        t, _ = _timed(lambda: torch.autograd.grad(crit(model(xs), ys), params), 5)
        if best is None or t < best[0]:
            best = (t, threads)
    torch.set_num_threads(best[1])
    return best[1]


def _timed(fn, reps: int):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


class _Counter:
    """Counts PyHessian's HVPs by wrapping its module-level hessian_vector_product."""

    def __init__(self):
        ph = sys.modules["pyhessian.hessian"]

        self.count = 0
        self._orig = ph.hessian_vector_product

        def counted(*a, **k):
            self.count += 1
            return self._orig(*a, **k)

        ph.hessian_vector_product = counted


def _eigenthings_op(model, criterion, inputs, targets):
    import hessian_eigenthings as he

    op = he.HessianOperator(model, [(inputs, targets)], he.supervised_loss(criterion))
    count = [0]

    def mv(v):
        count[0] += 1
        return op.matvec(v)

    return he.LambdaOperator(mv, op.size, dtype=op.dtype), count


# ---------------------------------------------------------------------------
# tasks


def task_hvp(name, reps, **_):
    import torch

    model, crit, xs, ys = _load(name)
    params = [p for p in model.parameters()]
    v = [torch.randn_like(p) for p in params]

    def grad():
        return torch.autograd.grad(crit(model(xs), ys), params)

    loss = crit(model(xs), ys)
    g = torch.autograd.grad(loss, params, create_graph=True)

    def hvp_reuse():  # PyHessian: one double-backward through the stored graph
        return torch.autograd.grad(g, params, grad_outputs=v, retain_graph=True)

    def hvp_fresh():  # hessian-eigenthings: forward + grad graph + double backward
        gg = torch.autograd.grad(crit(model(xs), ys), params, create_graph=True)
        return torch.autograd.grad(gg, params, grad_outputs=v)

    for f in (grad, hvp_reuse, hvp_fresh):
        f()  # warm-up
    out = {}
    for key, f in (("grad", grad), ("hvp_pyhessian", hvp_reuse), ("hvp_eigenthings", hvp_fresh)):
        out[key] = _timed(f, reps)[0]
    return out


def _pyhessian_top(name, k, reps):
    from pyhessian import hessian

    model, crit, xs, ys = _load(name)
    counter = _Counter()
    counts = []

    def run():
        counter.count = 0
        h = hessian(model, crit, data=(xs, ys), cuda=False)
        vals, _ = h.eigenvalues(top_n=k)
        counts.append(counter.count)
        return vals

    t, vals = _timed(run, reps)
    return {"seconds": t, "values": [float(v) for v in vals], "hvps": counts[-1]}


def task_top1(name, reps, seeds, **_):
    """PyHessian's top-1 twice: median of ``reps`` calls after ``manual_seed(0)``,
    and one call per start vector (``manual_seed(s)``, s < seeds): its power
    iteration stops after 6 to 19 HVPs depending on the start."""
    import torch
    from pyhessian import hessian

    torch.manual_seed(0)
    out = {"pyhessian": _pyhessian_top(name, 1, reps)}
    model, crit, xs, ys = _load(name)
    counter = _Counter()
    times, hvps, values = [], [], []
    for s in range(seeds):
        torch.manual_seed(s)
        counter.count = 0
        t0 = time.perf_counter()
        vals, _ = hessian(model, crit, data=(xs, ys), cuda=False).eigenvalues(top_n=1)
        times.append(time.perf_counter() - t0)
        hvps.append(counter.count)
        values.append(float(vals[0]))
    out["pyhessian_seeds"] = {"seconds": times, "hvps": hvps, "values": values}
    return out


def task_top10(name, reps, **_):
    import hessian_eigenthings as he
    import torch

    torch.manual_seed(0)
    out = {"pyhessian": _pyhessian_top(name, 10, reps)}
    model, crit, xs, ys = _load(name)
    for key, fn, r in (
        ("eigenthings_power", lambda op: he.deflated_power_iteration(op, k=10, seed=0), 1),
        ("eigenthings_lanczos", lambda op: he.lanczos(op, k=10, which="LA", seed=0), reps),
    ):
        try:

            def run(fn=fn):
                op, count = _eigenthings_op(model, crit, xs, ys)
                res = fn(op)
                return res, count[0]

            t, (res, hvps) = _timed(run, r)
            out[key] = {
                "seconds": t,
                "values": res.eigenvalues.tolist(),
                "hvps": hvps,
                "converged": bool(res.converged.all()),
            }
        except Exception as exc:  # report, don't crash the benchmark
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def task_trace(name, seeds, **_):
    import hessian_eigenthings as he
    import torch
    from pyhessian import hessian

    model, crit, xs, ys = _load(name)
    out = {}
    vals, hvps, times = [], [], []
    for s in range(seeds):
        torch.manual_seed(s)
        t0 = time.perf_counter()
        samples = hessian(model, crit, data=(xs, ys), cuda=False).trace()
        times.append(time.perf_counter() - t0)
        vals.append(float(np.mean(samples)))
        hvps.append(len(samples))
    out["pyhessian"] = {"values": vals, "hvps": hvps, "seconds": statistics.median(times)}
    vals, times = [], []
    for s in range(seeds):
        op, count = _eigenthings_op(model, crit, xs, ys)
        t0 = time.perf_counter()
        res = he.trace(op, num_matvecs=100, method="hutch++", seed=s)
        times.append(time.perf_counter() - t0)
        vals.append(float(res.estimate))
    out["eigenthings_hutchpp"] = {
        "values": vals,
        "hvps": [count[0]] * seeds,
        "seconds": statistics.median(times),
    }
    return out


def _eig_shim():
    """torch.eig was removed in torch 2.0; PyHessian 0.1's density() still calls it."""
    import torch

    def eig(a, eigenvectors=False):
        w, v = torch.linalg.eigh(a)
        return torch.stack([w, torch.zeros_like(w)], dim=1), v

    torch.eig = eig


def task_density(name, **_):
    import hessian_eigenthings as he
    import torch
    from pyhessian import hessian

    model, crit, xs, ys = _load(name)
    out = {}
    torch.manual_seed(0)
    try:
        hessian(model, crit, data=(xs, ys), cuda=False).density()
        out["pyhessian_as_is"] = {"error": "ran"}
    except Exception as exc:
        out["pyhessian_as_is"] = {"error": f"{type(exc).__name__}: {exc}"}
    _eig_shim()
    torch.manual_seed(0)
    counter = _Counter()
    t0 = time.perf_counter()
    nodes, weights = hessian(model, crit, data=(xs, ys), cuda=False).density()
    out["pyhessian_shim"] = {
        "seconds": time.perf_counter() - t0,
        "nodes": np.ravel(nodes).tolist(),
        "weights": np.ravel(weights).tolist(),
        "probes": len(nodes),
        "hvps": counter.count,
    }
    try:
        op, count = _eigenthings_op(model, crit, xs, ys)
        t0 = time.perf_counter()
        res = he.spectral_density(op, seed=0)
        out["eigenthings"] = {
            "seconds": time.perf_counter() - t0,
            "nodes": res.raw_eigenvalues.ravel().tolist(),
            "weights": res.raw_weights.ravel().tolist(),
            "probes": int(res.raw_eigenvalues.shape[0]),
            "hvps": count[0],
        }
    except Exception as exc:
        out["eigenthings"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def task_matfree(name, reps, budgets, **_):
    import jax
    import workloads as wl
    from jax.flatten_util import ravel_pytree
    from matfree import decomp, eig

    w = wl.get_workload(name)
    params, x, y = wl.as_jax(w)
    flat, unravel = ravel_pytree(params)

    def hvp(v, p, xx, yy):
        g = lambda q: ravel_pytree(jax.grad(wl.loss)(unravel(q), xx, yy))[0]
        return jax.jvp(g, (p,), (v,))[1]

    out = {}
    v0 = jax.random.normal(jax.random.PRNGKey(0), flat.shape, flat.dtype)
    for m in budgets:
        solve = jax.jit(
            lambda v, p, xx, yy, m=m: eig.eigh_partial(decomp.tridiag_sym(m))(hvp, v, p, xx, yy)[0]
        )
        t0 = time.perf_counter()
        jax.block_until_ready(solve(v0, flat, x, y))
        first = time.perf_counter() - t0
        t, vals = _timed(lambda s=solve: jax.block_until_ready(s(v0, flat, x, y)), reps)
        vals = np.sort(np.asarray(vals))[::-1]
        out[str(m)] = {"seconds": t, "compile": first - t, "values": vals[:10].tolist(), "hvps": m}
    return out


def task_memory(name, **_):
    """Fresh process: PyHessian top-10 (the peak RSS is what we compare)."""
    import torch

    torch.manual_seed(0)
    return {"pyhessian": _pyhessian_top(name, 10, 1)}


def task_memory_base(name, **_):
    """Fresh process: torch, model, data and one HVP; the floor under the figure above."""
    import torch

    model, crit, xs, ys = _load(name)
    params = list(model.parameters())
    g = torch.autograd.grad(crit(model(xs), ys), params, create_graph=True)
    torch.autograd.grad(g, params, grad_outputs=[torch.ones_like(p) for p in params])
    return {}


TASKS = {
    "hvp": task_hvp,
    "top1": task_top1,
    "top10": task_top10,
    "trace": task_trace,
    "density": task_density,
    "matfree": task_matfree,
    "memory": task_memory,
    "memory_base": task_memory_base,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("workload")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--budgets", default="20,40,80")
    a = parser.parse_args()
    budgets = [int(b) for b in a.budgets.split(",")]
    threads = None
    try:
        threads = _pick_threads(a.workload) if a.task != "matfree" else None
        out = TASKS[a.task](a.workload, reps=a.reps, seeds=a.seeds, budgets=budgets)
    except Exception as exc:
        out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    out["torch_threads"] = threads
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
