"""The first call a researcher meets: a fresh process asking for the top eigenvalue once.

``python benchmarks/cold_start.py`` times whole fresh processes (interpreter,
imports, loading the trained workload, building the operator, one top-1
call), alternating between

* ours with no persistent compilation cache,
* ours with JAX's persistent compilation cache already filled (the CLI's
  default; one line for API users, see docs/guide.md "Speed"),
* PyHessian's ``hessian(...).eigenvalues(top_n=1)`` (in ``.venv-bench``),

``--reps`` times each (default 3), on W-mid, the CNN and the Equinox MLP,
and prints a markdown table of the medians. The trained workloads come from
the benchmark cache (``make bench`` or ``benchmarks/run.py`` trains them).
``child`` runs one of ours in this process (what the parent times).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEER_PY = os.path.join(ROOT, ".venv-bench", "bin", "python")
WORKLOADS = ("W-mid", "CNN", "eqx-MLP")


def child(name: str, cache: str) -> None:
    """One fresh-process top-1 of ours (``cache``: a folder, or "" for none)."""
    import jax

    if cache:  # the one line an API user adds (docs/guide.md, "Speed")
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    sys.path.insert(0, HERE)
    import workloads as wl

    import hessian_tools as ht

    p = wl.problem(wl.get_workload(name))
    op = ht.HessianOperator(p.loss, p.params, *p.args)
    top = ht.eigenpairs(op, 1)
    jax.block_until_ready(top.values)
    print(f"{float(top.values[0]):.6g} {int(top.num_matvecs)}")


PEER = """
import sys, time
sys.path.insert(0, {here!r})
import torch
from pyhessian import hessian
import peers
model, crit, xs, ys = peers._load({name!r})
torch.manual_seed(0)
vals, _ = hessian(model, crit, data=(xs, ys), cuda=False).eigenvalues(top_n=1)
print(f"{{float(vals[0]):.6g}}")
"""


def _timed(cmd: list[str]) -> tuple[float, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr[-600:]}")
    return seconds, proc.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="parent")
    parser.add_argument("--name", default="W-mid")
    parser.add_argument("--cache", default="")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    a = parser.parse_args()
    if a.mode == "child":
        child(a.name, a.cache)
        return
    me = [sys.executable, os.path.abspath(__file__), "child"]
    rows = []
    for name in a.workloads.split(","):
        cache = tempfile.mkdtemp(prefix="ht-cold-cache-")
        _timed([*me, "--name", name, "--cache", cache])  # fills the cache
        times: dict[str, list[float]] = {"none": [], "filled": [], "pyhessian": []}
        out = {}
        for _ in range(a.reps):  # alternating, so that load drifts hit all alike
            t, out["none"] = _timed([*me, "--name", name])
            times["none"].append(t)
            t, out["filled"] = _timed([*me, "--name", name, "--cache", cache])
            times["filled"].append(t)
            if os.path.exists(PEER_PY):
                t, out["pyhessian"] = _timed([PEER_PY, "-c", PEER.format(here=HERE, name=name)])
                times["pyhessian"].append(t)
        med = {k: statistics.median(v) for k, v in times.items() if v}
        peer = med.get("pyhessian")
        ratio = {k: f"{med[k] / peer:.2f}x" if peer else "—" for k in ("none", "filled")}
        rows.append(
            f"| {name} | {med['none']:.2f} s ({ratio['none']}) | {med['filled']:.2f} s "
            f"({ratio['filled']}) | {f'{peer:.2f} s' if peer else 'not installed'} | "
            f"{out['none']} / {out.get('pyhessian', '—')} |"
        )
    print(
        f"Fresh processes, medians of {a.reps} alternating runs each, "
        f"{platform.node()} ({os.cpu_count()} cores), python {platform.python_version()}; "
        f"`python benchmarks/cold_start.py --reps {a.reps}`.\n"
    )
    print(
        "| workload | ours, no cache (÷ PyHessian) | ours, filled cache (÷ PyHessian) "
        "| PyHessian | λ_max, HVPs (ours) / λ_max (PyHessian) |"
    )
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
