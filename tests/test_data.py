"""The mean over batches (hessian_tools._data): stacking by shape, weights,
the remainder batch, and the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessian_tools._data import Data


def test_fixed_arguments_pass_through():
    data = Data.create((jnp.ones(3), 2.0), None)
    assert not data.batched and data.num_batches == 1
    assert data.mean(lambda x, s: jnp.sum(x) * s) == 6.0


def test_uneven_batches_are_weighted_by_size_in_one_scan_per_shape():
    x = jnp.arange(10.0)
    batches = [(x[:4],), (x[4:8],), (x[8:],)]  # 4, 4, 2 samples: two shape groups
    data = Data.create((), batches)
    assert data.batched and data.sizes == (4, 4, 2) and len(data.groups) == 2
    mean = jax.jit(lambda d: d.mean(lambda b: jnp.mean(b**2)))(data)
    np.testing.assert_allclose(mean, jnp.mean(x**2), rtol=1e-12)
    # pytree outputs are summed leaf by leaf
    out = data.mean(lambda b: {"s": jnp.mean(b), "m": jnp.max(b)})
    np.testing.assert_allclose(out["s"], jnp.mean(x), rtol=1e-12)
    np.testing.assert_allclose(out["m"], 0.4 * 3 + 0.4 * 7 + 0.2 * 9, rtol=1e-12)


def test_shared_arguments_come_first_and_are_not_split():
    x = jnp.arange(6.0)
    data = Data.create((jnp.asarray(10.0),), [(x[:4],), (x[4:],)])
    assert [a.shape for a in data.example_args()] == [(), (4,)]
    mean = data.mean(lambda scale, b: scale * jnp.mean(b))
    np.testing.assert_allclose(mean, 10 * jnp.mean(x), rtol=1e-12)


def test_example_args_have_one_batch_shape():
    data = Data.create((), [(jnp.ones((5, 2)), jnp.zeros(5))] * 3)
    shapes = [a.shape for a in data.example_args()]
    assert shapes == [(5, 2), (5,)]


def test_bad_batches_raise_clear_errors():
    with pytest.raises(ValueError, match="at least one batch"):
        Data.create((), [])
    with pytest.raises(ValueError, match="batch 1 is empty"):
        Data.create((), [(jnp.ones(2),), (jnp.ones(0),)])
    with pytest.raises(TypeError, match="one-shot iterator"):
        Data.create((), ((jnp.ones(2),) for _ in range(2)))
    with pytest.raises(ValueError, match="leading"):
        Data.create((), [(jnp.ones(3), jnp.ones(4))])
    with pytest.raises(ValueError, match="sample"):
        Data.create((), [(2.0,)])
    # a batch given as a single array is one argument
    data = Data.create((), [np.ones(3), np.ones(3)])
    assert data.mean(lambda b: jnp.sum(b)) == 3.0
