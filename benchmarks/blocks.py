"""Per-block spectra: compiled programs, cost per block, cold against warm.

``python benchmarks/blocks.py`` prints three figures (issue 20, part 2):

* **compiles**: XLA compilations (``jax_log_compiles``) of
  ``block_spectra`` on a digits MLP (64-64-64-10 tanh, n = 8,970), one
  block per leaf, in fresh processes: 2 blocks against 6 blocks, and the
  compilations of blocks 3-6 once blocks 1-2 have run;
* **cost**: on the same MLP and on the NNX transformer below, each block
  after the first (its first computation, in one process) against its
  HVPs' time: ``time / (num_matvecs x t_hvp)``, with ``t_hvp`` a standalone
  jitted HVP of the block (``jax.jit`` of ``ht.hvp(..., wrt=block)``,
  median of 15), and of the whole Hessian;
* **study**: a per-block study of a one-layer Flax NNX transformer
  (``nnx.MultiHeadAttention``, n = 59,456, 12 blocks by default grouping)
  in a fresh process: the first run (cold) against the second (warm).

Each figure runs in its own fresh process (``child``). Absolute times on
a shared 2-core machine are noise; read the ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BLOCK_KW = {"k": 1, "trace_matvecs": 100}


# --------------------------------------------------------------------------
# Workloads


def mlp_problem():
    """A digits MLP 64-64-64-10 (tanh) at its initialisation, 1,797 samples."""
    import jax.numpy as jnp

    sys.path.insert(0, HERE)
    import workloads as wl

    x, y = wl.load_digits_data()
    params = [
        {k: jnp.asarray(v) for k, v in layer.items()}
        for layer in wl.init_params((64, 64, 64, 10), 0)
    ]
    return wl.loss, params, (jnp.asarray(x), jnp.asarray(y))


_TRANSFORMER = {}


def transformer_problem():
    """A one-layer pre-norm causal transformer in Flax NNX (vocab 64, width
    64, 4 heads, MLP 256, 16 tokens, 32 sequences), its ``nnx.Param`` state
    as params."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    if "cls" not in _TRANSFORMER:

        class Block(nnx.Module):
            def __init__(self, vocab, width, heads, hidden, seq, rngs):
                self.embed = nnx.Embed(vocab, width, rngs=rngs)
                self.pos = nnx.Param(jax.random.normal(rngs.params(), (seq, width)) * 0.1)
                self.ln1 = nnx.LayerNorm(width, rngs=rngs)
                self.attn = nnx.MultiHeadAttention(
                    heads, width, qkv_features=width, decode=False, rngs=rngs
                )
                self.ln2 = nnx.LayerNorm(width, rngs=rngs)
                self.mlp1 = nnx.Linear(width, hidden, rngs=rngs)
                self.mlp2 = nnx.Linear(hidden, width, rngs=rngs)
                self.lnf = nnx.LayerNorm(width, rngs=rngs)
                self.head = nnx.Linear(width, vocab, use_bias=False, rngs=rngs)

            def __call__(self, tokens):
                seq = tokens.shape[1]
                h = self.embed(tokens) + self.pos[...][None, :seq]
                mask = nnx.make_causal_mask(tokens)
                h = h + self.attn(self.ln1(h), mask=mask)
                h = h + self.mlp2(jnp.tanh(self.mlp1(self.ln2(h))))
                return self.head(self.lnf(h))

        _TRANSFORMER["cls"] = Block
    model = _TRANSFORMER["cls"](64, 64, 4, 256, 16, nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(params, tokens):
        logits = nnx.merge(graphdef, params, copy=True)(tokens[:, :-1])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))

    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (32, 17)))
    return loss, params, (tokens,)


PROBLEMS = {"mlp": mlp_problem, "transformer": transformer_problem}


# --------------------------------------------------------------------------
# Measurements (each in a fresh process)


class _Compiles(logging.Handler):
    count = 0

    def emit(self, record):
        if record.getMessage().startswith("Finished XLA compilation"):
            self.count += 1


def _count_compiles():
    import jax

    jax.config.update("jax_log_compiles", True)
    handler = _Compiles()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return handler


def _blocks(problem, params):
    """The MLP: one block per leaf (6); the transformer: one per layer (12)."""
    import jax

    from hessian_tools.blocks import default_blocks

    if problem == "mlp":
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        return {p: (lambda path, p=p: path == p) for p in paths}
    return default_blocks(params)


def child_compiles(problem: str, first: int, then: int) -> dict:
    """Compilations of ``block_spectra`` over the first ``first`` blocks,
    then over the next ``then`` blocks, in this (fresh) process."""
    import jax

    import hessian_tools as ht

    f, params, args = PROBLEMS[problem]()
    blocks = list(_blocks(problem, params).items())
    handler = _count_compiles()
    out = ht.block_spectra(f, params, *args, blocks=dict(blocks[:first]), **BLOCK_KW)
    jax.block_until_ready([b.values for b in out])
    c1 = handler.count
    if then:
        out = ht.block_spectra(
            f, params, *args, blocks=dict(blocks[first : first + then]), **BLOCK_KW
        )
        jax.block_until_ready([b.values for b in out])
    return {"first": c1, "then": handler.count - c1, "blocks": [b[0] for b in blocks]}


def _hvp_time(f, params, args, wrt):
    import functools

    import jax

    import hessian_tools as ht

    op = ht.HessianOperator(f, params, *args, wrt=wrt)
    v = op.unravel(jax.random.normal(jax.random.PRNGKey(3), (op.n,), op.dtype))
    fn = jax.jit(functools.partial(ht.hvp, f, wrt=wrt))
    from _timing import timed

    return timed(lambda: fn(params, v, *args), reps=15)


def child_cost(problem: str) -> dict:
    """Each block's first computation (after a first block has run) against
    its HVPs' time."""
    import jax

    import hessian_tools as ht

    f, params, args = PROBLEMS[problem]()
    blocks = list(_blocks(problem, params).items())
    t_full = _hvp_time(f, params, args, None)
    rows = []
    for i, (name, sel) in enumerate(blocks):
        t0 = time.perf_counter()
        out = ht.block_spectra(f, params, *args, blocks={name: sel}, **BLOCK_KW)
        jax.block_until_ready(out[0].values)
        elapsed = time.perf_counter() - t0
        if i == 0:
            continue
        t_block = _hvp_time(f, params, args, sel)
        hvps = out[0].num_matvecs
        rows.append(
            {
                "name": name,
                "n": out[0].n,
                "hvps": hvps,
                "seconds": elapsed,
                "vs_block_hvp": elapsed / (hvps * t_block),
                "vs_full_hvp": elapsed / (hvps * t_full),
            }
        )
    return {"t_full_hvp_ms": 1e3 * t_full, "rows": rows}


def child_study(problem: str) -> dict:
    """The whole per-block study three times in this fresh process: cold,
    the second call (which compiles the optimised finiteness check: the first
    check of a loss compiles a cheap one, ``_hessian.checked_value_and_grad``)
    and the third (everything compiled)."""
    import jax

    import hessian_tools as ht

    t0 = time.perf_counter()
    f, params, args = PROBLEMS[problem]()
    setup = time.perf_counter() - t0
    times, hvps = [], 0
    for _ in range(3):
        t0 = time.perf_counter()
        out = ht.block_spectra(f, params, *args, **BLOCK_KW)
        jax.block_until_ready([b.values for b in out])
        times.append(time.perf_counter() - t0)
        hvps = sum(b.num_matvecs for b in out)
    n = sum(b.n for b in out)
    return {
        "setup": setup,
        "cold": times[0],
        "warm": times[1],
        "third": times[2],
        "blocks": len(out),
        "hvps": hvps,
        "n": n,
    }


def _run_child(*argv: str) -> dict:
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, __file__, "child", *argv], capture_output=True, text=True, env=env
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="*", default=["compiles", "cost", "study"])
    ns = parser.parse_args()
    if ns.what and ns.what[0] == "child":
        kind, problem, *rest = ns.what[1:]
        fn = {"compiles": child_compiles, "cost": child_cost, "study": child_study}[kind]
        print(json.dumps(fn(problem, *map(int, rest))))
        return
    import jax

    import hessian_tools as ht

    print(f"# benchmarks/blocks.py — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    cpu = platform.processor() or platform.machine()
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {cpu}")
    print(f"jax {jax.__version__}, hessian_tools from {os.path.dirname(ht.__file__)}")
    print(f"block_spectra settings: {BLOCK_KW}\n")
    if "compiles" in ns.what:
        two = _run_child("compiles", "mlp", "2", "0")
        six = _run_child("compiles", "mlp", "6", "0")
        later = _run_child("compiles", "mlp", "2", "4")
        print("## Compiled programs (digits MLP, one block per leaf)\n")
        print(f"blocks: {six['blocks']}")
        print(f"- block_spectra over 2 blocks (fresh process): {two['first']} compilations")
        print(f"- block_spectra over 6 blocks (fresh process): {six['first']} compilations")
        print(f"- blocks 3-6 after blocks 1-2 in one process: {later['then']} more\n")
    if "cost" in ns.what:
        for problem in ("mlp", "transformer"):
            res = _run_child("cost", problem)
            full = res["t_full_hvp_ms"]
            print(f"## Cost per block after the first ({problem}; full HVP {full:.2f} ms)\n")
            print("| block | n | HVPs | time (s) | / (HVPs x block HVP) | / (HVPs x full HVP) |")
            print("|---|---:|---:|---:|---:|---:|")
            for r in res["rows"]:
                print(
                    f"| {r['name']} | {r['n']} | {r['hvps']} | {r['seconds']:.3f} | "
                    f"{r['vs_block_hvp']:.2f} | {r['vs_full_hvp']:.2f} |"
                )
            worst = max(r["vs_block_hvp"] for r in res["rows"])
            med = statistics.median(r["vs_block_hvp"] for r in res["rows"])
            print(f"\nmedian {med:.2f}x, worst {worst:.2f}x its HVPs' time (target <= 1.3x)\n")
    if "study" in ns.what:
        res = _run_child("study", "transformer")
        print("## Per-block study of the NNX transformer (fresh process)\n")
        print(
            f"n = {res['n']:,}, {res['blocks']} blocks, {res['hvps']} HVPs: "
            f"cold {res['cold']:.1f} s, "
            f"warm {res['warm']:.2f} s, cold/warm {res['cold'] / res['warm']:.1f}x (target <= 2x); "
            f"a third call {res['third']:.2f} s, cold/third {res['cold'] / res['third']:.1f}x"
        )


if __name__ == "__main__":
    main()
