"""Benchmark workloads: digits data, three model families, mean cross-entropy, float32.

Shared by the benchmark driver (``run.py``), the float64 reference process
(``references.py``) and the fresh-process memory runs (``child.py``). The peer
process (``peers.py``, torch) reads the same data and parameters from the
``.npz`` files written here, so every implementation sees identical weights.
This module imports only numpy and JAX at the top (the peer venv has no Flax
or Equinox); the model libraries are imported where a workload needs them.

Data: scikit-learn's bundled digits (1,797 8x8 images), pixels divided by 16
so that inputs lie in [0, 1], labels one-hot over 10 classes; full batch.

Models (``Spec.kind``):

* ``"mlp"``: tanh MLP as a list of ``{"w": (in, out), "b": (out,)}`` dicts.
* ``"eqx-mlp"``: the same function as an ``equinox.nn.MLP``, passed to
  hessian_tools whole (its activation functions are non-array leaves).
* ``"nnx-cnn"``: a Flax NNX CNN, conv(3x3)-BatchNorm-relu twice, a 2x2 average
  pool, then dense; BatchNorm in eval mode. ``nnx.split(model, nnx.Param,
  nnx.BatchStat)``: the Params are the variables, the running statistics go
  to the loss as an argument (data, held fixed).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import tempfile
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Spec:
    kind: str  # "mlp", "eqx-mlp", "nnx-cnn"
    sizes: tuple[int, ...]  # MLP layer sizes; for the CNN (conv channels..., classes)
    adam_steps: int  # full-batch Adam steps before the benchmark
    seed: int  # init seed
    lr: float = 1e-3


WORKLOADS = {
    "W-mid": Spec("mlp", (64, 256, 256, 10), 200, 0),
    "small": Spec("mlp", (64, 32, 10), 0, 0),
    "CNN": Spec("nnx-cnn", (8, 8, 10), 200, 0),
    "eqx-MLP": Spec("eqx-mlp", (64, 64, 10), 200, 0),
}
#: workloads whose float64 reference is the dense Hessian (n HVPs) + eigh
DENSE_REFERENCE = ("small", "CNN", "eqx-MLP")
BN_EPS = 1e-5  # NNX's and torch's BatchNorm default epsilon
BN_MOMENTUM = 0.9  # running statistics settle within the 200 training steps


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model, its data and its parameters (float32 numpy arrays, by npz name)."""

    name: str
    spec: Spec
    arrays: dict  # weights by npz name (see save_npz), float32
    x: np.ndarray  # (N, 64) float32 in [0, 1]
    y: np.ndarray  # (N, 10) float32 one-hot

    @property
    def n(self) -> int:
        return int(sum(a.size for k, a in self.arrays.items() if not _is_statistic(k)))

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def adam_steps(self) -> int:
        return self.spec.adam_steps

    def describe(self) -> str:
        s = self.spec
        if s.adam_steps:
            trained = f"after {s.adam_steps} full-batch Adam steps (lr {s.lr:g})"
        else:
            trained = "at init"
        if s.kind == "nnx-cnn":
            c1, c2, out = s.sizes
            model = (
                f"Flax NNX CNN conv3x3(1->{c1})-BN-relu, conv3x3({c1}->{c2})-BN-relu, "
                f"avg-pool 2x2, dense({16 * c2}->{out}); BN in eval mode, its statistics "
                "passed to the loss as an argument"
            )
        elif s.kind == "eqx-mlp":
            model = (
                f"equinox.nn.MLP {'-'.join(map(str, s.sizes))} tanh, the eqx.Module whole as params"
            )
        else:
            model = f"MLP {'-'.join(map(str, s.sizes))} tanh (list of dicts)"
        return f"{model}, n = {self.n:,}, {trained}, init seed {s.seed}"


def _is_statistic(key: str) -> bool:
    return key.endswith("_mean") or key.endswith("_var")


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


# ---------------------------------------------------------------------------
# MLP (list of dicts)


def mlp(params, x):
    """tanh MLP; the last layer is linear (logits)."""
    h = x
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            h = jnp.tanh(h)
    return h


def cross_entropy(logits, y):
    """Mean cross-entropy over the batch (y one-hot)."""
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=-1))


def loss(params, x, y):
    """Mean cross-entropy of the MLP over the batch."""
    return cross_entropy(mlp(params, x), y)


def mlp_layers(arrays: dict) -> list:
    depth = sum(1 for k in arrays if k.startswith("w"))
    return [{"w": arrays[f"w{i}"], "b": arrays[f"b{i}"]} for i in range(depth)]


# ---------------------------------------------------------------------------
# Equinox MLP (the module whole as params)


def eqx_loss(model, x, y):
    """Mean cross-entropy of an ``equinox.nn.MLP`` (applied per sample)."""
    return cross_entropy(jax.vmap(model)(x), y)


def eqx_model(spec: Spec, arrays: dict | None = None, dtype=jnp.float32):
    """The ``equinox.nn.MLP`` of ``spec`` (Equinox's own init), with ``arrays``'
    weights when given (npz layout: ``w`` is (in, out), Equinox's is (out, in))."""
    import equinox as eqx

    sizes = spec.sizes
    if len(set(sizes[1:-1])) > 1:
        raise ValueError("equinox.nn.MLP has one hidden width")
    model = eqx.nn.MLP(
        sizes[0],
        sizes[-1],
        sizes[1],
        len(sizes) - 2,
        activation=jnp.tanh,
        key=jax.random.PRNGKey(spec.seed),
    )
    if arrays is not None:
        layers = mlp_layers(arrays)
        weights = [jnp.asarray(p["w"].T, dtype) for p in layers]
        biases = [jnp.asarray(p["b"], dtype) for p in layers]
        model = eqx.tree_at(
            lambda m: [lin.weight for lin in m.layers] + [lin.bias for lin in m.layers],
            model,
            weights + biases,
        )
    return model


def eqx_arrays(model) -> dict:
    out = {}
    for i, layer in enumerate(model.layers):
        out[f"w{i}"] = np.asarray(layer.weight, np.float32).T.copy()
        out[f"b{i}"] = np.asarray(layer.bias, np.float32)
    return out


# ---------------------------------------------------------------------------
# Flax NNX CNN (BatchNorm statistics as an argument)


@functools.cache
def cnn_class():
    """The NNX module class (defined once, so graph definitions compare equal)."""
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, c1: int, c2: int, classes: int, rngs: nnx.Rngs):
            self.conv0 = nnx.Conv(1, c1, (3, 3), rngs=rngs)
            self.bn0 = nnx.BatchNorm(c1, momentum=BN_MOMENTUM, epsilon=BN_EPS, rngs=rngs)
            self.conv1 = nnx.Conv(c1, c2, (3, 3), rngs=rngs)
            self.bn1 = nnx.BatchNorm(c2, momentum=BN_MOMENTUM, epsilon=BN_EPS, rngs=rngs)
            self.dense = nnx.Linear(16 * c2, classes, rngs=rngs)

        def __call__(self, x):  # x: (N, 8, 8, 1), NHWC
            h = nnx.relu(self.bn0(self.conv0(x)))
            h = nnx.relu(self.bn1(self.conv1(h)))
            h = nnx.avg_pool(h, (2, 2), strides=(2, 2))
            return self.dense(h.reshape(h.shape[0], -1))  # flattened in (h, w, c) order

    return CNN


def images(x):
    """(N, 64) digits as (N, 8, 8, 1) NHWC images."""
    return x.reshape(x.shape[0], 8, 8, 1)


@functools.cache
def _cnn_graphdefs(spec: Spec):
    """(module, train graphdef, eval graphdef) of the spec's CNN at init."""
    from flax import nnx

    c1, c2, classes = spec.sizes
    model = cnn_class()(c1, c2, classes, nnx.Rngs(spec.seed))
    model.train()
    train_def = nnx.split(model, nnx.Param, nnx.BatchStat)[0]
    model.eval()
    eval_def = nnx.split(model, nnx.Param, nnx.BatchStat)[0]
    return model, train_def, eval_def


@functools.cache
def cnn_loss(spec: Spec) -> Callable:
    """``loss(params, stats, x, y)`` in eval mode: one function object per spec,
    so every operator for this model reuses the compiled solvers."""
    from flax import nnx

    eval_def = _cnn_graphdefs(spec)[2]

    def loss_fn(params, stats, x, y):
        return cross_entropy(nnx.merge(eval_def, params, stats)(images(x)), y)

    return loss_fn


_CNN_LAYERS = ("conv0", "bn0", "conv1", "bn1", "dense")
_CNN_LEAVES = {"conv": ("kernel", "bias"), "bn": ("scale", "bias", "mean", "var")}


def _cnn_leaves(layer: str) -> tuple[str, ...]:
    return _CNN_LEAVES["bn"] if layer.startswith("bn") else _CNN_LEAVES["conv"]


def cnn_state(spec: Spec, arrays: dict | None = None, dtype=jnp.float32):
    """(params, stats): NNX States of the CNN's Params and BatchStats, set
    from ``arrays`` (npz names ``conv0_kernel``, ``bn0_mean``, ...) if given."""
    from flax import nnx

    model = _cnn_graphdefs(spec)[0]
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    if arrays is not None:
        for layer in _CNN_LAYERS:
            for leaf in _cnn_leaves(layer):
                state = stats if leaf in ("mean", "var") else params
                state[layer][leaf].set_value(jnp.asarray(arrays[f"{layer}_{leaf}"], dtype))
    cast = lambda a: jnp.asarray(a, dtype)
    return jax.tree.map(cast, params), jax.tree.map(cast, stats)


def cnn_arrays(params, stats) -> dict:
    out = {}
    for layer in _CNN_LAYERS:
        for leaf in _cnn_leaves(layer):
            state = stats if leaf in ("mean", "var") else params
            out[f"{layer}_{leaf}"] = np.asarray(state[layer][leaf].get_value(), np.float32)
    return out


def _train_cnn(spec: Spec, x, y):
    """Full-batch Adam in train mode (batch statistics; the running ones follow)."""
    from flax import nnx

    _, train_def, _ = _cnn_graphdefs(spec)
    params, stats = cnn_state(spec)

    def train_loss(p, s):
        model = nnx.merge(train_def, p, s, copy=True)
        value = cross_entropy(model(images(x)), y)
        return value, nnx.state(model, nnx.BatchStat)

    params, stats = adam(train_loss, params, stats, spec.adam_steps, spec.lr, python_loop=True)
    return cnn_arrays(params, stats)


# ---------------------------------------------------------------------------
# Training, the cache, and the JAX view of a workload


def adam(loss_and_aux, params, aux, steps: int, lr: float, *, python_loop: bool = False):
    """``steps`` full-batch Adam steps (beta1=0.9, beta2=0.999, eps=1e-8) on
    ``loss_and_aux(params, aux) -> (loss, new aux)``, in one ``lax.scan``, or
    one jitted step at a time with ``python_loop`` (for convolutions: XLA's
    CPU backend runs their backward pass slowly inside a loop body, see
    ``hessian_tools._operator.schedule``; 28 s instead of 283 s here)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    grad = jax.grad(loss_and_aux, has_aux=True)

    @jax.jit
    def step(carry, t):
        p, a, m, v = carry
        g, a = grad(p, a)
        m = jax.tree.map(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
        v = jax.tree.map(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
        mh = jax.tree.map(lambda m_: m_ / (1 - b1**t), m)
        vh = jax.tree.map(lambda v_: v_ / (1 - b2**t), v)
        p = jax.tree.map(lambda p_, a_, b_: p_ - lr * a_ / (jnp.sqrt(b_) + eps), p, mh, vh)
        return (p, a, m, v), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    carry = (params, aux, zeros, zeros)
    if python_loop:
        for t in range(1, steps + 1):
            carry, _ = step(carry, jnp.float32(t))
    else:
        carry, _ = jax.lax.scan(step, carry, jnp.arange(1, steps + 1, dtype=jnp.float32))
    return carry[0], carry[1]


def _train_mlp(layers: list, x, y, spec: Spec) -> list:
    if not spec.adam_steps:
        return layers
    p = jax.tree.map(jnp.asarray, layers)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    p, _ = adam(lambda q, a: (loss(q, xj, yj), a), p, (), spec.adam_steps, spec.lr)
    return jax.tree.map(lambda a: np.asarray(a, np.float32), p)


def cache_dir() -> str:
    """Folder for trained parameters and float64 references (reused across runs)."""
    path = os.environ.get("HT_BENCH_CACHE") or os.path.join(
        tempfile.gettempdir(), "hessian_tools_bench"
    )
    os.makedirs(path, exist_ok=True)
    return path


def params_path(name: str) -> str:
    spec = WORKLOADS[name]
    tag = "-".join(map(str, spec.sizes))
    kind = "" if spec.kind == "mlp" else f"{spec.kind}_"
    lr = "" if spec.lr == 1e-3 else f"_lr{spec.lr:g}"
    return os.path.join(
        cache_dir(), f"params_{kind}{tag}_adam{spec.adam_steps}{lr}_seed{spec.seed}.npz"
    )


def save_npz(path: str, arrays: dict, x: np.ndarray, y: np.ndarray) -> None:
    np.savez(path, x=x, y=y, **{k: np.asarray(v, np.float32) for k, v in arrays.items()})


def load_npz(path: str) -> tuple[dict, np.ndarray, np.ndarray]:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k not in ("x", "y")}
        return arrays, z["x"], z["y"]


def _train(spec: Spec, x, y) -> dict:
    if spec.kind == "nnx-cnn":
        return _train_cnn(spec, jnp.asarray(x), jnp.asarray(y))
    if spec.kind == "eqx-mlp":
        start = mlp_layers(eqx_arrays(eqx_model(spec)))  # Equinox's own init
    else:
        start = init_params(spec.sizes, spec.seed)
    layers = _train_mlp(start, x, y, spec)
    return {f"{k}{i}": p[k] for i, p in enumerate(layers) for k in ("w", "b")}


def get_workload(name: str) -> Workload:
    """The workload's data and parameters, trained (float32) and cached on first use."""
    spec = WORKLOADS[name]
    path = params_path(name)
    if not os.path.exists(path):
        x, y = load_digits_data()
        tmp = path + ".tmp.npz"
        save_npz(tmp, _train(spec, x, y), x, y)
        os.replace(tmp, path)
    arrays, x, y = load_npz(path)
    return Workload(name, spec, arrays, x, y)


@dataclasses.dataclass(frozen=True)
class Problem:
    """What hessian_tools is handed: ``HessianOperator(loss, params, *args)``."""

    loss: Callable
    params: object
    args: tuple


def problem(w: Workload, dtype=jnp.float32) -> Problem:
    """The workload as JAX objects of ``dtype``: loss, params (the pytree the
    user passes) and the loss's other arguments."""
    cast = lambda a: jnp.asarray(a, dtype)
    x, y = cast(w.x), cast(w.y)
    if w.kind == "nnx-cnn":
        params, stats = cnn_state(w.spec, w.arrays, dtype)
        return Problem(cnn_loss(w.spec), params, (stats, x, y))
    if w.kind == "eqx-mlp":
        return Problem(eqx_loss, eqx_model(w.spec, w.arrays, dtype), (x, y))
    return Problem(loss, jax.tree.map(cast, mlp_layers(w.arrays)), (x, y))


def as_jax(w: Workload, dtype=jnp.float32):
    """(params, x, y) of an MLP workload as JAX arrays of ``dtype``."""
    p = problem(w, dtype)
    if w.kind != "mlp":
        raise ValueError(f"as_jax is for the list-of-dicts MLPs; use problem() for {w.name}")
    return (p.params, *p.args)


# --------------------------------------------------------------------------
# A small causal transformer (plain JAX) on random tokens, for the bounds
# benchmark (bounds.py): one pre-norm block, 2 heads, n = 2,672


def transformer(dtype=jnp.float32, softmax_dtype=None, seed: int = 0) -> Problem:
    """Next-token cross-entropy of a one-block causal transformer (vocab 12,
    sequence 8, width 16, 2 heads, MLP 32; 16 random sequences), params drawn
    in float32 and cast to ``dtype`` (so every dtype sees the same point).
    ``softmax_dtype``: the attention softmax in that dtype, cast back (as
    ``jax.nn.dot_product_attention`` and Flax attention compute it)."""
    vocab, seq, width, hidden, heads = 12, 8, 16, 32, 2
    rng = np.random.default_rng(seed)

    def w(*shape, scale=None):
        scale = 1 / np.sqrt(shape[0]) if scale is None else scale
        return jnp.asarray(rng.normal(size=shape).astype(np.float32) * scale, dtype)

    params = {
        "embed": w(vocab, width, scale=1.0),
        "pos": w(seq, width, scale=0.5),
        "ln1": {"g": 1 + w(width, scale=0.1), "b": w(width, scale=0.1)},
        "qkv": w(width, 3 * width),
        "out": w(width, width),
        "ln2": {"g": 1 + w(width, scale=0.1), "b": w(width, scale=0.1)},
        "mlp": {"w1": w(width, hidden), "b1": w(hidden, scale=0.1), "w2": w(hidden, width)},
        "head": w(width, vocab),
    }
    tokens = jnp.asarray(rng.integers(0, vocab, (16, seq + 1)))

    def norm(x, p):
        mu = jnp.mean(x, -1, keepdims=True)
        var = jnp.mean((x - mu) ** 2, -1, keepdims=True)
        return (x - mu) / jnp.sqrt(var + 1e-5) * p["g"] + p["b"]

    def loss(params, tokens):
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        h = params["embed"][inputs] + params["pos"][None]
        x = norm(h, params["ln1"])
        q, k, v = (t.reshape(*t.shape[:2], heads, -1) for t in jnp.split(x @ params["qkv"], 3, -1))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(width // heads)
        scores = jnp.where(np.tril(np.ones((seq, seq), bool)), scores, -1e9)
        if softmax_dtype is None:
            att = jax.nn.softmax(scores, axis=-1)
        else:
            att = jax.nn.softmax(scores.astype(softmax_dtype), axis=-1).astype(scores.dtype)
        h = h + jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(h.shape) @ params["out"]
        x = norm(h, params["ln2"])
        m = params["mlp"]
        h = h + jnp.tanh(x @ m["w1"] + m["b1"]) @ m["w2"]
        logp = jax.nn.log_softmax(h @ params["head"])
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1))

    return Problem(loss, params, (tokens,))


# ---------------------------------------------------------------------------
# A Flax NNX causal transformer on structured synthetic tokens (issue 21):
# the transformer benchmark (transformer.py), its scale rows (scale_gpu.py)
# and tests/test_transformer.py


@dataclasses.dataclass(frozen=True)
class TransformerSpec:
    """A pre-norm decoder (GPT-style): token and position embeddings, ``depth``
    blocks of causal multi-head attention and a GELU MLP (``4 * width``),
    a final LayerNorm, and the output tied to the token embedding."""

    vocab: int
    seq: int  # tokens per sequence (inputs; the data holds seq + 1)
    width: int
    depth: int
    heads: int
    num_seq: int  # sequences in the (full) batch
    adam_steps: int
    lr: float = 3e-3
    seed: int = 0


TRANSFORMERS = {
    # the benchmark workload, n = 163,520
    "TFM": TransformerSpec(
        vocab=64, seq=32, width=80, depth=2, heads=4, num_seq=32, adam_steps=300
    ),
    # small enough for a dense float64 Hessian in a test, n = 2,148
    "TFM-tiny": TransformerSpec(
        vocab=12, seq=8, width=12, depth=1, heads=2, num_seq=16, adam_steps=100
    ),
}


def transformer_n(spec: TransformerSpec) -> int:
    w = spec.width
    block = 4 * (w * w + w) + (w * 4 * w + 4 * w) + (4 * w * w + w) + 4 * w
    return spec.vocab * w + spec.seq * w + spec.depth * block + 2 * w


def transformer_module(spec: TransformerSpec, dtype=jnp.float32):
    """The NNX module, initialised from ``spec.seed`` (param_dtype ``dtype``)."""
    from flax import nnx

    w = spec.width

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.norm1 = nnx.LayerNorm(w, param_dtype=dtype, dtype=dtype, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(
                num_heads=spec.heads, in_features=w, decode=False,
                param_dtype=dtype, dtype=dtype, rngs=rngs,
            )  # fmt: skip
            self.norm2 = nnx.LayerNorm(w, param_dtype=dtype, dtype=dtype, rngs=rngs)
            self.mlp_in = nnx.Linear(w, 4 * w, param_dtype=dtype, dtype=dtype, rngs=rngs)
            self.mlp_out = nnx.Linear(4 * w, w, param_dtype=dtype, dtype=dtype, rngs=rngs)

        def __call__(self, h, mask):
            h = h + self.attn(self.norm1(h), mask=mask)
            return h + self.mlp_out(nnx.gelu(self.mlp_in(self.norm2(h))))

    class Transformer(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(spec.vocab, w, param_dtype=dtype, dtype=dtype, rngs=rngs)
            self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (spec.seq, w), dtype))
            self.blocks = nnx.List([Block(rngs) for _ in range(spec.depth)])
            self.norm = nnx.LayerNorm(w, param_dtype=dtype, dtype=dtype, rngs=rngs)

        def __call__(self, tokens):
            h = self.embed(tokens) + self.pos[...][None, : tokens.shape[-1]]
            mask = nnx.make_causal_mask(tokens)
            for block in self.blocks:
                h = block(h, mask)
            return self.embed.attend(self.norm(h))

    return Transformer(nnx.Rngs(spec.seed))


def transformer_tokens(spec: TransformerSpec) -> np.ndarray:
    """(num_seq, seq + 1) int32 tokens with structure a model can learn:
    each sequence counts up from a random start by a random stride (1-3)
    modulo the vocabulary, and 10% of the tokens are replaced by random
    ones (so the loss has a floor and the Hessian no exact zero curvature
    from a perfect fit)."""
    rng = np.random.default_rng(1000 + spec.seed)
    start = rng.integers(0, spec.vocab, (spec.num_seq, 1))
    stride = rng.integers(1, 4, (spec.num_seq, 1))
    tokens = (start + stride * np.arange(spec.seq + 1)) % spec.vocab
    noise = rng.random(tokens.shape) < 0.1
    tokens[noise] = rng.integers(0, spec.vocab, int(noise.sum()))
    return tokens.astype(np.int32)


def transformer_loss(spec: TransformerSpec, dtype=jnp.float32) -> tuple[Callable, object, object]:
    """``(loss, params, rest)``: ``loss(params, rest, tokens)`` is the mean
    next-token cross-entropy; params are the NNX ``Param`` state (initial
    values), rest everything else."""
    from flax import nnx

    graphdef, params, rest = nnx.split(transformer_module(spec, dtype), nnx.Param, ...)

    def loss(params, rest, tokens):
        logits = nnx.merge(graphdef, params, rest)(tokens[:, :-1])
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1))

    return loss, params, rest


def transformer_path(name: str) -> str:
    s = TRANSFORMERS[name]
    tag = f"v{s.vocab}_t{s.seq}_w{s.width}_d{s.depth}_h{s.heads}_b{s.num_seq}"
    return os.path.join(
        cache_dir(), f"params_nnx-tfm_{tag}_adam{s.adam_steps}_lr{s.lr:g}_seed{s.seed}.npz"
    )


def transformer_problem(name: str, dtype=jnp.float32, *, cache: bool = True) -> Problem:
    """The transformer workload near a minimum: ``spec.adam_steps`` full-batch
    Adam steps from the NNX init (trained in float32 and cached by the leaf
    key paths; cast to ``dtype`` after, so every dtype sees the same point)."""
    spec = TRANSFORMERS[name]
    loss, params, rest = transformer_loss(spec, jnp.float32)
    tokens = jnp.asarray(transformer_tokens(spec))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [jax.tree_util.keystr(path) for path, _ in leaves]
    path = transformer_path(name)
    if cache and os.path.exists(path):
        with np.load(path) as z:
            values = [z[f"a{i}"] for i in range(len(names))]
    else:
        trained, _ = adam(
            lambda p, a: (loss(p, rest, tokens), a), params, (), spec.adam_steps, spec.lr
        )
        values = [np.asarray(a, np.float32) for a in jax.tree.leaves(trained)]
        if cache:
            tmp = path + ".tmp.npz"
            np.savez(tmp, **{f"a{i}": v for i, v in enumerate(values)})
            os.replace(tmp, path)
    params = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(v, dtype) for v in values])
    if dtype != jnp.float32:
        loss, _, rest = transformer_loss(spec, dtype)
    return Problem(loss, params, (rest, tokens))


#: key-path patterns of the transformer's parameter roles (Zhang et al. 2024)
TRANSFORMER_ROLES = {
    "embeddings": r"\['embed'\]|\['pos'\]",
    "Q": r"\['query'\]",
    "K": r"\['key'\]",
    "V": r"\['value'\]",
    "O": r"\['out'\]",
    "MLP": r"mlp_",
    "norms": r"norm",
}
