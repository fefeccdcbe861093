"""The first call a researcher meets: a fresh process asking for the top eigenvalue once.

``python benchmarks/cold_start.py`` times whole fresh processes (interpreter,
imports, loading the trained workload, building the operator, one top-1
call; ``--task top10`` or ``trace`` for a top-10 or a 100-HVP trace
instead), alternating between

* ours with no persistent compilation cache,
* ours with JAX's persistent compilation cache already filled (the CLI's
  default; one line for API users, see docs/guide.md "Speed"),
* PyHessian's ``hessian(...).eigenvalues(top_n=1)`` (``top_n=10``; its
  ``trace()``, up to 100 Hutchinson samples) (in ``.venv-bench``),
* with ``--before TREE``: the same two of ours with the package of another
  checkout (say a worktree of the previous commit), so that before and after
  are measured in one session, alternating,

``--reps`` times each (default 3), on W-mid, the CNN and the Equinox MLP,
and prints a markdown table of the medians, then a second table of where
our processes spent their time: ``import`` (JAX and the package), ``load``
(the workload: data, model, parameters), ``operator`` (building the
``HessianOperator``, its finiteness check included), ``first call`` (the
first call of the task: tracing, compiling, solving) and ``warm`` (a
second call in the same process, another start vector: the warm time, from
one more process per variant, as the timed processes ask once). The
trained workloads come from the benchmark cache (``make bench`` or
``benchmarks/run.py`` trains them). ``child`` runs one of ours in this
process (what the parent times); it prints the path of the package it
imported, which the parent checks.

``python benchmarks/cold_start.py warm [--before TREE]`` gives the warm
figures beside them (``warm``): per-HVP cost of top-1 and top-10 over a
standalone HVP (the solvers' target: at most 1.3x) and top-1's fixed cost,
also for the small transformer (``--workloads W-mid,CNN,eqx-MLP,transformer``).

``cold_row(name, prelude, call)`` gives the cold column of every time row of
ours in benchmarks/RESULTS.md (``run.py``): the first ``call`` (Python
source, after the untimed ``prelude``) in fresh processes that have loaded
the workload, with no compilation cache and with a filled one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEER_PY = os.path.join(ROOT, ".venv-bench", "bin", "python")
WORKLOADS = ("W-mid", "CNN", "eqx-MLP")
PHASES = ("import", "load", "operator", "first call", "warm")


#: the first calls timed (``--task``): ours (called with the operator and a
#: key), and PyHessian's call of the same job (Python source for its process)
OURS = {
    "top1": lambda ht, op, key: ht.eigenpairs(op, 1, key=key),
    "top10": lambda ht, op, key: ht.eigenpairs(op, 10, key=key),
    "trace": lambda ht, op, key: ht.trace(op, key=key, num_matvecs=100),
}
PYHESSIAN = {
    "top1": "hessian(model, crit, data=(xs, ys), cuda=False).eigenvalues(top_n=1)[0][0]",
    "top10": "hessian(model, crit, data=(xs, ys), cuda=False).eigenvalues(top_n=10)[0][0]",
    # its Hutchinson samples (at most 100, until the mean settles to 1e-3)
    "trace": "np.mean(hessian(model, crit, data=(xs, ys), cuda=False).trace())",
}


def _first_value(task: str, res) -> tuple[float, int]:
    """The printed value (top eigenvalue, or trace) and its HVPs."""
    if task == "trace":
        return float(res.value), int(res.num_matvecs)
    return float(res.values[0]), int(res.num_matvecs)


def _use_cache(cache: str) -> None:
    """JAX's persistent compilation cache in ``cache`` ("" for none): the
    line an API user adds (docs/guide.md, "Speed")."""
    if cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def child(name: str, cache: str, task: str = "top1", warm: bool = False) -> None:
    """One fresh-process first call of ours (``task``: ``OURS``; ``cache``:
    a folder, or "" for none); ``warm``: a second call after it, timed as
    the ``warm`` phase (not in the timed processes, which ask once, as
    PyHessian's do)."""
    t0 = time.perf_counter()
    import jax

    _use_cache(cache)
    sys.path.insert(0, HERE)
    import workloads as wl

    import hessian_tools as ht

    t1 = time.perf_counter()
    p = wl.problem(wl.get_workload(name))
    jax.block_until_ready(jax.tree.leaves(p.params))
    t2 = time.perf_counter()
    op = ht.HessianOperator(p.loss, p.params, *p.args)
    t3 = time.perf_counter()
    top = OURS[task](ht, op, 0)  # the first call
    jax.block_until_ready(top)
    t4 = time.perf_counter()
    t5 = t4
    if warm:
        again = OURS[task](ht, op, 1)  # warm: another key
        jax.block_until_ready(again)
        t5 = time.perf_counter()
    phases = dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True))
    print(json.dumps({"package": ht.__file__, "phases": phases}))
    value, hvps = _first_value(task, top)
    print(f"{value:.6g} {hvps}")


def warm(name: str, reps: int) -> None:
    """Warm figures in one process (the no-regression check of a change to
    the first call): a standalone jitted HVP, and the time per HVP of
    ``eigenpairs(op, k)`` for k = 1 and 10 (its orthogonalisation,
    completeness check and bookkeeping included) over that HVP, medians of
    ``reps`` calls with new keys, alternating with the standalone HVP; and
    top-1's fixed cost: its time less its HVPs at the standalone HVP's time,
    in HVPs."""
    import jax
    import numpy as np

    sys.path.insert(0, HERE)
    import workloads as wl

    import hessian_tools as ht

    p = wl.transformer() if name == "transformer" else wl.problem(wl.get_workload(name))
    op = ht.HessianOperator(p.loss, p.params, *p.args)
    v = jax.random.normal(jax.random.PRNGKey(0), (op.n,), op.dtype)
    jax.block_until_ready(op @ v)
    times = {"hvp": [], 1: [], 10: []}
    hvps = {1: [], 10: []}
    from _timing import settle

    for k in (1, 10):  # warm: the optimised programs (compiled aside at a second call)
        settle(lambda k=k: ht.eigenpairs(op, k, method="lanczos").values)
    for i in range(reps):
        for k in (1, 10):
            t0 = time.perf_counter()
            top = ht.eigenpairs(op, k, key=100 + i, method="lanczos")
            jax.block_until_ready(top.values)
            times[k].append(time.perf_counter() - t0)
            hvps[k].append(int(top.num_matvecs))
            t0 = time.perf_counter()
            for _ in range(3):
                jax.block_until_ready(op @ v)
            times["hvp"].append((time.perf_counter() - t0) / 3)
    hvp = statistics.median(times["hvp"])
    per = {k: statistics.median(np.array(times[k]) / np.array(hvps[k])) / hvp for k in (1, 10)}
    fixed = statistics.median(np.array(times[1]) / hvp - np.array(hvps[1]))
    out = {
        "package": ht.__file__,
        "n": op.n,
        "hvp_ms": hvp * 1e3,
        "top1_ms": statistics.median(times[1]) * 1e3,
        "top1_hvps": statistics.median(hvps[1]),
        "top10_ms": statistics.median(times[10]) * 1e3,
        "top10_hvps": statistics.median(hvps[10]),
        "per_hvp_top1": per[1],
        "per_hvp_top10": per[10],
        "fixed_hvps": fixed,
    }
    print(json.dumps(out))
    print("ok")


def row_child(name: str, prelude: str, call: str, cache: str) -> None:
    """One fresh-process first call of a RESULTS.md row (``cold_row``):
    prints its seconds. Names for the sources: ht, jax, jnp, np, ours, wl,
    w (the workload), p (its problem)."""
    import jax

    _use_cache(cache)
    sys.path.insert(0, HERE)
    import jax.numpy as jnp
    import numpy as np
    import ours
    import workloads as wl

    import hessian_tools as ht

    w = wl.get_workload(name)
    ns = {"ht": ht, "jax": jax, "jnp": jnp, "np": np, "ours": ours, "wl": wl, "w": w}
    ns["p"] = wl.problem(w)
    exec(prelude, ns)
    t0 = time.perf_counter()
    ours._block(eval(call, ns))
    print(json.dumps({"package": ht.__file__, "seconds": time.perf_counter() - t0}))


def cold_row(name: str, prelude: str, call: str, reps: int = 1) -> dict:
    """Medians of ``reps`` fresh-process first calls of ``call`` on workload
    ``name`` (``row_child``), alternating: no compilation cache ("none"),
    and a cache filled by one more process first ("filled")."""
    cache = tempfile.mkdtemp(prefix="ht-cold-row-")
    me = [sys.executable, os.path.abspath(__file__), "row-child", "--name", name]
    me += ["--prelude", prelude, "--call", call, "--cache"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)

    def once(c: str) -> float:
        proc = subprocess.run([*me, c], capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"cold {name} {call!r} failed: {proc.stderr[-600:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]

    try:
        once(cache)  # fills it
        times: dict[str, list[float]] = {"none": [], "filled": []}
        for _ in range(reps):
            times["none"].append(once(""))
            times["filled"].append(once(cache))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {k: statistics.median(v) for k, v in times.items()}


PEER = """
import sys, time
sys.path.insert(0, {here!r})
import numpy as np
import torch
from pyhessian import hessian
import peers
model, crit, xs, ys = peers._load({name!r})
torch.manual_seed(0)
print(f"{{float({call}):.6g}}")
"""


def _timed(cmd: list[str], tree: str | None = None) -> tuple[float, str, dict]:
    """Wall time of a fresh process, its last output line, and (ours) its
    phases; ``tree``: the checkout whose package ours imports."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if tree is not None:
        env["PYTHONPATH"] = tree
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr[-600:]}")
    lines = proc.stdout.strip().splitlines()
    info = {}
    if tree is not None:
        info = json.loads(lines[-2])
        expected = os.path.join(os.path.realpath(tree), "hessian_tools")
        if not os.path.realpath(info["package"]).startswith(expected):
            raise RuntimeError(f"imported {info['package']}, not the package of {tree}")
    return seconds, lines[-1], info.get("phases", {})


def warm_table(a: argparse.Namespace) -> None:
    """``warm``: the warm figures of ``warm()`` for each workload (and the
    transformer), a fresh process per tree, the trees alternating."""
    me = [sys.executable, os.path.abspath(__file__), "warm-child", "--reps", str(a.reps)]
    trees = {"ours": ROOT} | ({"before": os.path.abspath(a.before)} if a.before else {})
    print(
        "| workload | tree | n | HVP (ms) | top-1: ms, HVPs | per HVP ÷ HVP | top-10: ms, HVPs "
        "| per HVP ÷ HVP | top-1 fixed cost (HVPs) |"
    )
    print("|---" * 9 + "|")
    for name in a.workloads.split(","):
        for label, tree in trees.items():
            env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=tree)
            proc = subprocess.run(
                [*me, "--name", name], capture_output=True, text=True, env=env, timeout=1800
            )
            if proc.returncode != 0:
                raise RuntimeError(f"warm {name} {label} failed: {proc.stderr[-600:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-2])
            if not os.path.realpath(r["package"]).startswith(os.path.realpath(tree)):
                raise RuntimeError(f"imported {r['package']}, not the package of {tree}")
            print(
                f"| {name} | {label} | {r['n']:,} | {r['hvp_ms']:.1f} | {r['top1_ms']:.0f}, "
                f"{r['top1_hvps']:g} | {r['per_hvp_top1']:.2f} | {r['top10_ms']:.0f}, "
                f"{r['top10_hvps']:g} | {r['per_hvp_top10']:.2f} | {r['fixed_hvps']:.2f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="parent")
    parser.add_argument("--name", default="W-mid")
    parser.add_argument("--cache", default="")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--before", default="", help="another checkout to time beside this one")
    parser.add_argument("--task", default="top1", choices=sorted(OURS), help="the first call")
    parser.add_argument("--prelude", default="", help="row-child: untimed source")
    parser.add_argument("--call", default="", help="row-child: the timed first call")
    parser.add_argument("--warm", action="store_true", help="child: a warm call after the first")
    a = parser.parse_args()
    if a.mode == "row-child":
        row_child(a.name, a.prelude, a.call, a.cache)
        return
    if a.mode == "child":
        child(a.name, a.cache, a.task, a.warm)
        return
    if a.mode == "warm-child":
        warm(a.name, a.reps)
        return
    if a.mode == "warm":
        warm_table(a)
        return
    me = [sys.executable, os.path.abspath(__file__), "child", "--task", a.task]
    trees = {"": ROOT} | ({"before ": os.path.abspath(a.before)} if a.before else {})
    variants = [(f"{t}{c}", tree, c) for t, tree in trees.items() for c in ("none", "filled")]
    rows, phase_rows = [], []
    for name in a.workloads.split(","):
        caches = {t: tempfile.mkdtemp(prefix="ht-cold-cache-") for t in trees}
        for t, tree in trees.items():  # fill the caches
            _timed([*me, "--name", name, "--cache", caches[t]], tree)
        times: dict[str, list[float]] = {v: [] for v, _, _ in variants} | {"pyhessian": []}
        phases: dict[str, list[dict]] = {v: [] for v, _, _ in variants}
        out = {}
        for _ in range(a.reps):  # alternating, so that load drifts hit all alike
            for v, tree, c in variants:
                cache = caches[v[: -len(c)]] if c == "filled" else ""
                t, out[v], ph = _timed([*me, "--name", name, "--cache", cache], tree)
                times[v].append(t)
                phases[v].append(ph)
            if os.path.exists(PEER_PY):
                script = PEER.format(here=HERE, name=name, call=PYHESSIAN[a.task])
                peer_cmd = [PEER_PY, "-c", script]
                t, out["pyhessian"], _ = _timed(peer_cmd)
                times["pyhessian"].append(t)
        for v, tree, c in variants:  # the warm phase: one more process each, not timed
            cache = caches[v[: -len(c)]] if c == "filled" else ""
            warm_phase = _timed([*me, "--name", name, "--cache", cache, "--warm"], tree)[2]
            for ph in phases[v]:
                ph["warm"] = warm_phase["warm"]
        med = {k: statistics.median(v) for k, v in times.items() if v}
        spread = {k: (min(v), max(v)) for k, v in times.items() if v}
        peer = med.get("pyhessian")

        def cell(v, med=med, spread=spread, peer=peer):
            ratio = f" ({med[v] / peer:.2f}x)" if peer else ""
            lo, hi = spread[v]
            return f"{med[v]:.2f} s{ratio} [{lo:.1f}-{hi:.1f}]"

        cells = " | ".join(cell(v) for v, _, _ in variants)
        peer_cell = cell("pyhessian") if peer else "not installed"
        rows.append(
            f"| {name} | {cells} | {peer_cell} | {out['none']} / {out.get('pyhessian', '—')} |"
        )
        for v, _, _ in variants:
            ph = {p: statistics.median(d[p] for d in phases[v]) for p in PHASES}
            phase_rows.append(
                f"| {name} | {v} | " + " | ".join(f"{ph[p]:.2f}" for p in PHASES) + " |"
            )
        print(rows[-1], flush=True)
    print(
        f"\nFresh processes, medians of {a.reps} alternating runs each [min-max], "
        f"{platform.node()} ({os.cpu_count()} cores), python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"`python benchmarks/cold_start.py --task {a.task} --reps {a.reps}"
        f"{' --before ' + a.before if a.before else ''}`.\n"
    )
    label = {"none": "no cache", "filled": "filled cache"}
    head = " | ".join(
        f"{'before' if v.startswith('before') else 'ours'}, {label[c]} (÷ PyHessian) [min-max]"
        for v, _, c in variants
    )
    what = "trace" if a.task == "trace" else "λ_max"
    print(f"| workload | {head} | PyHessian | {what}, HVPs (ours) / {what} (PyHessian) |")
    print("|---" * (len(variants) + 3) + "|")
    print("\n".join(rows))
    print("\nWhere our processes spent their time (seconds, medians):\n")
    print("| workload | ours | " + " | ".join(PHASES) + " |")
    print("|---" * (len(PHASES) + 2) + "|")
    print("\n".join(phase_rows))


if __name__ == "__main__":
    main()
