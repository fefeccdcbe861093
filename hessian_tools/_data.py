"""The data a loss is evaluated on, and the mean over batches (one place).

A loss ``f(params, *args)`` sees either fixed arguments ``args`` or, with
``batches=``, each batch's arguments in turn. Everything in hessian_tools
that evaluates a loss (HVPs, GGN and Fisher products, gradients, slices,
directions) takes the **mean over all samples**,

    sum_b (size_b / N) f(params, *batch_b),   N = sum_b size_b,

where ``size_b`` is the leading-axis length of batch b's arrays. With equal
batch sizes this divides by the number of batches exactly once; uneven
batches are weighted by their size, so ``f`` must be a per-sample mean.

Arguments that are the same for every batch (BatchNorm statistics, a
mask, hyperparameters) are passed as ``*args`` next to ``batches=``: they
come first, ``f(params, *args, *batch_b)``, and are not split by sample.

Batches are stacked once, group by group of equal shapes, onto the device
(the whole data set is held there; a remainder batch of another size forms
a group of its own), and the mean is a ``lax.scan`` over each group inside
the compiled function: no host round trip per batch or per product. The
curvlinops ``_empirical_risk.py`` pattern, compiled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Data", "as_args"]


def as_args(batch: Any) -> tuple:
    """A batch as an argument tuple: tuples and lists are spread, anything
    else is a single argument."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def _batch_size(args: tuple, i: int) -> int:
    sizes = {int(np.shape(leaf)[0]) for leaf in jax.tree.leaves(args) if np.ndim(leaf) >= 1}
    if not sizes:
        raise ValueError(
            f"batch {i} must have an array argument with a leading (sample) axis, so that "
            "its weight in the mean loss can be told; got none."
        )
    if len(sizes) > 1:
        raise ValueError(
            f"the arrays of batch {i} must agree on the leading (sample) axis; got lengths "
            f"{sorted(sizes)}. Every array argument of a batch carries the samples along "
            "axis 0 (bind fixed arrays with functools.partial instead)."
        )
    size = sizes.pop()
    if size == 0:
        raise ValueError(f"batch {i} is empty: its leading axis has length 0.")
    return size


def _signature(args: tuple) -> tuple:
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((np.shape(x), jnp.result_type(x)) for x in leaves)


@jax.tree_util.register_pytree_node_class
class Data:
    """Fixed arguments, or batches stacked by shape with their weights.

    Build it with ``Data.create(args, batches)``. It is a pytree (the arrays
    are its leaves), so it passes into jitted functions as an argument.
    """

    def __init__(self, groups: tuple, batched: bool, sizes: tuple[int, ...], shared: tuple = ()):
        self.groups = groups  # fixed: (args,); batched: ((stacked_args, weights), ...)
        self.batched = batched
        self.sizes = sizes  # batch sizes, in the order given (static)
        self.shared = shared  # arguments before each batch's, the same for all

    def tree_flatten(self):
        return (self.groups, self.shared), (self.batched, self.sizes)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0], *aux, shared=children[1])

    @classmethod
    def create(cls, args: tuple, batches: Iterable | None) -> Data:
        """Check and store ``args``, or ``batches`` with ``args`` as the
        arguments shared by every batch (passed before the batch's own).

        Raises:
            ValueError: an empty batch list or batch; batch arrays that
                disagree on the sample axis.
            TypeError: a one-shot iterator (batches are read once here, but
                the error keeps callers from relying on lazy loading).
        """
        if batches is None:
            return cls((tuple(args),), False, ())
        if iter(batches) is batches:
            raise TypeError(
                "batches must be a re-iterable collection (a list or tuple of argument "
                "tuples); got a one-shot iterator or generator. Wrap it in list(...)."
            )
        items = [as_args(b) for b in batches]
        if not items:
            raise ValueError("batches must hold at least one batch; got an empty collection.")
        sizes = tuple(_batch_size(a, i) for i, a in enumerate(items))
        total = float(sum(sizes))
        order: dict[tuple, list[int]] = {}
        for i, a in enumerate(items):
            order.setdefault(_signature(a), []).append(i)
        groups = []
        for idx in order.values():
            stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[items[i] for i in idx])
            groups.append((stacked, np.asarray([sizes[i] / total for i in idx])))
        return cls(tuple(groups), True, sizes, tuple(args))

    @property
    def num_batches(self) -> int:
        return len(self.sizes) if self.batched else 1

    def example_args(self) -> tuple:
        """The arguments of one batch (for shape checks; no copy)."""
        if not self.batched:
            return self.groups[0]
        stacked = self.groups[0][0]
        batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), stacked)
        return (*self.shared, *batch)

    def mean(self, fn: Callable[..., Any]) -> Any:
        """``sum_b w_b fn(*shared, *args_b)`` (a pytree sum); ``fn(*args)``
        for fixed data. Traceable: one ``lax.scan`` per group of equal-shape
        batches."""
        if not self.batched:
            return fn(*self.groups[0])
        total = None
        for stacked, weights in self.groups:
            out = jax.eval_shape(fn, *self.shared, *jax.tree.map(lambda x: x[0], stacked))
            init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out)

            def body(acc, item):
                args, w = item
                val = fn(*self.shared, *args)
                return jax.tree.map(lambda a, v: a + jnp.asarray(w, v.dtype) * v, acc, val), None

            part, _ = jax.lax.scan(body, init, (stacked, jnp.asarray(weights)))
            total = part if total is None else jax.tree.map(jnp.add, total, part)
        return total
