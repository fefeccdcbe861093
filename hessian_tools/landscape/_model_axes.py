"""Filter axes read from the model: which axes of each weight index its filters.

Filter normalisation (Li et al. 2018) rescales each *filter* of a direction
(an output unit of a dense layer, an output channel of a convolution, one
unit (head, dim) of an attention projection) to the norm of the same filter
of the parameters. Names cannot tell the layouts apart (Haiku's ``w`` is
``(in, out)``, a PyTorch-style dict's ``w`` is ``(out, in)``); the model's
computation can. ``filter_axes`` traces the loss once (no FLOPs) and
follows every weight to the operations that consume it, through casts,
transposes, reshapes and broadcasts and into nested calls (``jit``,
custom derivatives, remat):

* a ``dot_general`` (``x @ w``, ``w @ x``, ``einsum``) contracts some of
  the weight's axes with the activations; the others index filters (all of
  them: an attention kernel ``(in, heads, head_dim)`` has two);
* a convolution contracts the kernel's input-feature and spatial axes; its
  output-feature axis indexes filters (HWIO, OIHW or any other layout).

Leaves of at most one dimension, and leaves named like biases (``bias``,
``scale``, ...), are biases. A weight the rule cannot decide, such as an
embedding table (a gather), a positional table added to the activations, a
weight used twice in different ways, or one used inside a loop, is reported
by key path, never guessed: give its axes in ``given``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.extend.core import Literal

from hessian_tools._hessian import wrapped_loss
from hessian_tools._params import Partition
from hessian_tools.landscape._filters import BIAS_NAMES, leaf_name

__all__ = ["filter_axes"]

# primitives through which a weight keeps its identity (elementwise, one operand)
_UNARY = {
    "convert_element_type",
    "copy",
    "copy_p",
    "neg",
    "reduce_precision",
    "stop_gradient",
    "optimization_barrier",
}
# elementwise with a second operand: the weight goes on when the other is a scalar
_BINARY = {"mul", "div", "add", "sub", "max", "min"}
_CALLS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


class _Track(NamedTuple):
    """A value derived from weight ``leaf``: for each of its axes, the set
    of the weight's original axes it covers (empty for a new axis)."""

    leaf: int
    axes: tuple[frozenset, ...]


def _inner(eqn) -> Any:
    for name in _CALLS:
        sub = eqn.params.get(name)
        if sub is not None:
            return getattr(sub, "jaxpr", sub)
    return None


def _reshape(track: _Track, old: tuple, new: tuple) -> _Track:
    """Original axes of each new axis: groups of old and new axes with equal
    products cover the same original axes."""
    out: list[frozenset] = []
    i = j = 0
    while j < len(new):
        if new[j] == 1 and (i >= len(old) or old[i] != 1):
            out.append(frozenset())
            j += 1
            continue
        group_old, group_new = [i], [j]
        a, b = old[i] if i < len(old) else 1, new[j]
        while a != b:
            if a < b:
                i += 1
                group_old.append(i)
                a *= old[i]
            else:
                j += 1
                group_new.append(j)
                b *= new[j]
        covered = frozenset().union(*(track.axes[k] for k in group_old if k < len(old)))
        out.extend(covered for _ in group_new)
        i, j = i + 1, j + 1
    return _Track(track.leaf, tuple(out))


class _Reader:
    """Walks a jaxpr, tracking weights and recording how each is consumed."""

    def __init__(self, num_leaves: int):
        self.uses: list[list[tuple[str, Any]]] = [[] for _ in range(num_leaves)]

    def run(self, jaxpr: Any, tracks: dict) -> dict:
        env = dict(tracks)
        for eqn in jaxpr.eqns:
            ins = [env.get(v) if not isinstance(v, Literal) else None for v in eqn.invars]
            if not any(t is not None for t in ins):
                continue
            for var, out in zip(eqn.outvars, self.eqn(eqn, ins), strict=False):
                if out is not None:
                    env[var] = out
        return {v: env.get(v) for v in jaxpr.outvars if not isinstance(v, Literal)}

    def record(self, track: _Track, use: str, detail: Any = None) -> None:
        self.uses[track.leaf].append((use, detail))

    def eqn(self, eqn, ins: list) -> list:
        name = eqn.primitive.name
        track = next(t for t in ins if t is not None)
        inner = _inner(eqn)
        if inner is not None:  # jit, custom_jvp/vjp, remat: follow inside
            results = self.run(inner, dict(zip(inner.invars, ins, strict=False)))
            return [results.get(v) for v in inner.outvars]
        if name in _UNARY:
            return [track]
        if name in _BINARY:
            others = [v for v, t in zip(eqn.invars, ins, strict=True) if t is None]
            if all(not getattr(getattr(v, "aval", None), "shape", ()) for v in others):
                return [track]
            self.record(track, "elementwise", name)
            return [None]
        if name == "transpose":
            return [_Track(track.leaf, tuple(track.axes[p] for p in eqn.params["permutation"]))]
        if name == "reshape":
            old, new = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
            return [_reshape(track, tuple(old), tuple(new))]
        if name == "squeeze":
            drop = {d % len(track.axes) for d in eqn.params["dimensions"]}
            return [_Track(track.leaf, tuple(a for k, a in enumerate(track.axes) if k not in drop))]
        if name == "broadcast_in_dim":
            shape = eqn.outvars[0].aval.shape
            axes = [frozenset()] * len(shape)
            for k, d in enumerate(eqn.params.get("broadcast_dimensions", ())):
                axes[d] = track.axes[k]
            return [_Track(track.leaf, tuple(axes))]
        if name == "dot_general":
            (lc, rc), _ = eqn.params["dimension_numbers"]
            for t, dims in zip(ins, (lc, rc), strict=True):
                if t is not None:
                    self.record(t, "contract", frozenset().union(*(t.axes[d] for d in dims)))
            return [None]
        if name == "conv_general_dilated":
            if ins[1] is not None and ins[0] is None:
                rhs = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
                t = ins[1]
                self.record(t, "contract", frozenset().union(*(t.axes[d] for d in rhs[1:])))
            else:
                self.record(track, "other", name)
            return [None]
        self.record(track, "other", name)
        return [None] * len(eqn.outvars)


def filter_axes(f: Any, params: Any, *args: Any, given: Mapping[str, Any] | None = None) -> Any:
    """The filter axes of every weight of ``params``, read from the loss.

    Traces ``f(params, *args)`` once (no FLOPs; see the module docstring for
    the rule) and returns a pytree like the variables of params whose
    leaves are tuples of filter axes (``()`` for no filter axis, None for a
    bias). Pass it as ``filter_axis=`` to ``random_direction``,
    ``normalize_direction`` and the slice helpers.

    Args:
        f: the loss ``f(params, *args) -> scalar``.
        params: the point (any pytree; its floating arrays are the variables).
        *args: the loss's data (only shapes and dtypes are used).
        given: axes for leaves the rule cannot decide, by key path as
            ``jax.tree_util.keystr`` writes it (e.g. ``"['embed']['embedding']"``):
            an int, a tuple of ints, or None to treat the leaf as a bias.

    Returns:
        A pytree like the variables (None where a leaf is not one).

    Raises:
        ValueError: weights the rule cannot decide and not in ``given``;
            each named by key path and shape, with what consumes it and how
            to pass its axes.

    Example:
        >>> axes = ht.landscape.filter_axes(loss, params, x, y)
        >>> d = ht.landscape.random_direction(key, params, filter_axis=axes)
    """
    given = dict(given or {})
    partition = Partition.of(params)
    variables, fixed = partition.split(params)
    leaves = jax.tree_util.tree_leaves_with_path(variables)
    closed = jax.make_jaxpr(wrapped_loss(f, partition))(variables, fixed, *args)
    jaxpr = closed.jaxpr
    reader = _Reader(len(leaves))
    tracks = {
        jaxpr.invars[i]: _Track(i, tuple(frozenset({k}) for k in range(np.ndim(leaf))))
        for i, (_, leaf) in enumerate(leaves)
    }
    reader.run(jaxpr, tracks)
    out, undecided = [], []
    for (path, leaf), uses in zip(leaves, reader.uses, strict=True):
        key = jax.tree_util.keystr(path)
        if key in given:
            axes = given.pop(key)
            out.append(None if axes is None else tuple(np.atleast_1d(axes).astype(int).tolist()))
        elif np.ndim(leaf) <= 1 or leaf_name(path) in BIAS_NAMES or not uses:
            out.append(None)
        else:
            axes, why = _decide(np.ndim(leaf), uses)
            if axes is None:
                undecided.append((key, tuple(np.shape(leaf)), why))
            out.append(axes)
    if given:
        known = [jax.tree_util.keystr(p) for p, _ in leaves]
        raise ValueError(
            f"given names leaves that are not variables: {sorted(given)}; the variables' key "
            f"paths are {known[:12]}{' ...' if len(known) > 12 else ''}."
        )
    if undecided:
        listed = "; ".join(f"{key} {shape}: {why}" for key, shape, why in undecided[:8])
        raise ValueError(
            "filter_axes cannot tell which axes of these weights index filters (it reads "
            f"them from the contractions that consume each weight): {listed}. Pass them by "
            f'key path, e.g. given={{"{undecided[0][0]}": 0}} (an axis, a tuple of axes, or '
            "None to treat the leaf as a bias)."
        )
    return jax.tree.unflatten(jax.tree.structure(variables), out)


def _decide(ndim: int, uses: list) -> tuple[tuple | None, str]:
    kinds = {u for u, _ in uses}
    if kinds == {"contract"}:
        if len({d for _, d in uses}) > 1:
            return None, "contracted along different axes in different places"
        axes = tuple(k for k in range(ndim) if k not in uses[0][1])
        if not axes:
            return None, "contracted along every axis"
        return axes, ""
    others = sorted({str(d) for u, d in uses if u != "contract"})
    if "contract" in kinds:
        return None, f"used both in a contraction and by {', '.join(others)}"
    return None, f"used by {', '.join(others)}, not in a contraction"
