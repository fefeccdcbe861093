"""The library's own ``jit`` (``hessian_tools._compile``): compiler options for
its programs only, the same values as ``jax.jit``, and every way a user may
call it (nested in their jit, vmap, grad)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools import _compile
from hessian_tools._compile import jit


@jit
def _sin2(x):
    return jnp.sin(x) * 2


def test_the_options_apply_on_cpu_only():
    cpu = jax.default_backend() == "cpu"
    assert _compile.compiler_options() == (_compile.CPU_OPTIONS if cpu else {})
    # programs run once per compilation: no backend optimisation either
    assert _compile.compiler_options(True) == (_compile.ONCE_OPTIONS if cpu else {})
    if cpu:
        assert _compile.ONCE_OPTIONS["xla_backend_optimization_level"] == 0


def test_an_option_this_jaxlib_lacks_falls_back_to_none(monkeypatch):
    monkeypatch.setattr(_compile, "CPU_OPTIONS", {"xla_no_such_option_here": True})
    monkeypatch.setattr(_compile, "ONCE_OPTIONS", {"xla_no_such_option_here": True})
    _compile.compiler_options.cache_clear()
    try:
        assert _compile.compiler_options() == {}
        assert _compile.compiler_options(True) == {}
        f = jit(lambda x: x + 1)
        assert float(f(np.float32(1))) == 2.0
        g = jit(lambda x: x + 2, once=True)
        assert float(g(np.float32(1))) == 3.0
    finally:
        _compile.compiler_options.cache_clear()


def test_same_values_as_jax_jit_in_every_context():
    x = np.linspace(0.1, 1.0, 5).astype(np.float32)
    ref = jax.jit(lambda x: jnp.sin(x) * 2)
    np.testing.assert_allclose(_sin2(x), ref(x), rtol=1e-6)
    # inside a user's jit: with traced arguments, and with concrete ones only
    np.testing.assert_allclose(jax.jit(lambda x: _sin2(x) + 1)(x), ref(x) + 1, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda y: _sin2(x) + y)(1.0), ref(x) + 1, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(_sin2)(x), ref(x), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: _sin2(x).sum())(x), 2 * np.cos(x), rtol=1e-5)
    np.testing.assert_allclose(
        jax.jit(jax.grad(lambda x: _sin2(x).sum()))(x), 2 * np.cos(x), rtol=1e-5
    )


def test_a_solve_inside_a_users_jit_and_vmap():
    a = jnp.diag(jnp.arange(1.0, 7.0))
    eager = ht.eigenpairs(a, 1, method="lanczos", key=0).values
    in_jit = jax.jit(lambda a: ht.eigenpairs(a, 1, method="lanczos", key=0).values)(a)
    np.testing.assert_allclose(in_jit, eager, rtol=1e-5)
    stacked = jax.vmap(lambda s: ht.eigenpairs(s * a, 1, method="lanczos", key=0).values)(
        jnp.array([1.0, 2.0])
    )
    np.testing.assert_allclose(stacked[:, 0], [6.0, 12.0], rtol=1e-4)


def test_no_process_wide_setting_changes():
    before = os.environ.get("XLA_FLAGS"), jax.config.jax_compilation_cache_dir
    ht.eigenpairs(jnp.diag(jnp.arange(1.0, 5.0)), 1, method="lanczos", key=0)
    assert (os.environ.get("XLA_FLAGS"), jax.config.jax_compilation_cache_dir) == before


def test_the_wrapper_is_a_jit():
    assert _sin2.__name__ == "_sin2"
    assert float(_sin2.lower(np.float32(0)).compile()(np.float32(0))) == 0.0
    assert hasattr(_sin2, "clear_cache")
    with pytest.raises(AttributeError):
        _ = _sin2.__no_such_dunder__
