"""Shared test helpers: matrices with a given spectrum, float64 references,
the MLPs used across the suite, and trace and compilation counters for
compile-reuse tests."""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def sym_with_spectrum(w, seed=0, dtype=np.float64):
    """Symmetric matrix with eigenvalues ``w`` and Haar-random eigenvectors."""
    w = np.asarray(w, np.float64)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(len(w), len(w))))
    return jnp.asarray((q * w) @ q.T, dtype)


def select_reference(w, k, which):
    """The k wanted values of ascending ``w`` in the library's order."""
    w = np.sort(np.asarray(w, np.float64))
    if which == "largest":
        return w[::-1][:k]
    if which == "smallest":
        return w[:k]
    top = (k + 1) // 2
    return np.concatenate([w[: k - top], w[len(w) - top :]])


def eigh_reference(a, k, which):
    return select_reference(np.linalg.eigvalsh(np.asarray(a, np.float64)), k, which)


def dense_reference(f, params, *args):
    """The float64 Hessian of ``f`` by ``jax.hessian`` (the independent
    reference), as one compiled program per loss and shapes: run eagerly,
    its forward-over-reverse dispatches (and compiles) hundreds of
    single-operation programs, 10x slower."""
    to64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    return np.asarray(_hessian64(f, to64(params), *to64(args)))


@functools.partial(jax.jit, static_argnums=0)
def _hessian64(f, params, *args):
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda z: f(unravel(z), *args))(flat)


def nested_params(n, seed=0):
    """A nested dict of n parameters: a (4, 5) matrix and a vector."""
    rng = np.random.default_rng(seed)
    return {
        "layer": {"w": jnp.asarray(rng.normal(size=(4, 5)) * 0.3)},
        "b": jnp.asarray(rng.normal(size=n - 20) * 0.3),
    }


def flatten_nested(p):
    return jnp.concatenate([p["layer"]["w"].ravel(), p["b"]])


def quad_loss(p, a):
    """``x^T A x / 2`` of the flattened nested params: Hessian A."""
    x = flatten_nested(p)
    return 0.5 * x @ (a @ x)


def quartic_loss(p, a):
    """A non-quadratic loss on nested params (Hessian depends on the point)."""
    x = flatten_nested(p)
    return 0.5 * x @ (a @ x) + 0.25 * jnp.sum(x**4)


class TraceCounter:
    """Wraps a loss and counts how often JAX traces it (each compilation of
    a new program traces it again; a cached program does not)."""

    def __init__(self, f):
        self.f, self.count = f, 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.f(*args, **kwargs)

    def __hash__(self):
        return id(self)


# --------------------------------------------------------------------------
# MLPs on digits-shaped data (uniform inputs, random labels: no download)

MLP_SIZES = (64, 256, 256, 10)  # n = 85,002: the size of the loop guards


def mlp_loss(params, x, y):
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w + b[None, :]
        if i < len(params) - 1:
            h = jnp.tanh(h)
    return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(h), -1))


def mlp_problem(sizes=MLP_SIZES, samples=1797, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(0, 1, (samples, sizes[0])), dtype)
    y = jax.nn.one_hot(jnp.asarray(rng.integers(0, sizes[-1], samples)), sizes[-1], dtype=dtype)
    params = []
    for i, o in itertools.pairwise(sizes):
        b = 1 / np.sqrt(i)
        params.append(
            (
                jnp.asarray(rng.uniform(-b, b, (i, o)), dtype),
                jnp.asarray(rng.uniform(-b, b, o), dtype),
            )
        )
    return params, x, y


# --------------------------------------------------------------------------
# A small regression MLP on a nested pytree (dicts, a tuple and a scalar leaf)


def nested_mlp_loss(params, x, y):
    """Mean squared error of a 3-4-2 tanh MLP whose output bias is scaled by
    the scalar leaf ``params["scale"]``."""
    h = jnp.tanh(x @ params["layers"][0]["w"] + params["layers"][0]["b"][None, :])
    out = h @ params["layers"][1]["w"] + params["scale"] * params["layers"][1]["b"][None, :]
    return jnp.mean((out - y) ** 2)


def nested_mlp_problem(key, dtype=jnp.float64, n_samples=9):
    """``(params, x, y)`` for ``nested_mlp_loss``: n = 27 parameters."""
    k = jax.random.split(key, 6)
    params = {
        "layers": (
            {
                "w": jax.random.normal(k[0], (3, 4), dtype),
                "b": jax.random.normal(k[1], (4,), dtype),
            },
            {
                "w": jax.random.normal(k[2], (4, 2), dtype),
                "b": jax.random.normal(k[3], (2,), dtype),
            },
        ),
        "scale": jnp.asarray(0.7, dtype),
    }
    x = jax.random.normal(k[4], (n_samples, 3), dtype)
    y = jax.random.normal(k[5], (n_samples, 2), dtype)
    return params, x, y


# --------------------------------------------------------------------------
# Starts for the 2-D toy problems


def grid_starts(bounds, num):
    """A num x num grid of starts over ``bounds = ((x0, x1), (y0, y1))``,
    rows of constant y (meshgrid order), as a (num^2, 2) array."""
    (x0, x1), (y0, y1) = bounds
    xs, ys = np.meshgrid(np.linspace(x0, x1, num), np.linspace(y0, y1, num))
    return jnp.asarray(np.stack([xs.ravel(), ys.ravel()], axis=1))


def inside(x, bounds, slack=1e-6):
    """Whether the point x lies in the box ``bounds`` (up to ``slack``)."""
    return all(lo - slack <= xi <= hi + slack for xi, (lo, hi) in zip(x, bounds, strict=True))


# --------------------------------------------------------------------------
# A loss on a small pytree with two directions, for directions and slices


def asym_loss(p, a):
    """Asymmetric in every coordinate: swapping x and y changes the value."""
    w, b = p["w"], p["b"]
    return jnp.sum(a * w**2) + w[0, 1] ** 3 + jnp.sum(jnp.sin(b)) + 0.3 * w[1, 2] * b[0]


def asym_problem():
    """``(params, a, d1, d2)`` for ``asym_loss``: a point, its data and two
    non-orthogonal directions, all pytrees ``{"w": (2, 3), "b": (3,)}``."""
    params = {"w": jnp.arange(6.0).reshape(2, 3) / 3 - 0.5, "b": jnp.array([0.2, -0.4, 0.7])}
    a = jnp.arange(1.0, 7.0).reshape(2, 3)
    d1 = {"w": jnp.array([[1.0, 0.0, 0.5], [0.0, -1.0, 0.0]]), "b": jnp.array([0.0, 1.0, 0.0])}
    d2 = {"w": jnp.array([[0.0, 2.0, 0.0], [0.3, 0.0, 1.0]]), "b": jnp.array([1.0, 0.0, -0.5])}
    return params, a, d1, d2


def at(params, coefs, dirs):
    """``params + sum_i coefs[i] * dirs[i]`` on pytrees."""
    out = params
    for c, d in zip(coefs, dirs, strict=True):
        out = jax.tree.map(lambda p, v, c=c: p + c * v, out, d)
    return out


# --------------------------------------------------------------------------
# A tiny causal transformer (plain JAX): embeddings, causal attention with
# layernorm, an MLP block, next-token cross-entropy


def transformer_problem(
    vocab=8, seq=6, width=8, heads=2, hidden=16, samples=12, seed=0, dtype=jnp.float64
):
    """``(params, tokens)`` for ``transformer_loss``: one pre-norm block, n =
    744 with the defaults (2,672 for width 16, hidden 32, vocab 12, seq 8)."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=None):
        scale = 1 / np.sqrt(shape[0]) if scale is None else scale
        return jnp.asarray(rng.normal(size=shape) * scale, dtype)

    params = {
        "embed": w(vocab, width, scale=1.0),
        "pos": w(seq, width, scale=0.5),
        "ln1": {"g": jnp.ones(width, dtype) + w(width, scale=0.1), "b": w(width, scale=0.1)},
        "qkv": w(width, 3 * width),
        "out": w(width, width),
        "ln2": {"g": jnp.ones(width, dtype) + w(width, scale=0.1), "b": w(width, scale=0.1)},
        "mlp": {"w1": w(width, hidden), "b1": w(hidden, scale=0.1), "w2": w(hidden, width)},
        "head": w(width, vocab),
    }
    del heads  # static: pass it to transformer_loss
    tokens = jnp.asarray(rng.integers(0, vocab, (samples, seq + 1)))
    return params, tokens


def _layernorm(x, p):
    mu = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean((x - mu) ** 2, -1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-5) * p["g"][None, None] + p["b"][None, None]


def transformer_loss(params, tokens, heads=2, softmax_dtype=None):
    """Next-token cross-entropy of a one-block causal transformer.

    ``softmax_dtype``: compute the attention softmax in this dtype (e.g.
    float32 inside a float64 model, as ``jax.nn.dot_product_attention`` and
    Flax attention do), casting back afterwards.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    seq = inputs.shape[1]
    h = params["embed"][inputs] + params["pos"][None, :seq]
    width = h.shape[-1]
    x = _layernorm(h, params["ln1"])
    q, k, v = jnp.split(x @ params["qkv"], 3, axis=-1)
    split = lambda t: t.reshape(t.shape[0], seq, heads, width // heads)
    q, k, v = split(q), split(k), split(v)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(width // heads)
    causal = np.tril(np.ones((seq, seq), bool))
    scores = jnp.where(causal, scores, -1e9)
    if softmax_dtype is None:
        att = jax.nn.softmax(scores, axis=-1)
    else:
        att = jax.nn.softmax(scores.astype(softmax_dtype), axis=-1).astype(scores.dtype)
    mixed = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(h.shape)
    h = h + mixed @ params["out"]
    x = _layernorm(h, params["ln2"])
    m = params["mlp"]
    h = h + jnp.tanh(x @ m["w1"] + m["b1"][None, None]) @ m["w2"]
    logits = h @ params["head"]
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1))


class _Compilations(logging.Handler):
    """Counts XLA compilations (``jax_log_compiles``) of programs whose name
    contains ``name`` (every program for "")."""

    def __init__(self, name: str = ""):
        super().__init__()
        self.name, self.count = name, 0

    def emit(self, record):
        message = record.getMessage()
        self.count += message.startswith("Finished XLA compilation") and self.name in message


@contextlib.contextmanager
def counting_compilations(name: str = ""):
    """Within it, ``handler.count`` counts XLA compilations (those whose
    program name contains ``name``), in any thread."""
    handler, logger = _Compilations(name), logging.getLogger("jax")
    level, propagate = logger.level, logger.propagate
    logged = jax.config.jax_log_compiles
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    jax.config.update("jax_log_compiles", True)
    try:
        yield handler
    finally:
        jax.config.update("jax_log_compiles", logged)
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
