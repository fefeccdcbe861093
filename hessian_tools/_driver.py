"""The one loop driver of the Krylov solvers: a compiled loop or a host loop, chosen once.

Every Krylov algorithm (``lanczos``, thick-restart ``eigenpairs``, SLQ's
``spectral_density``, the block-Krylov trace and diagonal bases) is written
once, as a function ``algorithm(drv, *args, **static)`` that leaves all
iteration and compilation to its driver ``drv``:

* ``drv.run(state, num_columns, ...)``: kernel steps (``_krylov.step``) until
  ``num_columns`` basis vectors are multiplied, a breakdown, a non-finite
  product or the ``monitor``'s acceptance;
* ``drv.map_runs(extract, starts, num_columns, ...)``: one run from each
  stacked start vector (SLQ's probes), ``extract`` of each final state;
* ``drv.while_loop(cond, body, value)``: an outer loop (restart cycles);
* ``drv.call(fn, *args, **static)``: array code between the loops.

``drive(algorithm, lm, *args, bar=..., **static)`` chooses the driver once,
from ``lm.loop`` (``_operator.schedule``):

* ``"device"``, and always under an outer ``jax.jit``: the whole algorithm
  is traced into one compiled program, with the product bound (for a
  Hessian, linearised) once and loops as ``lax.while_loop``. The program is
  cached per algorithm, static settings, operator type and shapes.
* ``"host"``: the algorithm runs in Python. Every ``call`` is a compiled
  piece (cached per function and static settings), every kernel step one
  compiled step with the state donated (the basis is updated in place), and
  the loops' conditions are read on the host. For products that are slow
  inside compiled loops (convolutions on XLA's CPU backend).

Functions handed to the driver (``algorithm``, ``extract``, ``monitor``,
``fn``) must be module-level objects (or cached ones) with
static settings as keyword arguments: their identity keys the compiled code.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hessian_tools import _krylov
from hessian_tools._checks import is_traced
from hessian_tools._compile import jit
from hessian_tools._operator import LinearMap, apply_batched

__all__ = ["drive", "prefetch"]


def _with_args(monitor: Callable | None, args: tuple) -> Callable | None:
    return None if monitor is None else (lambda s: monitor(s, *args))


class _Steps(NamedTuple):
    """The static settings of a run of kernel steps (hashable)."""

    acc: Any
    reorthogonalize: bool
    monitor: Callable | None
    stop_on_breakdown: bool


class _Driver:
    """What both drivers share: the signature of a run of kernel steps."""

    lm: LinearMap

    def run(
        self,
        state: _krylov.State,
        num_columns: Any,
        *,
        acc: Any,
        breakdown_tol: Any,
        reorthogonalize: bool = True,
        monitor: Callable | None = None,
        monitor_args: tuple = (),
        stop_on_breakdown: bool = True,
        batched: bool = False,
    ) -> _krylov.State:
        """Kernel steps until ``num_columns`` basis vectors are multiplied,
        a breakdown (unless ``stop_on_breakdown`` is False), a non-finite
        product, or ``monitor(state, *monitor_args)`` accepts (CONVERGED).
        ``batched``: the state has a leading axis of independent runs."""
        options = _Steps(acc, bool(reorthogonalize), monitor, bool(stop_on_breakdown))
        arrays = (breakdown_tol, tuple(monitor_args))
        return self._steps(state, num_columns, arrays, options, batched)

    def _steps(self, state, num_columns, arrays: tuple, options: _Steps, batched: bool):
        raise NotImplementedError


class _Device(_Driver):
    """Loops compiled inside the algorithm's one program."""

    def __init__(self, lm: LinearMap, token: Any):
        self.lm, self.token = _prepared(lm), token
        self.mv = _krylov.flat_product(self.lm)

    def call(self, fn: Callable, *args: Any, **static: Any) -> Any:
        return fn(*args, **static)

    def while_loop(self, cond: Callable, body: Callable, value: Any) -> Any:
        return lax.while_loop(cond, body, value)

    def _steps(self, state, num_columns, arrays: tuple, options: _Steps, batched: bool):
        if batched:  # compiled runs are mapped whole instead (map_runs)
            raise ValueError("a batched state is stepped by the host driver only.")
        breakdown_tol, monitor_args = arrays
        return _krylov.run(
            state,
            self.mv,
            num_columns,
            batching=self.lm.batching,
            acc=options.acc,
            breakdown_tol=breakdown_tol,
            reorthogonalize=options.reorthogonalize,
            monitor=_with_args(options.monitor, monitor_args),
            progress=self.token,
            stop_on_breakdown=options.stop_on_breakdown,
        )

    def map_runs(
        self, extract: Callable, starts: Any, num_columns: int, *, acc: Any, **options: Any
    ) -> Any:
        # one run after another (or vmapped), each holding only its own basis
        def one(x):
            state = _start_one(x, num_columns=num_columns, acc=acc)
            return extract(self.run(state, num_columns, acc=acc, **options))

        return apply_batched(one, starts, self.lm.batching)


class _Host(_Driver):
    """Loops driven from Python, one compiled step per kernel step."""

    def __init__(self, lm: LinearMap, bar: Any):
        self.lm, self.bar = lm, bar

    def call(self, fn: Callable, *args: Any, **static: Any) -> Any:
        return _jitted(fn, tuple(sorted(static)))(*args, **static)

    def while_loop(self, cond: Callable, body: Callable, value: Any) -> Any:
        while bool(cond(value)):
            value = body(value)
        return value

    def _steps(self, state, num_columns, arrays: tuple, options: _Steps, batched: bool):
        num_columns = int(num_columns)
        while True:
            cols = np.atleast_1d(np.asarray(state.num_columns))
            status = np.atleast_1d(np.asarray(state.status))
            go = _active(status, options.stop_on_breakdown) & (cols < num_columns)
            if not np.any(go):
                return state
            state = _host_step(self.lm, state, arrays, options=options, batched=batched)
            if self.bar is not None:
                self.bar.update(state.block * int(np.sum(go)))

    def map_runs(
        self, extract: Callable, starts: Any, num_columns: int, *, acc: Any, **options: Any
    ) -> Any:
        # every run at once, their products vectorised
        states = self.call(_start_each, starts, num_columns=num_columns, acc=acc)
        states = self.run(states, num_columns, acc=acc, batched=True, **options)
        return self.call(_vmapped(extract), states)


def _prepared(lm: LinearMap) -> LinearMap:
    """``lm`` with its shared work (a Hessian's linearisation) done once, here:
    every later ``bind`` in the program (the loop's product, the true
    residuals of the returned vectors) reuses it instead of tracing a second
    forward and backward pass into the program. (XLA left little of that
    second pass: the program is a few operations smaller, and warm top-1
    calls ran within 2% either way on W-mid and the Equinox MLP.)"""
    if lm.prepare is None:
        return lm
    product = lm.prepare(*lm.operands)
    return dataclasses.replace(lm, prepare=lambda *_: product)


def _start_one(start: Any, *, num_columns: int, acc: Any) -> _krylov.State:
    return _krylov.init(jax.tree.map(lambda x: x[None], start), num_columns, acc)


def _start_each(starts: Any, *, num_columns: int, acc: Any) -> _krylov.State:
    return jax.vmap(lambda x: _start_one(x, num_columns=num_columns, acc=acc))(starts)


def _active(status: Any, stop_on_breakdown: bool) -> Any:
    return (status == _krylov.RUNNING) | ((status == _krylov.BREAKDOWN) & (not stop_on_breakdown))


@functools.cache
def _jitted(fn: Callable, static: tuple) -> Callable:
    return jit(fn, static_argnames=static)


@functools.cache
def _vmapped(fn: Callable) -> Callable:
    return jax.vmap(fn)


@functools.partial(jit, static_argnames=("options", "batched"), donate_argnums=(1,))
def _host_step(lm, state, arrays: tuple, *, options: _Steps, batched: bool):
    """One compiled kernel step (product, insertion, monitor), the state
    donated so that the basis is updated in place; vmapped over the runs of
    a ``batched`` state, a finished run left as it is."""
    breakdown_tol, monitor_args = arrays
    mv = _krylov.flat_product(lm)

    def one(s):
        new = _krylov.step(
            s,
            mv,
            batching=lm.batching,
            acc=options.acc,
            breakdown_tol=breakdown_tol,
            reorthogonalize=options.reorthogonalize,
        )
        return _krylov.mark_converged(new, _with_args(options.monitor, monitor_args))

    if not batched:
        return one(state)

    def masked(s):  # a finished run of the batch stays as it is
        keep = _active(s.status, options.stop_on_breakdown)
        return jax.tree.map(lambda a, b: jnp.where(keep, a, b), one(s), s)

    return jax.vmap(masked)(state)


@functools.partial(jit, tiered=True, static_argnames=("algorithm", "static", "progress"))
def _compiled(lm, args, token, *, algorithm, static, progress):
    drv = _Device(lm, token if progress else None)
    return algorithm(drv, *args, **dict(static))


def drive(
    algorithm: Callable,
    lm: LinearMap,
    *args: Any,
    bar: Any = None,
    use: str | None = "full",
    **static: Any,
) -> Any:
    """``algorithm(drv, *args, **static)`` with the driver ``lm.loop`` asks
    for (see the module docstring); a compiled loop under an outer
    ``jax.jit``, where values are not concrete.

    Args:
        algorithm: a module-level function of the driver, the traced
            ``args`` and the hashable ``static`` settings.
        lm: the operator; its operands are arguments of the compiled code.
        *args: arrays and pytrees of arrays (traced).
        bar: a progress bar (``_progress``), advanced by the products spent;
            None or a disabled bar for none.
        use: for the compiled program's tiers (``_compile._Tiered``):
            ``"cheap"``, a user's call predicted short; ``"full"``, one
            predicted long or unknown; None, a further run of the same call
            (a completeness check).
        **static: hashable settings (part of the compiled code's key).
    """
    if lm.loop == "host" and not is_traced(args, lm.operands):
        return algorithm(_Host(lm, bar), *args, **static)
    token = getattr(bar, "token", 0)
    return _compiled(
        lm,
        args,
        jnp.asarray(token, jnp.int32),
        algorithm=algorithm,
        static=tuple(sorted(static.items())),
        progress=bool(token),
        use=use,
    )


def prefetch(algorithm: Callable, lm: LinearMap, *args: Any, **static: Any) -> None:
    """Start compiling, in the background, the program that ``drive(algorithm,
    lm, *args, **static)`` (no progress bar) will run, where it is one
    compiled program on CPU (``_compile._Tiered.prefetch``); nothing for the
    host driver, whose pieces are small."""
    if lm.loop == "host" or is_traced(args, lm.operands):
        return
    _compiled.prefetch(
        lm,
        args,
        jnp.asarray(0, jnp.int32),
        algorithm=algorithm,
        static=tuple(sorted(static.items())),
        progress=False,
    )
