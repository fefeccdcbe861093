"""The transformer workload (issue 21, item 7): one script, runnable alone.

    PYTHONPATH=. python benchmarks/transformer.py [--output benchmarks/RESULTS_transformer.md]
        [--scale] [--quick]

Workload ``TFM`` (``workloads.TRANSFORMERS``): a Flax NNX pre-norm causal
transformer, 2 blocks, width 80, 4 heads, vocabulary 64, 32 sequences of 32
tokens of structured synthetic data, n = 163,520, float32, trained by 300
full-batch Adam steps (cached in ``$TMPDIR/hessian_tools_bench``).

Rows: one HVP against one gradient; top-10 and bottom-5 with their certified
bounds next to the true error against a float64 reference; the trace (Krylov,
100 HVPs) with its stderr; the spectral density (SLQ); the block spectra by
role (embeddings, Q, K, V, O, MLP, norms, with densities and the
heterogeneity), cold (first call in this fresh process) and warm (the same
call again); the peak RSS. The reference is not a dense Hessian (n = 163,520
would need 107 GB in float64): it is ``eigenpairs`` run on the float64 model
(the float32 parameters cast, the softmax in float64) to rtol 1e-9 within
600 float64 HVPs, whose
own certified bounds are printed (each far below the float32 errors it
judges). ``--scale`` adds the same architecture at n ~ 10M (random init,
fewer tokens): top-10 with bounds, HVP against gradient, peak RSS against
the model plus the Krylov basis.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads as wl
from _rss import peak_rss_mb
from _timing import timed

import hessian_tools as ht


def hvp_vs_grad(problem, reps=5) -> tuple[float, float]:
    op = ht.HessianOperator(problem.loss, problem.params, *problem.args)
    grad = jax.jit(jax.grad(problem.loss))
    v = jax.random.normal(jax.random.PRNGKey(1), (op.n,), jnp.float32)
    t_grad = timed(lambda: grad(problem.params, *problem.args), reps)
    t_hvp = timed(lambda: op.matvec(v), reps)
    return t_hvp, t_grad


def eig_rows(ep, ref_values, ref_bounds) -> list[str]:
    rows = []
    for i, (value, bound) in enumerate(zip(ep.values, ep.error_bounds, strict=True)):
        err = abs(float(value) - ref_values[i])
        ok = "yes" if err <= float(bound) + ref_bounds[i] else "**no**"
        rows.append(
            f"| {i + 1} | {ref_values[i]:.6g} | {float(value):.6g} | {float(bound):.2e} "
            f"| {err:.2e} | {ok} | {ref_bounds[i]:.1e} |"
        )
    return rows


REF_MATVECS = 600  # the float64 reference's budget


def reference(name, which, k) -> tuple[np.ndarray, np.ndarray, int, float]:
    """float64 eigenpairs at the same point, cached (values, bounds, HVPs, seconds)."""
    path = os.path.join(wl.cache_dir(), f"ref64_{os.path.basename(wl.transformer_path(name))}")
    path = path.replace(".npz", f"_{which}{k}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return z["values"], z["bounds"], int(z["hvps"]), float(z["seconds"])
    jax.config.update("jax_enable_x64", True)
    try:
        p64 = wl.transformer_problem(name, jnp.float64)
        op = ht.HessianOperator(p64.loss, p64.params, *p64.args)
        t = time.perf_counter()
        ep = ht.eigenpairs(op, k, which=which, key=7, rtol=1e-9, max_matvecs=REF_MATVECS)
        seconds = time.perf_counter() - t
        values, bounds = np.asarray(ep.values), np.asarray(ep.error_bounds)
        hvps = int(ep.num_matvecs)  # its own bounds are printed beside it, converged or not
    finally:
        jax.config.update("jax_enable_x64", False)
    np.savez(path, values=values, bounds=bounds, hvps=hvps, seconds=seconds)
    return values, bounds, hvps, seconds


def spectra_section(out, problem, name, quick) -> None:
    op = ht.HessianOperator(problem.loss, problem.params, *problem.args)
    t_hvp, t_grad = hvp_vs_grad(problem)
    out.append(
        f"One HVP {t_hvp * 1e3:.1f} ms, one gradient {t_grad * 1e3:.1f} ms: "
        f"**{t_hvp / t_grad:.2f}x** (jitted, median of 5).\n"
    )
    for which, k in (("largest", 10), ("smallest", 5)):
        t = time.perf_counter()
        ep = ht.eigenpairs(op, k, which=which, key=0)
        jax.block_until_ready(ep.values)
        seconds = time.perf_counter() - t
        ref_values, ref_bounds, ref_hvps, ref_s = reference(name, which, k)
        out += [
            f"### {'Top-10' if which == 'largest' else 'Bottom-5'} ({which})\n",
            f"Ours: {int(ep.num_matvecs)} HVPs, {seconds:.1f} s (compilation included), "
            f"converged={bool(ep.converged)}. Reference: float64 `eigenpairs` "
            f"rtol 1e-9, {ref_hvps} float64 HVPs, {ref_s:.0f} s.\n",
            "| i | reference (f64) | ours (f32) | our bound | true error | bound holds | "
            "reference's bound |",
            "|---|---|---|---|---|---|---|",
            *eig_rows(ep, ref_values, ref_bounds),
            "",
        ]
        print("\n".join(out[-k - 5 :]), flush=True)

    t = time.perf_counter()
    est = ht.trace(op, key=0, num_matvecs=100)
    seconds = time.perf_counter() - t
    out.append(
        f"Trace (Krylov, {est.num_matvecs} HVPs): {float(est.value):.5g} "
        f"± {float(est.stderr):.2g} (stderr), {seconds:.1f} s.\n"
    )
    t = time.perf_counter()
    dens = ht.spectral_density(op, key=0, num_matvecs=192 if quick else 384, num_probes=4)
    seconds = time.perf_counter() - t
    out.append(
        f"Spectral density (SLQ, 4 probes, {int(dens.num_matvecs)} HVPs): {seconds:.1f} s; "
        f"mass below 0: {float(dens.cdf(0.0)):.3f}; nodes from "
        f"{float(np.min(dens.nodes)):.3g} to {float(np.max(dens.nodes)):.3g}.\n"
    )
    print("\n".join(out[-2:]), flush=True)


def blocks_child(name: str, quick: bool) -> None:
    """In a fresh process: the block spectra by role, twice (cold, then warm)."""
    problem = wl.transformer_problem(name)
    kwargs = dict(
        blocks=wl.TRANSFORMER_ROLES,
        density=True,
        trace_matvecs=32 if quick else 64,
        density_matvecs=64 if quick else 128,
        key=0,
    )
    times = []
    for _ in range(2):
        t = time.perf_counter()
        blocks = ht.block_spectra(problem.loss, problem.params, *problem.args, **kwargs)
        times.append(time.perf_counter() - t)
    het, _ = ht.block_heterogeneity(blocks)
    rows = [
        dict(
            name=b.name,
            n=b.n,
            top=float(b.values[0]),
            bound=float(b.error_bounds[0]),
            trace=float(b.trace.value),
            stderr=float(b.trace.stderr),
            hvps=int(b.num_matvecs),
        )
        for b in blocks
    ]
    print(json.dumps(dict(cold=times[0], warm=times[1], het=het, rows=rows, rss=peak_rss_mb())))


def blocks_section(out, name, quick) -> None:
    cmd = [sys.executable, os.path.abspath(__file__), "--blocks-child", name]
    cmd += ["--quick"] if quick else []
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    out += [
        "### Block spectra by role (`block_spectra(..., density=True)`)\n",
        f"Fresh process: cold (first call) {r['cold']:.1f} s, warm (same call again) "
        f"{r['warm']:.1f} s; heterogeneity (mean pairwise JS distance) {r['het']:.3f}; "
        f"the child's peak RSS {r['rss']:.0f} MB.\n",
        "| block | n | top eigenvalue | bound | trace ± stderr | HVPs |",
        "|---|---|---|---|---|---|",
        *(
            f"| {b['name']} | {b['n']:,} | {b['top']:.5g} | {b['bound']:.1e} "
            f"| {b['trace']:.4g} ± {b['stderr']:.2g} | {b['hvps']} |"
            for b in r["rows"]
        ),
        "",
    ]
    print("\n".join(out[-len(r["rows"]) - 5 :]), flush=True)


def scale_section(out, spec) -> None:
    """The same architecture at ~10M parameters, at its (random) init."""
    loss, params, rest = wl.transformer_loss(spec)
    tokens = jnp.asarray(wl.transformer_tokens(spec))
    problem = wl.Problem(loss, params, (rest, tokens))
    n = wl.transformer_n(spec)
    t_hvp, t_grad = hvp_vs_grad(problem, reps=3)
    op = ht.HessianOperator(loss, params, rest, tokens)
    t = time.perf_counter()
    ep = ht.eigenpairs(op, 10, key=0)
    jax.block_until_ready(ep.values)
    seconds = time.perf_counter() - t
    m = 30  # eigenpairs' default basis for k = 10
    model_mb = n * 4 / 2**20
    basis_mb = (m + 1) * n * 4 / 2**20
    out += [
        f"### Scale: n = {n:,} (width {spec.width}, depth {spec.depth}, "
        f"{spec.num_seq} x {spec.seq} tokens, random init)\n",
        f"One HVP {t_hvp:.2f} s, one gradient {t_grad:.2f} s: **{t_hvp / t_grad:.2f}x**. "
        f"Top-10: {int(ep.num_matvecs)} HVPs, {seconds:.0f} s, converged={bool(ep.converged)}. "
        f"Peak RSS {peak_rss_mb():.0f} MB against the model {model_mb:.0f} MB plus the "
        f"Krylov basis (m+1)·n = {basis_mb:.0f} MB (sum {model_mb + basis_mb:.0f} MB).\n",
        "| i | eigenvalue | bound |",
        "|---|---|---|",
        *(
            f"| {i + 1} | {float(v):.6g} | {float(b):.1e} |"
            for i, (v, b) in enumerate(zip(ep.values, ep.error_bounds, strict=True))
        ),
        "",
    ]
    print("\n".join(out[-15:]), flush=True)


SCALE = wl.TransformerSpec(
    vocab=256, seq=64, width=512, depth=3, heads=8, num_seq=4, adam_steps=0
)  # n = 9,628,160


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default=None, help="write the markdown here")
    ap.add_argument("--scale", action="store_true", help="add the ~10M-parameter row")
    ap.add_argument("--quick", action="store_true", help="smaller density/trace budgets")
    ap.add_argument("--blocks-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.blocks_child:
        blocks_child(args.blocks_child, args.quick)
        return
    name = "TFM"
    start = time.perf_counter()
    problem = wl.transformer_problem(name)
    spec = wl.TRANSFORMERS[name]
    op = ht.HessianOperator(problem.loss, problem.params, *problem.args)
    loss = float(problem.loss(problem.params, *problem.args))
    out = [
        "# Transformer workload (issue 21)\n",
        f"Command: `PYTHONPATH=. python benchmarks/transformer.py {' '.join(argv or sys.argv[1:])}`"
        f"  \nDate: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f} at the start (on a shared machine absolute "
        f"times are noise; compare ratios within the run); jax {jax.__version__}, Python "
        f"{platform.python_version()}, float32.\n",
        f"Workload: NNX causal transformer, depth {spec.depth}, width {spec.width}, "
        f"{spec.heads} heads, vocabulary {spec.vocab}, {spec.num_seq} x {spec.seq} tokens "
        f"(counting sequences with a random stride, 10% noise tokens), n = {op.n:,}; "
        f"{spec.adam_steps} full-batch Adam steps, loss {loss:.4f}.\n",
    ]
    spectra_section(out, problem, name, args.quick)
    try:  # a failed or interrupted child must not lose the rows above
        blocks_section(out, name, args.quick)
    except subprocess.CalledProcessError as exc:
        out.append(f"Block spectra: the child process failed ({exc}).\n")
    out.append(
        f"Peak RSS of this process (everything above but the blocks): {peak_rss_mb():.0f} MB.\n"
    )
    if args.scale:
        scale_section(out, SCALE)
    out.append(f"Total {time.perf_counter() - start:.0f} s.\n")
    text = "\n".join(out)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
