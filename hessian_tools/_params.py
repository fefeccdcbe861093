"""Which leaves of ``params`` are the variables, and blocks of them (``wrt=``).

Equinox's rule: the floating-point array leaves of params are the variables;
every other leaf is held fixed and passed through untouched: integer arrays
(a step counter, BatchNorm's count), non-array leaves (an ``eqx.Module``'s
activation functions, Python numbers, strings). ``wrt=`` narrows the
variables to a block (one layer, say): the other floating leaves are then
held fixed too. So an ``eqx.Module``, an NNX ``State`` or a plain dict can be
passed whole, and ``n`` counts only the variables.

Model state is not a parameter: floating leaves inside a Flax Linen
``batch_stats`` collection or an NNX ``BatchStat`` variable are held fixed
too (unless ``wrt=`` selects them), with a ``ModelStateWarning`` naming
them and the one-line split that passes them as an argument instead.

A *vector* (a direction, an eigenvector, a gradient) is a pytree of the
variables only: params' structure with ``None`` where a leaf is not a
variable, as ``eqx.partition`` writes it. Where a pytree shaped like the
whole of params is given instead, its variable leaves are taken.

``Partition`` is static and hashable (tree structure, the kind of every
leaf, the non-array leaves themselves), so a product compiled for one
checkpoint is reused at the next: only the arrays are traced arguments.

A block is data, not a new program: every block of params lies in the
space of *all* its floating leaves (``Partition.everything``), and
``Partition.within`` gives the block's per-leaf selection in that space,
which a ``HessianOperator(..., wrt=...)`` passes to the compiled solvers as
a traced mask (``hessian_tools._operator.LinearMap``). ``take`` and ``put``
move vectors between a block and that space.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

__all__ = ["ModelStateWarning", "Partition", "is_variable"]

VAR, FIXED, STATIC = "variable", "fixed", "static"
_SUPPORTED = (jnp.dtype("float32"), jnp.dtype("float64"))


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic)) or hasattr(x, "__jax_array__")


def is_variable(x: Any) -> bool:
    """True for a floating-point array (Equinox's ``is_inexact_array``,
    without complex numbers)."""
    return _is_array(x) and jnp.issubdtype(jnp.result_type(x), jnp.floating)


class _Static:
    """A non-array leaf, hashed by value when it can be, else by identity."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __hash__(self) -> int:
        try:
            return hash(self.value)
        except TypeError:
            return id(self.value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Static):
            return False
        if self.value is other.value:
            return True
        try:
            return bool(self.value == other.value)
        except Exception:
            return False


class ModelStateWarning(UserWarning):
    """Params hold model state (batch statistics), held fixed; see ``Partition``."""


#: Collections and variable types that hold model state, not parameters
_STATE_KEYS = ("batch_stats",)  # Flax Linen collections
_STATE_TYPES = ("BatchStat",)  # Flax NNX variable types


def _is_state_node(x: Any) -> bool:
    return any(c.__name__ in _STATE_TYPES for c in type(x).__mro__)


def _model_state(params: PyTree) -> list[bool]:
    """One bool per leaf of params: the leaf is model state (inside a Linen
    ``batch_stats`` collection or an NNX ``BatchStat``), by type or key,
    without importing Flax."""
    flags: list[bool] = []
    for path, node in jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_state_node)[0]:
        keyed = any(getattr(k, "key", None) in _STATE_KEYS for k in path)
        count = len(jax.tree.leaves(node)) if _is_state_node(node) else 1
        flags.extend([keyed or _is_state_node(node)] * count)
    return flags


def _mask(params: PyTree, wrt: Any) -> list[bool]:
    """One bool per leaf of params: selected by ``wrt``."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if wrt is None:
        return [True] * len(leaves)
    if isinstance(wrt, str):  # a key-path pattern, as block_spectra's blocks
        pattern = _compile_pattern(wrt)
        return [pattern.search(jax.tree_util.keystr(path)) is not None for path, _ in leaves]
    if callable(wrt):
        return [bool(wrt(jax.tree_util.keystr(path))) for path, _ in leaves]
    try:
        full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: bool(m), sub), wrt, params)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "wrt must be a pytree of booleans shaped like params (or a prefix of it), or a "
            f"predicate on key paths such as lambda path: 'layer1' in path; got {wrt!r} "
            f"that does not match params ({err})."
        ) from None
    return [bool(m) for m in jax.tree.leaves(full)]


def _compile_pattern(wrt: str) -> re.Pattern:
    """A ``wrt`` string as the regular expression it is searched as."""
    try:
        return re.compile(wrt)
    except re.error as err:
        raise ValueError(
            f"wrt={wrt!r} is read as a key-path pattern (a regular expression searched in "
            f'each leaf\'s key path, e.g. "layer1" or "attn.*kernel") and does not '
            f"compile: {err}."
        ) from None


def _available_paths(params: PyTree, shown: int = 20) -> str:
    """The key paths of params' floating leaves, for a ``wrt`` that selects
    none (a typo in a layer's name)."""
    paths = [
        jax.tree_util.keystr(path)
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if is_variable(leaf)
    ]
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return (
        f" A predicate gets each leaf's key path as a string; the floating leaves' paths are: "
        f"{', '.join(paths[:shown])}{more}."
    )


def _warn_model_state(paths: list[str], num_variables: int) -> None:
    shown = ", ".join(paths[:6]) + (f" and {len(paths) - 6} more" if len(paths) > 6 else "")
    warnings.warn(
        f"params hold model state, not parameters: {shown}. These batch statistics are held "
        f"fixed (the Hessian is taken in the {num_variables} other variables' array leaves). "
        "Pass them as an argument of the loss instead, and this warning goes: Linen "
        "loss(variables['params'], variables['batch_stats'], x, y); NNX graphdef, params, "
        "rest = nnx.split(model, nnx.Param, ...) and loss(params, rest, x, y) (docs: "
        "recipes). To take curvature in them after all, select them with wrt=.",
        ModelStateWarning,
        stacklevel=4,
    )


@dataclasses.dataclass(frozen=True)
class Partition:
    """The kind of every leaf of params: variable, fixed array, or static."""

    treedef: Any
    kinds: tuple[str, ...]
    static: tuple[_Static, ...]

    @classmethod
    def of(cls, params: PyTree, wrt: Any = None) -> Partition:
        """The partition of ``params``: its floating-point array leaves
        selected by ``wrt`` are the variables.

        Raises:
            ValueError: no variables (no floating leaves, or ``wrt`` selects
                none), or a ``wrt`` that does not match params.
            TypeError: a floating leaf in half precision (bfloat16,
                float16), or complex.
        """
        leaves, treedef = jax.tree.flatten(params)
        selected = _mask(params, wrt)
        state = _model_state(params) if wrt is None else [False] * len(leaves)
        kinds, static, held = [], [], []
        for (path, leaf), sel, is_state in zip(
            jax.tree_util.tree_leaves_with_path(params), selected, state, strict=True
        ):
            if not _is_array(leaf):
                kinds.append(STATIC)
                static.append(_Static(leaf))
                continue
            dtype = jnp.result_type(leaf)
            if jnp.issubdtype(dtype, jnp.complexfloating):
                raise TypeError(
                    f"params leaf {jax.tree_util.keystr(path) or '<root>'} must be real; got "
                    f"{dtype}. Curvature here is of real losses of real parameters."
                )
            if is_variable(leaf) and jnp.dtype(dtype) not in _SUPPORTED:
                raise TypeError(
                    f"params leaf {jax.tree_util.keystr(path) or '<root>'} must be float32 or "
                    f"float64; got {dtype}. Half-precision HVPs lose the digits the "
                    "eigensolvers need: cast for the analysis, e.g. "
                    "jax.tree.map(lambda x: x.astype(jnp.float32), params)."
                )
            if is_state and is_variable(leaf):  # batch statistics: model state, held fixed
                held.append(jax.tree_util.keystr(path))
                sel = False
            kinds.append(VAR if sel and is_variable(leaf) else FIXED)
        if VAR not in kinds:
            what = "selected by wrt" if wrt is not None else "in params"
            seen = [str(jnp.result_type(x)) if _is_array(x) else type(x).__name__ for x in leaves]
            raise (TypeError if wrt is None else ValueError)(
                f"params must have floating-point array leaves (the variables) {what}; got "
                f"none (leaves: {seen[:8]}).{_available_paths(params) if wrt is not None else ''}"
            )
        if held:
            _warn_model_state(held, kinds.count(VAR))
        return cls(treedef, tuple(kinds), tuple(static))

    @classmethod
    def everything(cls, params: PyTree) -> Partition:
        """Every floating-point array leaf of params a variable, model state
        included (and no warning): the space that holds every block of
        params, whatever ``wrt`` selects."""
        return cls.of(params, lambda path: True)

    def within(self, space: Partition) -> tuple[bool, ...]:
        """One bool per variable of ``space``: whether it is a variable of
        this partition (a block's selection in the space of all variables)."""
        return tuple(k == VAR for k, s in zip(self.kinds, space.kinds, strict=True) if s == VAR)

    def take(self, space: Partition, vector: PyTree) -> PyTree:
        """This partition's leaves of a vector (or stack of vectors) of
        ``space``'s variables: the others become None. No array work."""
        leaves = iter(jax.tree.leaves(vector))
        picked = []
        for k, s in zip(self.kinds, space.kinds, strict=True):
            x = next(leaves) if s == VAR else None
            picked.append(x if k == VAR else None)
        return jax.tree.unflatten(self.treedef, picked)

    def put(self, space: Partition, vector: PyTree, fill: list) -> PyTree:
        """A vector (or stack) of ``space``'s variables: this partition's
        leaves from ``vector``, ``fill[i]`` for space's i-th variable
        elsewhere (zeros, say)."""
        leaves, fills = iter(jax.tree.leaves(vector)), iter(fill)
        out = []
        for k, s in zip(self.kinds, space.kinds, strict=True):
            if s != VAR:
                out.append(None)
                continue
            z = next(fills)
            out.append(next(leaves) if k == VAR else z)
        return jax.tree.unflatten(self.treedef, out)

    @property
    def trivial(self) -> bool:
        """Every leaf is a variable (a plain pytree of floating arrays)."""
        return all(k == VAR for k in self.kinds)

    def split(self, params: PyTree) -> tuple[PyTree, tuple]:
        """``(variables, fixed)``: the variables as a pytree (None where a
        leaf is not one) and the fixed array leaves as a tuple."""
        leaves = self.treedef.flatten_up_to(params)
        variables = [x if k == VAR else None for x, k in zip(leaves, self.kinds, strict=True)]
        fixed = tuple(x for x, k in zip(leaves, self.kinds, strict=True) if k == FIXED)
        return jax.tree.unflatten(self.treedef, variables), fixed

    def combine(self, variables: PyTree, fixed: tuple) -> PyTree:
        """Params from the variables and the fixed arrays (the inverse of
        ``split``); traceable."""
        var = iter(jax.tree.leaves(variables))
        fix, stat = iter(fixed), iter(self.static)
        leaves = [
            next(var) if k == VAR else next(fix) if k == FIXED else next(stat).value
            for k in self.kinds
        ]
        return jax.tree.unflatten(self.treedef, leaves)

    def select(self, tree: PyTree) -> PyTree | None:
        """The variable leaves of a pytree shaped like the whole of params
        (None when ``tree`` does not have params' structure)."""
        try:
            leaves = self.treedef.flatten_up_to(tree)
        except (ValueError, TypeError):
            return None
        if len(leaves) != len(self.kinds):
            return None
        picked = [x if k == VAR else None for x, k in zip(leaves, self.kinds, strict=True)]
        return jax.tree.unflatten(self.treedef, picked)

    def wrap(self, f: Callable) -> Callable:
        """``f(params, *args)`` as a function of ``(variables, fixed, *args)``."""
        if self.trivial:
            return lambda variables, fixed, *args: f(variables, *args)
        return lambda variables, fixed, *args: f(self.combine(variables, fixed), *args)
