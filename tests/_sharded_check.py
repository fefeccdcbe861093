"""Run by tests/test_scaling.py in a subprocess with 4 forced CPU devices:
sharded data and sharded parameters give the single-device answers, on a
``jax.make_mesh`` mesh (Explicit axes) and on an Auto one.

Usage: python _sharded_check.py; prints JSON: for each of data/params and
explicit/auto, the single-device reference, the sharded result and facts
about the shardings.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()  # the suite's own flags kept

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

jax.config.update("jax_enable_x64", True)

import hessian_tools as ht


def problem():
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.normal(size=(8, 16)) * 0.4),
        "w2": jnp.asarray(rng.normal(size=(16, 4)) * 0.4),
    }
    return params, jnp.asarray(rng.normal(size=(64, 8))), jnp.asarray(rng.normal(size=(64, 4)))


def plain(p, x, y):
    return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)


def aware(p, x, y):  # explicit mode: contractions over a sharded axis say where to
    h, w2 = jax.sharding.reshard(jnp.tanh(x @ p["w1"]), P()), jax.sharding.reshard(p["w2"], P())
    return jnp.mean((h @ w2 - y) ** 2)


def run(loss, params, x, y):
    """Every algorithm once: the values to compare, the operator, top-5."""
    op = ht.HessianOperator(loss, params, x, y)
    key = jax.random.PRNGKey(0)
    top = ht.eigenpairs(op, 5, method="lanczos", key=key)
    both = ht.eigenpairs(op, 2, which="both", method="lanczos", key=key, max_basis=8)
    d1 = ht.landscape.random_direction(jax.random.PRNGKey(1), params, None, leaves_1d="keep")
    d2 = ht.landscape.random_direction(jax.random.PRNGKey(2), params, None, leaves_1d="keep")
    grid = np.linspace(-0.5, 0.5, 3)
    out = {
        "top": np.asarray(top.values).tolist(),
        "bounds": np.asarray(top.error_bounds).tolist(),
        "both": np.asarray(both.values).tolist(),
        "trace": float(ht.trace(op, key=key, num_matvecs=24).value),
        "density": np.asarray(ht.spectral_density(op, key=key, num_matvecs=40, num_probes=4).nodes)
        .ravel()
        .tolist(),
        "slice": np.asarray(ht.landscape.slice_2d(loss, params, (d1, d2), grid, grid, x, y).values)
        .ravel()
        .tolist(),
        "hvp": np.asarray(op.ravel(op @ jax.tree.map(jnp.ones_like, op.variables))).tolist(),
        "dense": np.asarray(op.to_dense()).ravel().tolist(),
    }
    return out, op, top


def main(what: str, mode: str) -> dict:
    assert len(jax.devices()) == 4
    explicit = mode == "explicit"
    kind = AxisType.Explicit if explicit else AxisType.Auto
    mesh = jax.make_mesh((4,), ("d",), axis_types=(kind,))
    params, x, y = problem()
    loss = aware if explicit and what == "params" else plain
    with jax.set_mesh(mesh):
        if what == "data":
            xs = jax.device_put(x, NamedSharding(mesh, P("d")))
            ys = jax.device_put(y, NamedSharding(mesh, P("d")))
            result, op, top = run(loss, params, xs, ys)
            local = [s.data.shape for s in xs.addressable_shards]
            lm = op.linear_map(linearize=False)
            hlo = jax.jit(lambda lm, v: lm.bind()(v)).lower(lm, op.variables).compile().as_text()
            info = {"local_shapes": local, "all_reduce": "all-reduce" in hlo}
            # 66 samples on 4 devices: 64 sharded plus a replicated remainder of 2
            x66 = jnp.concatenate([x, x[:2] * 0.5])
            y66 = jnp.concatenate([y, y[:2] * 0.5])
            whole = ht.eigenpairs(ht.HessianOperator(loss, params, x66, y66), 3, method="lanczos")
            batches = ht.shard_batches(x66, y66, mesh=mesh, axis="d")
            parts = ht.eigenpairs(
                ht.HessianOperator(loss, params, batches=batches), 3, method="lanczos"
            )
            info["uneven"] = {
                "shapes": [[a.shape for a in b] for b in batches],
                "error": float(np.max(np.abs(np.asarray(whole.values) - np.asarray(parts.values)))),
            }
        else:
            sp = {
                "w1": jax.device_put(params["w1"], NamedSharding(mesh, P(None, "d"))),
                "w2": jax.device_put(params["w2"], NamedSharding(mesh, P("d", None))),
            }
            result, op, top = run(loss, sp, x, y)
            basis = ht.lanczos(op, 6).tree_basis
            info = {
                "vector_specs": {k: str(v.sharding.spec) for k, v in top.tree_vectors.items()},
                "basis_specs": {k: str(v.sharding.spec) for k, v in basis.items()},
                "dense_spec": str(op.to_dense().sharding.spec),
                "basis_local_fraction": sum(
                    v.addressable_shards[0].data.size for v in basis.values()
                )
                / sum(v.size for v in basis.values()),
            }
            # no resharding per step: the compiled solve's loops move no more
            # than the standalone HVP does (before: all-gather x12,
            # all-to-all x3, collective-permute x17 per HVP)
            lm = op.linear_map(linearize=False)
            hvp = jax.jit(lambda lm, v: lm.bind()(v)).lower(lm, op.variables).compile()

            def solve(p):
                o = ht.HessianOperator(loss, p, x, y)
                return ht.eigenpairs(o, 5, method="lanczos", max_matvecs=40).values

            whole = jax.jit(solve).lower(sp).compile()
            info["hvp_moves"] = _moves(hvp.as_text())
            info["loop_moves"] = _moves(whole.as_text(), loops_only=True)
    return {"result": result, "info": info}


_MOVES = ("all-gather", "all-to-all", "collective-permute")


def _moves(hlo: str, loops_only: bool = False) -> dict:
    """Counts of the data-moving collectives in compiled HLO text; with
    ``loops_only``, only those inside while-loop bodies."""
    bodies = set(re.findall(r"body=(%?[\w.\-]+)", hlo))
    counts, comp = dict.fromkeys(_MOVES, 0), None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?(%?[\w.\-]+) .*\{$", line)
        if head:
            comp = head.group(1)
        for op in _MOVES:
            if re.search(rf"\b{op}(?:-start)?\(", line) and (not loops_only or comp in bodies):
                counts[op] += 1
    return counts


if __name__ == "__main__":
    out = {f"{w}-{m}": main(w, m) for w in ("data", "params") for m in ("auto", "explicit")}
    out["reference"] = run(plain, *problem())[0]  # one device, the same problem
    print(json.dumps(out))
