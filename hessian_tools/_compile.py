"""``jit``: ``jax.jit`` with the library's compiler options, for its own programs only.

A fresh process's first call is mostly XLA compiling the solver's one
program (DESIGN.md, "Performance rules"). On XLA's CPU backend the default
fusion emitters (MLIR-based, jaxlib 0.10) compile the solvers' programs,
many small fusions of bookkeeping around the products, about 1.6x slower
than the backend's other emitters. The compilation of a first top-1 call
took 3.1-3.9 s against 1.8-2.4 s on W-mid, 3.0-3.5 s against 1.7-2.0 s on
the CNN, 2.4-2.6 s against 1.6 s on the Equinox MLP and 4.3-4.8 s against
2.6 s on the transformer (alternating fresh processes, 2-3 each); the
solver's own code (a diagonal operator) 1.88 s against 1.17 s.

The solvers' programs use ``jit``. Programs that are products and little
else (``op @ v``, stacks of products, the loss and gradient, loss
evaluations) keep ``jax.jit`` and its defaults: they compile in a fraction of
a second, and there the other emitters ran slower (a standalone HVP 9%
slower on W-mid, 13% on the Equinox MLP, 7% on the CNN; the solvers' warm
top-1 and top-10 calls within 5% either way, except the Equinox MLP's top-1,
whose HVP costs 1 ms: 11%; one process, the two programs alternating).

Programs run once per compilation (the operator's finiteness check at
construction: a loss and gradient, ``_hessian.checked_value_and_grad``)
compile with ``once=True``: optimisation level 0 as well. There the run costs
more and the compilation much less: the check compiled in 0.06-0.08 s against
0.31 s on W-mid, 0.09 against 0.48 on the CNN and 0.04 against 0.21 on the
Equinox MLP, and ran in 14 ms against 7, 58 against 23 and 1.8 against 1.0.

The options are passed per program (``jax.jit(..., compiler_options=...)``),
never as a process-wide flag: a user's own programs compile as they always
did. They are chosen at a function's first call, for the default backend:
none off CPU (the GPU's compiler has other costs), and none where this
jaxlib does not know the option (checked once by compiling a one-line
program, about 10 ms).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["CPU_OPTIONS", "ONCE_OPTIONS", "compiler_options", "jit"]

#: per-program XLA options on CPU: the older emitters, which compile the
#: solvers' many small fusions faster (see the module docstring)
CPU_OPTIONS: dict[str, Any] = {"xla_cpu_use_fusion_emitters": False}

#: for programs run once per compilation (``jit(..., once=True)``): no
#: backend optimisation either
ONCE_OPTIONS: dict[str, Any] = {**CPU_OPTIONS, "xla_backend_optimization_level": 0}


@functools.cache
def compiler_options(once: bool = False) -> dict[str, Any]:
    """The options the library's programs (``once``: those run once per
    compilation) compile with on this process's default backend ({} where
    none apply or this jaxlib refuses them)."""
    if jax.default_backend() != "cpu":
        return {}
    options = ONCE_OPTIONS if once else CPU_OPTIONS
    try:
        jax.jit(_probe, compiler_options=options).lower(np.float32(0)).compile()
    except Exception:  # an option this jaxlib does not have: compile as jax does
        return {}
    return dict(options)


def _probe(x: Any) -> Any:
    return x + 1


class _Jitted:
    """``jax.jit`` of ``fun``, made at its first use (so that importing the
    package touches no backend): with the library's compiler options at the
    top level, without them inside another trace (JAX takes compiler options
    on top-level programs only)."""

    def __init__(self, fun: Callable, kwargs: dict[str, Any], once: bool = False):
        self._fun, self._kwargs, self._once = fun, kwargs, once
        self._top: Any = None
        self._nested: Any = None
        functools.update_wrapper(self, fun)

    def _get(self) -> Any:
        if self._top is None:
            options = compiler_options(self._once) or None
            self._top = jax.jit(self._fun, compiler_options=options, **self._kwargs)
            self._nested = self._top if options is None else jax.jit(self._fun, **self._kwargs)
        return self._top

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        top = self._get()
        if top is self._nested or _traced(args, kwargs):
            return self._nested(*args, **kwargs)
        try:
            return top(*args, **kwargs)
        except ValueError as exc:  # inside a trace, called with concrete arguments only
            if "compiler_options" not in str(exc):
                raise
            return self._nested(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # lower, trace, clear_cache, ...
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._get(), name)


def _traced(*values: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(values))


def jit(fun: Callable | None = None, *, once: bool = False, **kwargs: Any) -> Any:
    """``jax.jit(fun, **kwargs)`` compiled with ``compiler_options(once)``
    (``once``: a program run once per compilation, compiled with no backend
    optimisation); as ``jax.jit``, usable as ``@jit`` and
    ``functools.partial(jit, ...)``."""
    if fun is None:
        return functools.partial(jit, once=once, **kwargs)
    return _Jitted(fun, kwargs, once)
