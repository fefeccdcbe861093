"""The Hessian of a loss in its variables: the pieces every operator shares.

A loss ``f(params, *args)`` is seen as a function of its *variables* (the
floating array leaves of params, narrowed by ``wrt``: ``_params``), the rest
of params held fixed (``wrapped_loss``). Its HVP is forward-over-reverse
(``hvp_tree``: ``jvp`` of ``grad``, Pearlmutter 1994); ``hessian_products``
gives the product and its shared-forward-pass variant (``jax.linearize`` of
the gradient) as cached function objects, so that compiled solvers are
reused across operators of the same loss. Used by ``operators``, ``ggn``
and the landscape's directions, slices and curvature metric.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax

from hessian_tools._checks import check_scalar_output, explain_loss_errors
from hessian_tools._compile import jit
from hessian_tools._data import Data
from hessian_tools._params import Partition
from hessian_tools._tree import Layout

PyTree = Any
Loss = Callable[..., jax.Array]

__all__ = [
    "Loss",
    "PyTree",
    "as_vector",
    "check_scalar_loss",
    "check_seconds",
    "checked_value_and_grad",
    "hessian_products",
    "hvp_tree",
    "value_and_grad",
    "wrapped_loss",
]

_SCALAR_FIX = "Reduce it (e.g. with jnp.mean) before asking for curvature."


def check_scalar_loss(
    f: Loss, params: PyTree, args: tuple, partition: Partition | None = None, batches: Any = None
):
    """``ValueError`` unless ``f(params, *args)`` is a real scalar (no FLOPs;
    non-array leaves of params are held static); a loss that does not trace
    on this data raises naming each argument (``explain_loss_errors``)."""
    partition = Partition.of(params) if partition is None else partition
    variables, fixed = partition.split(params)
    wrapped = wrapped_loss(f, partition)
    explain = explain_loss_errors(f, args, batches)
    check_scalar_output(
        "the loss f(params, *args)",
        wrapped,
        variables,
        fixed,
        *args,
        fix=_SCALAR_FIX,
        explain=explain,
    )


@functools.cache
def wrapped_loss(f: Loss, partition: Partition) -> Callable:
    """``f`` as a function of ``(variables, fixed, *args)``, one object per
    loss and partition (so shape checks and compiled code are cached)."""
    return partition.wrap(f)


def hvp_tree(f: Loss, params: PyTree, v: PyTree, args: tuple) -> PyTree:
    return jax.jvp(lambda p: jax.grad(f)(p, *args), (params,), (v,))[1]


def as_vector(partition: Partition, layout: Layout, v: Any, name: str) -> PyTree:
    """``v`` as a vector of the variables: flat, a variables pytree, or a
    pytree shaped like the whole of params."""
    if not layout.is_flat(v) and jax.tree.structure(v) != layout.treedef:
        picked = partition.select(v)
        if picked is not None:
            v = picked
    return layout.vector(v, name=name)


@functools.cache
def hessian_products(f: Loss, partition: Partition) -> tuple[Callable, Callable]:
    """``(matvec, prepare)`` of the Hessian of ``f`` in the variables of
    ``partition``; cached per loss and partition, so the same function
    objects (static parts of a ``LinearMap``) come back and compiled solvers
    are reused across operators."""
    fv = wrapped_loss(f, partition)

    def matvec(v, variables, fixed, data):
        return data.mean(lambda *args: hvp_tree(fv, variables, v, (fixed, *args)))

    def prepare(variables, fixed, data):
        # one forward pass (jax.linearize of the gradient), then the linear
        # map per product: faster per HVP, but holds the activations
        args = data.groups[0]
        return jax.linearize(lambda p: jax.grad(fv)(p, fixed, *args), variables)[1]

    return matvec, prepare


def _value_and_grad(f: Loss, partition: Partition, variables: PyTree, fixed: tuple, data: Data):
    fv = wrapped_loss(f, partition)
    return data.mean(lambda *args: jax.value_and_grad(fv)(variables, fixed, *args))


#: the loss and gradient (a product: jax's own options, ``_compile``)
value_and_grad = jax.jit(_value_and_grad, static_argnums=(0, 1))
_value_and_grad_once = jit(_value_and_grad, once=True, static_argnums=(0, 1))

#: the losses and partitions whose check ran (``checked_value_and_grad``):
#: the first check's compiled program, until ``check_seconds`` timed it
_checked: dict = {}


def check_seconds(
    f: Loss, partition: Partition, variables: PyTree, fixed: tuple, data: Data
) -> float | None:
    """Seconds that a loss and gradient of ``f`` and ``partition`` take to
    run compiled without backend optimisation: the first finiteness check's
    program, run once more and timed here at the first request (its first
    run carries a one-time cost of about 25 ms). The measure of a product's
    cost that a solver's first call is planned on (``_compile.tier_of_use``);
    None before a check ran, or for arguments of other shapes than the
    check's (another batch size: nothing is compiled for them here)."""
    entry = _checked.get((f, partition))
    if entry is None or isinstance(entry, float):
        return entry
    start = time.perf_counter()
    try:
        jax.block_until_ready(entry(variables, fixed, data))
    except (TypeError, ValueError):  # other shapes: the compiled check does not apply
        return None
    _checked[(f, partition)] = seconds = time.perf_counter() - start
    return seconds


def checked_value_and_grad(
    f: Loss, partition: Partition, variables: PyTree, fixed: tuple, data: Data
):
    """``value_and_grad`` for an operator's finiteness check at construction,
    compiled in tiers. The first check of a loss and partition in a process
    runs a program compiled without backend optimisation (``_compile``,
    ``once``): a fresh process's first operator compiles its check in 0.07 s
    against 0.31 (W-mid; CNN 0.09 against 0.48; Equinox MLP 0.04 against
    0.21) and runs it in 14 ms against 7 (58 against 23; 1.8 against 1.0).
    Later checks (an operator per checkpoint along training, a
    block study's operators) compile and run the optimised program that
    ``value_and_grad`` also is. The first check's program is kept for
    ``check_seconds``."""
    if (f, partition) in _checked:
        return value_and_grad(f, partition, variables, fixed, data)
    compiled = _value_and_grad_once.lower(f, partition, variables, fixed, data).compile()
    _checked[(f, partition)] = compiled
    return compiled(variables, fixed, data)
