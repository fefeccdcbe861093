"""One of two processes on 127.0.0.1 (gloo collectives), each holding half
of the data; run by tests/test_scaling.py. Process 0 prints the top-5
eigenvalues, the trace and a 2-D slice as JSON.

Usage: python _multiprocess_check.py PROCESS_ID PORT; python
_multiprocess_check.py pair (both processes on a free port, process 0's
output and both statuses); or python _multiprocess_check.py reference (one
process, all the data).
"""

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()  # the suite's own flags kept

import json

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")

import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import hessian_tools as ht


def problem():
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.normal(size=(8, 16)) * 0.4),
        "w2": jnp.asarray(rng.normal(size=(16, 4)) * 0.4),
    }
    return params, rng.normal(size=(64, 8)), rng.normal(size=(64, 4))


def loss(p, x, y):
    return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)


def measure(params, x, y) -> dict:
    op = ht.HessianOperator(loss, params, x, y)
    key = jax.random.PRNGKey(0)
    top = ht.eigenpairs(op, 5, method="lanczos", key=key)
    d1 = ht.landscape.random_direction(jax.random.PRNGKey(1), params, None, leaves_1d="keep")
    d2 = ht.landscape.random_direction(jax.random.PRNGKey(2), params, None, leaves_1d="keep")
    grid = np.linspace(-0.5, 0.5, 3)
    s = ht.landscape.slice_2d(loss, params, (d1, d2), grid, grid, x, y)
    return {
        "top": np.asarray(top.values).tolist(),
        "trace": float(ht.trace(op, key=key, num_matvecs=24).value),
        "slice": np.asarray(s.values).ravel().tolist(),
    }


def main(pid: int, port: int) -> None:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    assert jax.process_count() == 2 and len(jax.devices()) == 4
    params, x, y = problem()
    mesh = jax.make_mesh((4,), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    half = slice(32 * pid, 32 * (pid + 1))  # this process's samples only
    xs = jax.make_array_from_process_local_data(sharding, x[half])
    ys = jax.make_array_from_process_local_data(sharding, y[half])
    with jax.set_mesh(mesh):
        out = measure(params, xs, ys)
    if pid == 0:
        print(json.dumps(out), flush=True)
    jax.distributed.shutdown()


def pair() -> dict:
    """Both processes on a free port: process 0's output and both statuses."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    me = [sys.executable, os.path.abspath(__file__)]
    run = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with subprocess.Popen([*me, "1", port], **run) as worker:
        try:
            lead = subprocess.run([*me, "0", port], timeout=600, **run)
            _, worker_err = worker.communicate(timeout=120)
        finally:
            worker.kill()
    lines = lead.stdout.strip().splitlines()
    return {
        "lead": lead.returncode,
        "worker": worker.returncode,
        "stderr": lead.stderr[-3000:] + worker_err[-3000:],
        "result": json.loads(lines[-1]) if lead.returncode == 0 and lines else None,
    }


if __name__ == "__main__":
    if sys.argv[1] == "reference":
        print(json.dumps(measure(*problem())), flush=True)
    elif sys.argv[1] == "pair":
        print(json.dumps(pair()), flush=True)
    else:
        main(int(sys.argv[1]), int(sys.argv[2]))
