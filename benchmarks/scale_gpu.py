"""Scale-out figures for an accelerator (issue 11): one prepared script.

Run it on a machine with a GPU, from the repository root:

    python benchmarks/scale_gpu.py --output benchmarks/RESULTS_gpu_scale.md

It measures, on the 85k-parameter W-mid MLP (64-256-256-10 tanh on digits)
and on a wide MLP with about 10M parameters on synthetic data
(512-2048-2048-2048-10 GELU, 8,192 samples):

* one HVP against one gradient (jitted, median of repeats);
* the top-10 eigenvalues at default settings, with their certified bounds
  and the HVPs spent;
* the trace (Krylov, 100 HVPs) with its stderr;
* the spectral density (SLQ, 4 probes x 48 steps) and its negative fraction;
* the device's peak memory against n * (m + 1) numbers, the size of the
  Lanczos basis (m = 30, eigenpairs' default for k = 10).

float32 matmuls run at "highest" precision (JAX defaults to TF32 on NVIDIA
GPUs, which limits the HVP to ~1e-4 relative accuracy). ``--small`` shrinks
the wide model to run the script on a CPU as a check.

Transformer rows (issue 21): the same Flax NNX causal transformer as
``benchmarks/transformer.py`` (``workloads.TRANSFORMERS``), at three sizes:
the benchmark workload (n = 163,520, trained by 300 Adam steps), and two
random-init scale variants, n ~ 10M (width 512, depth 3) and n ~ 101M
(width 1024, depth 8, vocabulary 1024, 16 x 128 tokens). ``--smoke``
replaces all the sizes by tiny ones (and implies ``--small``) so that the
script is known to run, on a CPU, in a few minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import hessian_tools as ht

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads as wl
from _timing import timed

#: the transformer's scale variants (random init), by name
TRANSFORMER_SCALE = {
    "10M": wl.TransformerSpec(
        vocab=256, seq=64, width=512, depth=3, heads=8, num_seq=4, adam_steps=0
    ),
    "100M": wl.TransformerSpec(
        vocab=1024, seq=128, width=1024, depth=8, heads=16, num_seq=16, adam_steps=0
    ),
}
TRANSFORMER_SMOKE = wl.TransformerSpec(
    vocab=16, seq=8, width=16, depth=1, heads=2, num_seq=4, adam_steps=0
)


def mlp(key, sizes, dtype=jnp.float32):
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, (a, b) in zip(keys, itertools.pairwise(sizes), strict=True):
        params.append(
            {"w": jax.random.normal(k, (a, b), dtype) / np.sqrt(a), "b": jnp.zeros((b,), dtype)}
        )
    return params


def make_loss(act):
    def loss(params, x, y):
        h = x
        for layer in params[:-1]:
            h = act(h @ layer["w"] + layer["b"])
        logits = h @ params[-1]["w"] + params[-1]["b"]
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=-1))

    return loss


def transformer_workloads(smoke: bool):
    """The transformer rows: (name, loss, params, (rest, tokens))."""
    if smoke:
        named = [("smoke", TRANSFORMER_SMOKE), ("smoke, twice as deep", TRANSFORMER_SMOKE)]
        named[1] = (named[1][0], dataclasses.replace(TRANSFORMER_SMOKE, depth=2))
    else:
        p = wl.transformer_problem("TFM")
        spec = wl.TRANSFORMERS["TFM"]
        yield _tfm_name("TFM, trained", spec), p.loss, p.params, p.args
        named = list(TRANSFORMER_SCALE.items())
    for label, spec in named:
        loss, params, rest = wl.transformer_loss(spec)
        tokens = jnp.asarray(wl.transformer_tokens(spec))
        yield _tfm_name(label, spec), loss, params, (rest, tokens)


def _tfm_name(label, spec):
    return (
        f"NNX transformer {label} (width {spec.width}, depth {spec.depth}, "
        f"{spec.num_seq}x{spec.seq} tokens)"
    )


def workloads(small: bool):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = jnp.asarray(digits.data / 16.0, jnp.float32)
    y = jax.nn.one_hot(digits.target, 10, dtype=jnp.float32)
    yield (
        "W-mid MLP 64-256-256-10 tanh (digits)",
        make_loss(jnp.tanh),
        mlp(jax.random.PRNGKey(0), (64, 256, 256, 10)),
        (x, y),
    )
    width, depth, samples = (256, 2, 512) if small else (2048, 3, 8192)
    sizes = (512, *([width] * depth), 10)
    kx, ky, kp = jax.random.split(jax.random.PRNGKey(1), 3)
    xs = jax.random.normal(kx, (samples, 512), jnp.float32)
    ys = jax.nn.one_hot(jax.random.randint(ky, (samples,), 0, 10), 10, dtype=jnp.float32)
    name = f"wide MLP {'-'.join(map(str, sizes))} GELU (synthetic, {samples} samples)"
    yield name, make_loss(jax.nn.gelu), mlp(kp, sizes), (xs, ys)


def peak_bytes() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def measure(name, loss, params, args) -> dict:
    op = ht.HessianOperator(loss, params, *args)
    n = op.n
    v = jax.tree.map(jnp.ones_like, op.variables)
    grad = jax.jit(jax.grad(loss))
    lm = op.linear_map()
    hvp = jax.jit(lambda lm, v: lm.bind()(v))
    t_grad = timed(lambda: grad(params, *args))
    t_hvp = timed(lambda: hvp(lm, v))
    row = {"name": name, "n": n, "grad_ms": 1e3 * t_grad, "hvp_ms": 1e3 * t_hvp}

    t0 = time.perf_counter()
    top = ht.eigenpairs(op, 10, key=jax.random.PRNGKey(0))
    jax.block_until_ready(top.values)
    row["top10"] = {
        "seconds": time.perf_counter() - t0,
        "hvps": int(top.num_matvecs),
        "largest": float(top.values[0]),
        "max_bound": float(jnp.max(top.error_bounds)),
        "converged": bool(top.converged),
        "basis": 30 + 1,  # eigenpairs' default max_basis for k = 10, plus the residual
    }
    t0 = time.perf_counter()
    tr = ht.trace(op, key=jax.random.PRNGKey(1), num_matvecs=100)
    row["trace"] = {
        "seconds": time.perf_counter() - t0,
        "value": float(tr.value),
        "stderr": float(tr.stderr),
    }
    t0 = time.perf_counter()
    dens = ht.spectral_density(op, key=jax.random.PRNGKey(2), num_matvecs=48, num_probes=4)
    row["density"] = {
        "seconds": time.perf_counter() - t0,
        "negative_fraction": float(dens.negative_fraction()[0]),
        "hvps": 4 * 48,
    }
    row["peak_bytes"] = peak_bytes()
    return row


def report(rows, seconds) -> str:
    dev = jax.devices()[0]
    out = [
        "# hessian_tools scale-out figures on an accelerator",
        "",
        f"Written by `python benchmarks/scale_gpu.py` on "
        f"{datetime.datetime.now():%Y-%m-%d %H:%M} in {seconds / 60:.1f} min; "
        f"device {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}, "
        f"Python {platform.python_version()}; float32, matmul precision 'highest'.",
        "",
        "| workload | n | gradient (ms) | HVP (ms) | HVP / gradient |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['name']} | {r['n']:,} | {r['grad_ms']:.3g} | {r['hvp_ms']:.3g} | "
            f"{r['hvp_ms'] / r['grad_ms']:.2f} |"
        )
    out += [
        "",
        "| workload | top-10 (s) | HVPs | λ_max | max bound | converged | trace ± stderr "
        "(100 HVPs, s) | density: negative fraction (192 HVPs, s) | peak memory | "
        "basis n·(m+1)·4 B |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t, tr, d = r["top10"], r["trace"], r["density"]
        peak = "—" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:,.0f} MiB"
        basis = r["n"] * t["basis"] * 4 / 2**20
        out.append(
            f"| {r['name']} | {t['seconds']:.3g} | {t['hvps']} | {t['largest']:.6g} | "
            f"{t['max_bound']:.1e} | {t['converged']} | {tr['value']:.5g} ± {tr['stderr']:.2g} "
            f"({tr['seconds']:.3g}) | {d['negative_fraction']:.3f} ({d['seconds']:.3g}) | "
            f"{peak} | {basis:,.1f} MiB |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/RESULTS_gpu_scale.md")
    parser.add_argument("--small", action="store_true", help="a small wide model (CPU check)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes everywhere (a CPU check in minutes)"
    )
    parser.add_argument("--no-transformer", action="store_true", help="the MLP rows only")
    opts = parser.parse_args()
    t0 = time.perf_counter()
    with jax.default_matmul_precision("highest"):
        rows = [measure(*w) for w in workloads(opts.small or opts.smoke)]
        if not opts.no_transformer:
            rows += [measure(*w) for w in transformer_workloads(opts.smoke)]
    text = report(rows, time.perf_counter() - t0)
    with open(opts.output, "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
