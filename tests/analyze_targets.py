"""Factories for ``hessian-tools analyze`` in the tests (TARGET
``tests/analyze_targets.py:NAME``): a toy saddle whose Hessian is known, and
one factory per error case."""

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
