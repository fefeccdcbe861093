"""The library's own ``jit`` (``hessian_tools._compile``): compiler options for
its programs only, the same values as ``jax.jit``, and every way a user may
call it (nested in their jit, vmap, grad)."""

import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import counting_compilations

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


_LAPACK_SCRIPT = """
import sys, threading
import jax.numpy as jnp
import hessian_tools as ht
assert "scipy.linalg" not in sys.modules
op = ht.HessianOperator(lambda w: jnp.sum(w ** 4), jnp.arange(3.0))
for t in threading.enumerate():
    if t.name == "hessian_tools-lapack":
        t.join()
print("scipy.linalg.cython_lapack" in sys.modules)
"""


def test_an_operator_prepares_lapack_for_the_solvers():
    # a fresh process: jaxlib's LAPACK wrappers imported in the background
    # while the operator's check runs, before any program with an eigh
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", _LAPACK_SCRIPT], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"


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


# --------------------------------------------------------------------------
# Tiers: a solver program's first use compiled fast, the optimised one aside


@pytest.fixture
def tiers(monkeypatch):
    """Tiers on (the suite turns them off: conftest.py), on CPU."""
    if jax.default_backend() != "cpu":
        pytest.skip("the tiers apply on CPU only (compiler_options)")
    monkeypatch.setattr(_compile, "TIERS", True)
    assert _compile.tiers_apply()


def _programs(tiered):
    """Compiled programs of each tier: (fast-compiled, optimised)."""
    return tiered._cheap._get()._cache_size(), tiered._plain._get()._cache_size()


def _state(tiered, *args, **kwargs):
    state = tiered._states.get(_compile._signature(args, kwargs))
    return "pending" if isinstance(state, threading.Thread) else state


def test_tiers_first_use_fast_second_compiles_aside_then_optimised(tiers):
    f = jit(lambda x, *, scale: jnp.cumsum(jnp.sin(x)) * scale, tiered=True)
    x = np.linspace(0.0, 1.0, 7)
    want = np.cumsum(np.sin(x)) * 3
    np.testing.assert_allclose(f(x, scale=3, use="cheap"), want, rtol=1e-12)
    assert _programs(f) == (1, 0) and _state(f, x, scale=3) == "cheap"
    # a further run of the same call (use=None) stays in its tier
    np.testing.assert_allclose(f(x, scale=3, use=None), want, rtol=1e-12)
    assert _programs(f) == (1, 0)
    # the second use runs the fast-compiled program while the optimised one
    # compiles in a thread; the uses after it run that one, compiled once
    np.testing.assert_allclose(f(x, scale=3, use="cheap"), want, rtol=1e-12)
    assert _state(f, x, scale=3) == "pending"
    f._states[_compile._signature((x,), {"scale": 3})].join()
    np.testing.assert_allclose(f(x, scale=3, use="cheap"), want, rtol=1e-12)
    assert _state(f, x, scale=3) == "full" and _programs(f) == (1, 1)
    # other shapes and static settings are other programs, with tiers of their own
    assert _state(f, x[:3], scale=3) is None and _state(f, x, scale=2) is None
    np.testing.assert_allclose(f(x[:3], scale=2, use="cheap"), want[:3] / 1.5, rtol=1e-12)
    assert _programs(f) == (2, 1)


def test_tiers_a_long_use_compiles_or_waits_for_the_optimised_program(tiers):
    f = jit(lambda x: jnp.cos(x) + 1, tiered=True)
    x = np.linspace(0.0, 1.0, 5)
    f(x, use="full")  # predicted long (or unknown): never the fast-compiled one
    assert _programs(f) == (0, 1) and _state(f, x) == "full"
    g = jit(lambda x: jnp.cos(x) + 2, tiered=True)
    g(x, use="cheap")
    g(x, use="cheap")  # compiling aside
    assert _state(g, x) in ("pending", "full")  # "full": it finished already
    np.testing.assert_allclose(g(x, use="full"), np.cos(x) + 2, rtol=1e-12)
    assert _state(g, x) == "full" and _programs(g) == (1, 1)
    h = jit(lambda x: jnp.cos(x) + 3, tiered=True)
    h(x, use="cheap")
    h(x, use="full")  # a long second use: the optimised program, compiled here
    assert _state(h, x) == "full" and _programs(h) == (1, 1)


def test_a_prefetched_program_compiles_aside_and_its_call_waits_for_it(tiers):
    def tan_plus_one(x):
        return jnp.tan(x) + 1

    f = jit(tan_plus_one, tiered=True)
    x = np.linspace(0.0, 1.0, 6)
    with counting_compilations("tan_plus_one") as handler:
        f.prefetch(x)
        assert _state(f, x) == "pending" and _programs(f) == (0, 0)
        f.prefetch(x)  # known: nothing more
        f._states[_compile._signature((x,), {})].join()
        assert handler.count == 1  # compiled in the background
        np.testing.assert_allclose(f(x, use="full"), np.tan(x) + 1, rtol=1e-12)
        f(x, use="full")
    assert handler.count == 1  # the calls ran that program: no compilation of their own
    assert _state(f, x) == "full" and _programs(f) == (0, 1)
    # nothing inside another trace, nor where tiers do not apply
    jax.jit(lambda y: f.prefetch(y) or y)(x)
    with jax.disable_jit():
        f.prefetch(x[:2])
    assert _state(f, x[:2]) is None and len(f._states) == 1


def test_block_spectra_prefetches_its_trace_program(tiers):
    from _util import mlp_loss, mlp_problem

    from hessian_tools import _deflation, _driver

    params, x, y = mlp_problem((8, 10, 12, 9, 3), samples=30, seed=4, dtype=jnp.float64)

    def loss(p, x, y):  # a new loss: new programs
        return mlp_loss(p, x, y)

    blocks = {"w0": r"^\[0\]\[0\]", "w1": r"^\[1\]\[0\]"}
    prefetched = []
    original = _driver._compiled.prefetch
    _driver._compiled.prefetch = lambda *a, **kw: prefetched.append(kw) or original(*a, **kw)
    try:
        with counting_compilations("_compiled") as solvers:
            got = ht.block_spectra(loss, params, x, y, blocks=blocks, trace_matvecs=40)
            _compile.wait_for_compilations()
    finally:
        del _driver._compiled.prefetch
    assert [kw["algorithm"] for kw in prefetched] == [_deflation._krylov_trace]
    # one solver program: the trace's, prefetched, then run (a second would
    # mean the call missed it; these small blocks' eigenpairs are dense)
    assert solvers.count == 1
    _compile.TIERS = False
    want = ht.block_spectra(loss, params, x, y, blocks=blocks, trace_matvecs=40)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.trace.value, b.trace.value, rtol=1e-10)
        np.testing.assert_allclose(a.values, b.values, rtol=1e-10)


def test_tiers_off_with_the_persistent_cache_and_inside_a_trace(tiers, tmp_path):
    f = jit(lambda x: x * 2, tiered=True)
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    try:  # a program compiled once per machine: the optimised one
        assert not _compile.tiers_apply()
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
    assert _compile.tiers_apply()
    with jax.disable_jit():
        assert not _compile.tiers_apply()
        np.testing.assert_allclose(f(np.arange(3.0), use="cheap"), np.arange(3.0) * 2)
    x = np.arange(3.0)
    np.testing.assert_allclose(jax.jit(lambda y: f(y, use="cheap") + 1)(x), x * 2 + 1)
    assert _programs(f)[0] == 0 and f._states == {}


def test_tier_of_use_weighs_the_predicted_run():
    assert _compile.tier_of_use(60, None) == "full"  # unknown cost
    assert _compile.tier_of_use(60, 0.01) == "cheap"  # 0.6 s
    assert _compile.tier_of_use(240, 0.01) == "full"  # 2.4 s: the slower run costs more
    limit = _compile.CHEAP_RUN_SECONDS
    assert _compile.tier_of_use(10, limit / 10) == "cheap"
    assert _compile.tier_of_use(11, limit / 10) == "full"


def test_tiers_of_a_hessian_solve_hold_its_bounds(tiers):
    from _util import dense_reference, nested_mlp_loss, nested_mlp_problem

    from hessian_tools import _driver

    params, x, y = nested_mlp_problem(jax.random.PRNGKey(5), jnp.float64)

    def loss(p, x, y):  # a new loss: its first check in this process
        return nested_mlp_loss(p, x, y)

    op = ht.HessianOperator(loss, params, x, y)
    seconds = op._product_seconds()  # the check's program, run again and timed
    assert seconds is not None and 0 < seconds < 1 and op._product_seconds() == seconds
    assert ht.HessianOperator(loss, params, x, y, check_finite=False)._product_seconds() == seconds
    w = np.linalg.eigvalsh(dense_reference(loss, params, x, y))
    before = len(_driver._compiled._states)
    for key in range(3):  # fast-compiled, fast during the optimised compile, either
        top = ht.eigenpairs(op, 2, key=key, method="lanczos")
        assert top.converged
        np.testing.assert_array_less(
            np.abs(np.asarray(top.values) - w[::-1][:2]), top.error_bounds + 1e-12
        )
    assert len(_driver._compiled._states) == before + 1  # one program, solve and check
    assert _driver._compiled._cheap._cache_size() >= 1


def test_repeated_uses_compile_the_optimised_tier_at_once():
    # block_spectra's loop: the same programs for every block
    assert _compile.tier_of_use(1, 1e-6) == "cheap"
    with _compile.repeated():
        assert _compile.tier_of_use(1, 1e-6) == "full"
        with _compile.repeated():
            assert _compile.tier_of_use(1, 1e-6) == "full"
        assert _compile.tier_of_use(1, 1e-6) == "full"
    assert _compile.tier_of_use(1, 1e-6) == "cheap"


def test_tiers_plan_nothing_for_other_shapes_than_the_first_check(tiers):
    # the first check's program is compiled for its data's shapes; an operator
    # of the same loss on another batch size gets no measure (optimised tier)
    from _util import nested_mlp_loss, nested_mlp_problem

    params, x, y = nested_mlp_problem(jax.random.PRNGKey(6), jnp.float64, n_samples=9)

    def loss(p, x, y):  # a new loss: its first check in this process
        return nested_mlp_loss(p, x, y)

    ht.HessianOperator(loss, params, x, y)
    wider = ht.HessianOperator(loss, params, jnp.concatenate([x, x]), jnp.concatenate([y, y]))
    assert wider._product_seconds() is None
    top = ht.eigenpairs(wider, 1, key=0, method="lanczos")
    assert top.converged
    assert ht.HessianOperator(loss, params, x, y)._product_seconds() > 0
