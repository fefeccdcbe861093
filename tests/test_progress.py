"""Progress bars (hessian_tools._progress), also advanced from compiled loops."""

import jax
import jax.numpy as jnp
import numpy as np
from _util import sym_with_spectrum

import hessian_tools as ht
from hessian_tools import _progress


class _Recorder:
    def __init__(self):
        self.n = 0

    def update(self, n=1):
        self.n += n

    def close(self):
        pass


def test_disabled_bar_is_free_and_has_token_zero():
    with _progress.progress_bar(10, enabled=False) as bar:
        bar.update(5)
        assert bar.token == 0


def test_advance_from_inside_jit_counts_every_product(monkeypatch):
    recorder = _Recorder()
    real = _progress.progress_bar

    def fake(total, desc="", enabled=False, **kw):
        bar = real(total, desc, enabled, **kw)
        if enabled:
            bar._bar.close()
            bar._bar = recorder
            _progress._BARS[bar.token] = recorder
        return bar

    monkeypatch.setattr("hessian_tools._thick_restart.progress_bar", fake)
    a = sym_with_spectrum(np.linspace(0, 1, 100))
    r = ht.eigenpairs(a, 2, method="lanczos", progress=True, max_matvecs=40, rtol=1e-12)
    jax.effects_barrier()
    assert recorder.n == r.num_matvecs == 40


def test_host_advance_ignores_unknown_tokens():
    _progress._host_advance(jnp.asarray(123456), jnp.asarray(3))  # no bar: nothing happens
