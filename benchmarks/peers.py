"""Peer measurements (PyHessian, hessian-eigenthings, matfree), one task per process.

Runs in the separate peer venv (``benchmarks/setup_peers.sh`` makes
``.venv-bench``), never in the project's own: ``run.py`` starts
``.venv-bench/bin/python benchmarks/peers.py TASK WORKLOAD [options]`` once per
task so that each task's peak RSS is its own, and reads the JSON object this
prints on its last line. Raw values only; ``run.py`` scores them against the
float64 references.

The torch model computes the same function as the workload's JAX model
(``_torch_model``: ``nn.Linear`` weights are the transposed JAX weights, conv
kernels OIHW, BatchNorm in eval mode on the same running statistics),
float32, full batch, mean cross-entropy; each peer is called the way its
README shows, with its default settings.
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


def _torch_arrays(kind: str, arrays: dict) -> dict:
    """The workload's npz arrays by torch parameter/buffer name, in torch's
    layouts (Linear weights (out, in), conv weights OIHW)."""
    out = {}
    if kind == "nnx-cnn":
        for key, a in arrays.items():
            layer, leaf = key.split("_", 1)
            if leaf == "kernel":
                a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T  # HWIO -> OIHW; (in, out)
                leaf = "weight"
            elif leaf == "scale":
                leaf = "weight"
            elif leaf in ("mean", "var"):
                leaf = f"running_{leaf}"
            out[f"{layer}.{leaf}"] = a
        return out
    for key, a in arrays.items():  # Sequential(Linear, Tanh, Linear, ...): Linears at 0, 2, ...
        i = int(key[1:])
        out[f"{2 * i}.weight" if key[0] == "w" else f"{2 * i}.bias"] = a.T if key[0] == "w" else a
    return out


def _torch_model(spec):
    import torch
    import workloads as wl
    from torch import nn

    if spec.kind == "nnx-cnn":
        c1, c2, classes = spec.sizes

        class CNN(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv0 = nn.Conv2d(1, c1, 3, padding=1)
                self.bn0 = nn.BatchNorm2d(c1, eps=wl.BN_EPS)
                self.conv1 = nn.Conv2d(c1, c2, 3, padding=1)
                self.bn1 = nn.BatchNorm2d(c2, eps=wl.BN_EPS)
                self.dense = nn.Linear(16 * c2, classes)

            def forward(self, x):  # x: (N, 64) -> (N, 1, 8, 8)
                h = x.reshape(x.shape[0], 1, 8, 8)
                h = torch.relu(self.bn0(self.conv0(h)))
                h = torch.relu(self.bn1(self.conv1(h)))
                h = nn.functional.avg_pool2d(h, 2)
                # flatten in (h, w, c) order, as the NHWC JAX model does
                return self.dense(h.permute(0, 2, 3, 1).reshape(h.shape[0], -1))

        return CNN()
    layers = []
    for i, (a, b) in enumerate(zip(spec.sizes[:-1], spec.sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(spec.sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def _set_tensors(model, named: dict) -> None:
    import torch

    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for key, a in named.items():
            tensors[key].copy_(torch.from_numpy(np.ascontiguousarray(a)))


def _load(name: str):
    """The workload as (torch model in eval mode, loss, inputs, targets)."""
    import torch
    import workloads as wl

    spec = wl.WORKLOADS[name]
    arrays, x, y = wl.load_npz(wl.params_path(name))
    model = _torch_model(spec)
    _set_tensors(model, _torch_arrays(spec.kind, arrays))
    model.eval()  # BatchNorm on its running statistics, as in the JAX model
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

    torch.manual_seed(0)
    out = {"pyhessian": _pyhessian_top(name, 1, reps)}
    runs = _pyhessian_seeds(name, 1, seeds)
    out["pyhessian_seeds"] = runs | {"values": [v[0] for v in runs["values"]]}
    return out


def _pyhessian_seeds(name, top_n, seeds):
    """PyHessian's top-``top_n`` once per start vector (``manual_seed(s)``,
    s < seeds): seconds, HVPs and the eigenvalues of each call."""
    import torch
    from pyhessian import hessian

    model, crit, xs, ys = _load(name)
    counter = _Counter()
    times, hvps, values = [], [], []
    for s in range(seeds):
        torch.manual_seed(s)
        counter.count = 0
        t0 = time.perf_counter()
        vals, _ = hessian(model, crit, data=(xs, ys), cuda=False).eigenvalues(top_n=top_n)
        times.append(time.perf_counter() - t0)
        hvps.append(counter.count)
        values.append([float(v) for v in vals])
    return {"seconds": times, "hvps": hvps, "values": values}


def task_top10(name, reps, seeds, extras, **_):
    """PyHessian's top-10 once per start vector (``manual_seed(s)``, s < seeds);
    with ``extras``, hessian-eigenthings' deflated power iteration and Lanczos."""
    import hessian_eigenthings as he

    out = {"pyhessian_seeds": _pyhessian_seeds(name, 10, seeds)}
    if not extras:
        return out
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

            t, (res, n_hvps) = _timed(run, r)
            out[key] = {
                "seconds": t,
                "values": res.eigenvalues.tolist(),
                "hvps": n_hvps,
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


def task_slice2d(name, directions, **_):
    """The loss-landscape tool's 2-D slice (Li et al.'s ``plot_surface.py``):
    for each grid point, set the weights to params + x d1 + y d2, forward
    pass, loss; a plain Python loop under ``torch.no_grad()``. The
    directions and the grid come from ``run.py`` (npz: ``xs``, ``ys``,
    ``d1_<name>``, ``d2_<name>`` by the workload's npz names)."""
    import torch
    import workloads as wl

    model, crit, xs, ys = _load(name)
    spec_kind = wl.WORKLOADS[name].kind
    with np.load(directions) as z:
        gx, gy = z["xs"], z["ys"]
        d = [
            _torch_arrays(spec_kind, {k[3:]: z[k] for k in z.files if k.startswith(p)})
            for p in ("d1_", "d2_")
        ]
    params = dict(model.named_parameters())
    origin = {k: p.detach().clone() for k, p in params.items()}
    d1 = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in d[0].items()}
    d2 = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in d[1].items()}
    zero = {k: torch.zeros_like(p) for k, p in origin.items()}

    def grid():
        values = np.zeros((len(gy), len(gx)))
        with torch.no_grad():
            for i, b in enumerate(gy):
                for j, a in enumerate(gx):
                    for k, p in params.items():
                        p.copy_(origin[k] + a * d1.get(k, zero[k]) + b * d2.get(k, zero[k]))
                    values[i, j] = crit(model(xs), ys).item()
        return values

    grid()  # warm-up (allocator, threads), as our side gets a compiling call
    t0 = time.perf_counter()
    values = grid()
    return {"seconds": time.perf_counter() - t0, "values": values.tolist()}


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
    "slice2d": task_slice2d,
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
    parser.add_argument("--directions", default="", help="npz of the slice's grid and directions")
    parser.add_argument("--extras", action="store_true", help="also the slow peer variants")
    a = parser.parse_args()
    budgets = [int(b) for b in a.budgets.split(",")]
    threads = None
    try:
        threads = _pick_threads(a.workload) if a.task != "matfree" else None
        out = TASKS[a.task](
            a.workload,
            reps=a.reps,
            seeds=a.seeds,
            budgets=budgets,
            directions=a.directions,
            extras=a.extras,
        )
    except Exception as exc:
        out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    out["torch_threads"] = threads
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
