"""shard_batches on this process's devices (one CPU device here; the
4-device and two-process checks are in test_scaling.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht


def _loss(p, x, y):
    return jnp.mean((jnp.tanh(x @ p["w"]) - y) ** 2)


def test_one_device_gives_one_batch_with_the_mean_over_all_samples():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 2))
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)))}
    batches = ht.shard_batches(x, y)
    assert len(batches) == 1 and batches[0][0].shape == (10, 3)
    v = {"w": jnp.ones((3, 2))}
    whole = ht.HessianOperator(_loss, params, jnp.asarray(x), jnp.asarray(y)) @ v
    parts = ht.HessianOperator(_loss, params, batches=batches) @ v
    np.testing.assert_allclose(parts["w"], whole["w"], rtol=1e-6)


def test_bad_input_names_the_problem():
    x = np.zeros((6, 2))
    with pytest.raises(ValueError, match="at least one array"):
        ht.shard_batches()
    with pytest.raises(ValueError, match=r"sample count \(axis 0\); got \[5, 6\]"):
        ht.shard_batches(x, np.zeros((5, 1)))
    mesh = jax.make_mesh((1,), ("batch",))
    with pytest.raises(ValueError, match="axis named 'data'"):
        ht.shard_batches(x, mesh=mesh)
