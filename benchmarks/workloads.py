"""Benchmark workloads: digits data, tanh MLPs, mean cross-entropy, float32.

Shared by the benchmark driver (``run.py``), the float64 reference process
(``references.py``) and the fresh-process memory runs (``child.py``). The peer
process (``peers.py``, torch) reads the same data and parameters from the
``.npz`` files written here, so every implementation sees identical weights.

Data: scikit-learn's bundled digits (1,797 8x8 images), pixels divided by 16
so that inputs lie in [0, 1], labels one-hot over 10 classes; full batch.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

WORKLOADS = {
    # name: (layer sizes, Adam steps before the benchmark, init seed)
    "small": ((64, 32, 10), 0, 0),
    "W-mid": ((64, 256, 256, 10), 200, 0),
}
ADAM_LR = 1e-3


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model, its data and its parameters (float32, numpy)."""

    name: str
    sizes: tuple[int, ...]
    params: list  # [{"w": (in, out), "b": (out,)}, ...] as numpy float32
    x: np.ndarray  # (N, 64) float32 in [0, 1]
    y: np.ndarray  # (N, 10) float32 one-hot
    adam_steps: int

    @property
    def n(self) -> int:
        return sum(i * o + o for i, o in itertools.pairwise(self.sizes))


def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """Digits inputs scaled to [0, 1] (divided by 16) and one-hot labels, float32."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[data.target]
    return x, y


def init_params(sizes: tuple[int, ...], seed: int) -> list:
    """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights and biases (torch Linear's default)."""
    rng = np.random.default_rng(seed)
    params = []
    for i, o in itertools.pairwise(sizes):
        bound = 1.0 / np.sqrt(i)
        params.append(
            {
                "w": rng.uniform(-bound, bound, (i, o)).astype(np.float32),
                "b": rng.uniform(-bound, bound, (o,)).astype(np.float32),
            }
        )
    return params


def mlp(params, x):
    """tanh MLP; the last layer is linear (logits)."""
    h = x
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            h = jnp.tanh(h)
    return h


def loss(params, x, y):
    """Mean cross-entropy over the batch."""
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(mlp(params, x)), axis=-1))


def adam(params, x, y, steps: int, lr: float = ADAM_LR):
    """``steps`` full-batch Adam steps (beta1=0.9, beta2=0.999, eps=1e-8)."""
    b1, b2, eps = 0.9, 0.999, 1e-8

    @jax.jit
    def step(carry, t):
        p, m, v = carry
        g = jax.grad(loss)(p, x, y)
        m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
        v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
        mh = jax.tree.map(lambda m_: m_ / (1 - b1**t), m)
        vh = jax.tree.map(lambda v_: v_ / (1 - b2**t), v)
        p = jax.tree.map(lambda p_, a, b: p_ - lr * a / (jnp.sqrt(b) + eps), p, mh, vh)
        return (p, m, v), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    ts = jnp.arange(1, steps + 1, dtype=jnp.float32)
    (params, _, _), _ = jax.lax.scan(step, (params, zeros, zeros), ts)
    return params


def cache_dir() -> str:
    """Folder for trained parameters and float64 references (reused across runs)."""
    path = os.environ.get("HT_BENCH_CACHE") or os.path.join(
        tempfile.gettempdir(), "hessian_tools_bench"
    )
    os.makedirs(path, exist_ok=True)
    return path


def params_path(name: str) -> str:
    sizes, steps, seed = WORKLOADS[name]
    tag = "-".join(map(str, sizes))
    return os.path.join(cache_dir(), f"params_{tag}_adam{steps}_seed{seed}.npz")


def save_npz(path: str, params: list, x: np.ndarray, y: np.ndarray) -> None:
    arrays = {"x": x, "y": y}
    for i, layer in enumerate(params):
        arrays[f"w{i}"] = np.asarray(layer["w"], np.float32)
        arrays[f"b{i}"] = np.asarray(layer["b"], np.float32)
    np.savez(path, **arrays)


def load_npz(path: str) -> tuple[list, np.ndarray, np.ndarray]:
    with np.load(path) as z:
        depth = sum(1 for k in z.files if k.startswith("w"))
        params = [{"w": z[f"w{i}"], "b": z[f"b{i}"]} for i in range(depth)]
        return params, z["x"], z["y"]


def get_workload(name: str) -> Workload:
    """The workload's data and parameters, trained (float32) and cached on first use."""
    sizes, steps, seed = WORKLOADS[name]
    path = params_path(name)
    if not os.path.exists(path):
        x, y = load_digits_data()
        params = init_params(sizes, seed)
        if steps:
            p = jax.tree.map(jnp.asarray, params)
            p = adam(p, jnp.asarray(x), jnp.asarray(y), steps)
            params = jax.tree.map(lambda a: np.asarray(a, np.float32), p)
        save_npz(path, params, x, y)
    params, x, y = load_npz(path)
    return Workload(name, sizes, params, x, y, steps)


def as_jax(w: Workload, dtype=jnp.float32):
    """(params, x, y) as JAX arrays of ``dtype``."""
    cast = lambda a: jnp.asarray(a, dtype)
    return jax.tree.map(cast, w.params), cast(w.x), cast(w.y)
