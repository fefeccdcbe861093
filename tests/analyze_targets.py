"""Factories for ``hessian-tools analyze`` in the tests (TARGET
``tests/analyze_targets.py:NAME``): a toy saddle whose Hessian is known, and
one factory per error case."""

import jax
import jax.numpy as jnp
import numpy as np

import hessian_tools as ht

#: the toy saddle's Hessian eigenvalues: three negative, twelve positive
CURVATURES = np.concatenate([-np.arange(1.0, 4.0), np.arange(1.0, 13.0)])


def saddle_loss(params, a, c):
    """``0.5 sum a (v - c)^2 + 0.1 sum (v - c)^4`` with v the parameters: a
    critical point at v = c with Hessian diag(a)."""
    v = jnp.concatenate([params["layer"]["kernel"].ravel(), params["layer"]["bias"]])
    return 0.5 * jnp.sum(a * (v - c) ** 2) + 0.1 * jnp.sum((v - c) ** 4)


def toy_saddle():
    """A saddle of index 3 among 15 parameters, a Flax-style dense layer."""
    c = jnp.asarray(np.random.default_rng(0).normal(size=CURVATURES.size))
    params = {"layer": {"kernel": c[:12].reshape(4, 3) + 0.0, "bias": c[12:] + 0.0}}
    return ht.Problem(saddle_loss, params, args=(jnp.asarray(CURVATURES), c), name="toy saddle")


def vector_loss(params):
    return 2.0 * params


def log_loss(params):
    return jnp.sum(jnp.log(params))


def non_scalar():
    return ht.Problem(vector_loss, jnp.ones(3))


def not_finite():
    return ht.Problem(log_loss, -jnp.ones(3))  # log of a negative number: NaN


def wrong_type():
    return {"loss": vector_loss, "params": jnp.ones(3)}


def raises():
    raise RuntimeError("the data folder is missing")


NOT_A_FUNCTION = 3


# --------------------------------------------------------------------------
# Small trained models of two layouts, for looking at the report's figures
# (tests/test_cli.py and docs/api/index.rst's figures use them)


def _digits(n=512):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    dtype = jnp.float64 if jax.config.x64_enabled else jnp.float32
    return jnp.asarray(x[:n] / 16.0, dtype), jnp.asarray(y[:n])


def _cross_entropy(logits, y):
    picked = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


def _trained(loss, params, args, steps, lr=0.05):
    import optax

    opt = optax.adam(lr)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params, *args)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params


def flax_cnn(steps=30):
    """A Flax Linen CNN (two 3x3 convolutions, HWIO kernels, and a dense
    head; 3,194 parameters) trained briefly on 512 digits."""
    import flax.linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3))(x))
            x = nn.relu(nn.Conv(8, (3, 3), strides=2)(x))
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    x, y = _digits()
    x = x.reshape(-1, 8, 8, 1)
    model = CNN()
    params = model.init(jax.random.PRNGKey(0), x[:1])["params"]

    def loss(params, x, y):
        return _cross_entropy(model.apply({"params": params}, x), y)

    params = _trained(loss, params, (x, y), steps)
    return ht.Problem(loss, params, args=(x, y), name="Flax CNN on digits")


def _haiku_logits(params, x):
    h = jnp.tanh(x @ params["mlp/~/linear_0"]["w"] + params["mlp/~/linear_0"]["b"][None])
    return h @ params["mlp/~/linear_1"]["w"] + params["mlp/~/linear_1"]["b"][None]


def haiku_loss(params, x, y):
    return _cross_entropy(_haiku_logits(params, x), y)


def haiku_mlp(steps=40):
    """A Haiku-style dict model (``w`` is (in, out), names that do not tell
    the layout: the filter axes are read from the model), a 64-32-10 tanh
    MLP trained briefly."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    x, y = _digits()
    params = {
        "mlp/~/linear_0": {
            "w": jax.random.normal(k1, (64, 32), x.dtype) / 8,
            "b": jnp.zeros(32, x.dtype),
        },
        "mlp/~/linear_1": {
            "w": jax.random.normal(k2, (32, 10), x.dtype) / 6,
            "b": jnp.zeros(10, x.dtype),
        },
    }
    params = _trained(haiku_loss, params, (x, y), steps)
    return ht.Problem(haiku_loss, params, args=(x, y), name="Haiku-style MLP")
