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

They also compile at backend optimisation level 1
(``xla_backend_optimization_level``, XLA's default 3; on CPU it chooses
LLVM's optimisation pipeline): the same programs compiled in 11-27% less
CPU time and ran as fast (the one-program trace and the thick-restart
solver, each compiled both ways in one process and run 30 times
alternating, both orders: the transformer 0.98-0.99x and 0.99x, the
Equinox MLP 1.00-1.02x and 0.99-1.01x, W-mid's eigensolver 1.00x), except
W-mid's trace, 1.8-2.2% slower (2-3% against plain Hutchinson across
processes: 15-20 ms in 0.7 s, against 0.45 s less CPU time compiling
it). Level 2 measured about the same (compiling 11-20% less, W-mid's
trace 1-2% slower).

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

A solver program that a first call runs briefly compiles in tiers
(``jit(..., tiered=True)``, ``_Tiered``): without backend optimisation for
its first use, the optimised program in a background thread from its second
use on. Where a use's products are predicted to take long (or their cost
is unknown) it compiles the optimised program at once (``tier_of_use``).
With JAX's persistent compilation cache on, programs compile once per
machine: the optimised one only.

The options are passed per program (``jax.jit(..., compiler_options=...)``),
never as a process-wide flag: a user's own programs compile as they always
did. They are chosen at a function's first call, for the default backend:
none off CPU (the GPU's compiler has other costs), and none where this
jaxlib does not know the option (checked once by compiling a one-line
program, about 10 ms).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import sys
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = [
    "CHEAP_RUN_SECONDS",
    "CPU_OPTIONS",
    "ONCE_OPTIONS",
    "TIERS",
    "compiler_options",
    "jit",
    "prepare_lapack",
    "repeated",
    "tier_of_use",
    "tiers_apply",
    "wait_for_compilations",
]

#: per-program XLA options on CPU: the older emitters, which compile the
#: solvers' many small fusions faster, and LLVM's optimisation level 1
#: instead of 3 (see the module docstring)
CPU_OPTIONS: dict[str, Any] = {
    "xla_cpu_use_fusion_emitters": False,
    "xla_backend_optimization_level": 1,
}

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


_lapack_started = False


def prepare_lapack() -> None:
    """Start importing scipy's LAPACK wrappers in a background thread, once
    per process, on CPU: jaxlib imports them (``scipy.linalg.cython_lapack``,
    with the whole of ``scipy.linalg``) when it lowers the first program with
    an ``eigh``, which every solver program holds. Called where an operator
    is made, the import runs while its finiteness check compiles and runs
    (both release the GIL): in a fresh W-mid process with a filled
    compilation cache, the operator and the first ``eigenpairs(op, 1)``
    took 0.68 s against 0.82 s (the import is 0.15-0.19 s; medians of five
    alternating processes, ``benchmarks/cold_start.py``,
    ``benchmarks/RESULTS.md``)."""
    global _lapack_started
    if _lapack_started or "scipy.linalg.cython_lapack" in sys.modules:
        return
    _lapack_started = True
    if jax.default_backend() != "cpu":
        return

    def work():
        try:
            importlib.import_module("scipy.linalg.cython_lapack")
        except Exception:  # jaxlib's own import, later, raises it if it recurs
            pass

    threading.Thread(target=work, name="hessian_tools-lapack", daemon=True).start()


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


#: whether ``jit(..., tiered=True)`` programs compile in tiers (see
#: ``_Tiered``); the test suite turns it off (deterministic programs) and
#: tests the tiers on their own
TIERS = True


def tiers_apply() -> bool:
    """Whether tiered programs compile in tiers now: on CPU (where
    ``compiler_options`` gives options), with jit on, and not with JAX's
    persistent compilation cache on (there a program compiles once per
    machine and loads in a fraction of a second afterwards: the optimised
    one is worth compiling)."""
    return (
        TIERS
        and not jax.config.jax_disable_jit
        and not jax.config.jax_compilation_cache_dir
        and bool(compiler_options(True))
    )


#: a user's call runs a fast-compiled program first (``_Tiered``) when its
#: predicted products times a product's measured cost is at most this: the
#: slower run then costs at most about what the faster compilation saved
#: (0.5-1.8 s on the 2-core CPU; see ``_Tiered``)
CHEAP_RUN_SECONDS = 1.5


def tier_of_use(products: int, product_seconds: float | None) -> str:
    """The ``use`` of a user's call of a tiered program: ``"cheap"`` when
    ``products`` products of ``product_seconds`` each (a loss and gradient
    compiled without optimisation: ``_hessian.check_seconds``) take at most
    ``CHEAP_RUN_SECONDS``, else (or unknown, None, or inside ``repeated``)
    ``"full"``."""
    if getattr(_local, "repeated", False):
        return "full"
    if product_seconds is None or products * product_seconds > CHEAP_RUN_SECONDS:
        return "full"
    return "cheap"


_local = threading.local()


@contextlib.contextmanager
def repeated():
    """Within it, the library's calls are uses of programs about to run many
    times (``block_spectra``'s loop over blocks): they compile the optimised
    tier at once. Compiling the fast tier first there only adds work: in a
    12-block study of the transformer the optimised program compiled in the
    background anyway, beside the blocks."""
    before = getattr(_local, "repeated", False)
    _local.repeated = True
    try:
        yield
    finally:
        _local.repeated = before


class _Tiered:
    """A solver program compiled in two tiers on CPU, as a JIT compiler does.

    A *use* is one call a user made (a solve; its completeness check and
    re-solves are not new uses: ``use=None``). The first use of a program
    (its static settings and argument shapes) that the caller predicts to
    be short (``use="cheap"``) compiles it without backend optimisation
    (``ONCE_OPTIONS``): on W-mid 0.55 s against 1.9 s, the solve then
    running about 1.8x slower per product (Equinox MLP 0.6 s against 1.1 s,
    2x; the small transformer 1.8 s against 3.6 s, 1.4x). The second use
    starts compiling the optimised program in a background thread (lowered
    here, in the caller's context: the trace is cached, 1 ms) and runs the
    fast-compiled one meanwhile; every use after that compilation finished
    runs the optimised program. A use predicted long (``use="full"``)
    compiles, or waits for, the optimised program. So a process that asks
    once never compiles the optimised program, and one that asks again
    never waits for it. Pending compilations are waited for at exit (an
    XLA compilation must not outlive the interpreter).

    Without tiers (``tiers_apply``), or inside another trace, it is
    ``jit``'s program."""

    def __init__(self, fun: Callable, kwargs: dict[str, Any]):
        self._plain = _Jitted(fun, kwargs)
        self._cheap = _Jitted(fun, kwargs, once=True)  # the fast-compiled tier
        self._states: dict = {}  # signature -> "cheap", a pending Thread, or "full"
        self._lock = threading.Lock()
        functools.update_wrapper(self, fun)

    def __call__(self, *args: Any, use: str | None = "full", **kwargs: Any) -> Any:
        if not tiers_apply() or _traced(args, kwargs):
            return self._plain(*args, **kwargs)
        full = self._plain._get()
        key = _signature(args, kwargs)
        with self._lock:
            state = self._states.get(key)
        if isinstance(state, threading.Thread) and (not state.is_alive() or use == "full"):
            state.join()  # a long use waits for the optimised program
            state = "full"
        if state is None or (state == "cheap" and use == "full"):
            state = "cheap" if use == "cheap" else "full"  # "full": compiled here
        elif state == "cheap" and use == "cheap":  # a second use: compile it aside
            state = self._compile_aside(full.lower(*args, **kwargs))
        with self._lock:
            self._states[key] = state
        return (full if state == "full" else self._cheap._get())(*args, **kwargs)

    def prefetch(self, *args: Any, **kwargs: Any) -> None:
        """Start compiling the optimised program for these arguments in a
        background thread (lowered here, in the caller's context), for a
        call about to come after other work: ``block_spectra`` compiles its
        trace program beside its eigensolver's. The next use waits for it
        (``use="full"``) or runs it once finished. Nothing where tiers do
        not apply, inside another trace, or where the program is known."""
        if not tiers_apply() or _traced(args, kwargs):
            return
        key = _signature(args, kwargs)
        with self._lock:
            if key in self._states:
                return
            self._states[key] = None  # claimed: a second prefetch does nothing
        thread = self._compile_aside(self._plain._get().lower(*args, **kwargs))
        with self._lock:
            self._states[key] = thread

    def _compile_aside(self, lowered: Any) -> threading.Thread:
        def work():
            try:
                lowered.compile()  # fills jit's cache: the next full call finds it
            except Exception:  # the call in the foreground raises it, if it recurs
                pass

        thread = threading.Thread(target=work, name="hessian_tools-compile", daemon=True)
        _pending.append(thread)
        thread.start()
        return thread

    def __getattr__(self, name: str) -> Any:  # lower, trace, clear_cache, ...
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._plain, name)


#: background compilations (``_Tiered``), waited for at exit
_pending: list[threading.Thread] = []


@atexit.register
def wait_for_compilations() -> None:
    """Wait until every background compilation has finished (at exit, and
    where warm calls are timed: the benchmarks)."""
    while _pending:
        _pending.pop().join()


def _signature(args: tuple, kwargs: dict) -> tuple:
    """What tells compiled programs apart: static settings, structure,
    shapes and dtypes."""
    dynamic = {k: v for k, v in kwargs.items() if not _hashable(v)}
    static = tuple(sorted((k, v) for k, v in kwargs.items() if k not in dynamic))
    leaves, treedef = jax.tree.flatten((args, dynamic))
    avals = tuple(
        (np.shape(x), getattr(x, "dtype", type(x)), bool(getattr(x, "weak_type", False)))
        for x in leaves
    )
    return static, treedef, avals


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return not isinstance(value, (jax.Array, np.ndarray))


def _traced(*values: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(values))


def jit(
    fun: Callable | None = None, *, once: bool = False, tiered: bool = False, **kwargs: Any
) -> Any:
    """``jax.jit(fun, **kwargs)`` compiled with ``compiler_options(once)``
    (``once``: a program run once per compilation, compiled with no backend
    optimisation; ``tiered``: a solver program compiled in tiers, see
    ``_Tiered``, called with ``use=``); as ``jax.jit``, usable as ``@jit``
    and ``functools.partial(jit, ...)``."""
    if fun is None:
        return functools.partial(jit, once=once, tiered=tiered, **kwargs)
    return _Tiered(fun, kwargs) if tiered else _Jitted(fun, kwargs, once)
