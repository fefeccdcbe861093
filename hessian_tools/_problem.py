"""``Problem``: a loss at a point with its data, the input of ``hessian-tools analyze``.

A core type (``ht.Problem``) so that a model's factory needs nothing from
the command-line application (``hessian_tools.cli``), which only reads it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Problem"]


@dataclasses.dataclass(frozen=True)
class Problem:
    """A loss at a point, with its data: the input of ``hessian-tools analyze``.

    Attributes:
        loss: the scalar loss ``loss(params, *args)`` (a per-sample mean when
            ``batches`` is given).
        params: the point, any pytree (a dict of arrays, an ``eqx.Module``,
            an NNX ``State``); its floating-point arrays are the variables,
            every other leaf is held fixed.
        args: data passed to ``loss`` after params.
        batches: a list of argument tuples instead of (or after) ``args``:
            the analysis is then of the mean loss over all samples, as in
            ``HessianOperator``.
        name: shown in the report (default: the loss's name).
        filter_axis: the filter axis of the weights for the filter-normalised
            random direction, as in ``landscape.random_direction``; needed
            only where the model cannot tell it (``landscape.filter_axes``
            reads it from the contractions; an embedding table cannot be
            read) and the weights are named neither ``kernel`` (Flax) nor
            ``weight`` (Equinox, PyTorch style).

    Example, a file ``model.py`` for ``hessian-tools analyze model.py:make``::

        def make():
            x, y = load_data()
            return ht.Problem(loss, init_params(), args=(x, y), name="my model")
    """

    loss: Callable[..., Any]
    params: Any
    args: tuple = ()
    batches: Sequence | None = None
    name: str | None = None
    filter_axis: int | Callable | None = None

    def __post_init__(self) -> None:
        if not callable(self.loss):
            raise TypeError(f"Problem.loss must be callable; got {type(self.loss).__name__}.")
        if isinstance(self.args, list):
            object.__setattr__(self, "args", tuple(self.args))
        if not isinstance(self.args, tuple):
            raise TypeError(
                f"Problem.args must be a tuple of the loss's data arguments; got "
                f"{type(self.args).__name__} (write args=(x,) for one argument)."
            )
        if self.batches is not None and not isinstance(self.batches, (list, tuple)):
            raise TypeError(
                "Problem.batches must be a list or tuple of argument tuples (read once per "
                f"part, so a one-shot iterator will not do); got {type(self.batches).__name__}."
            )
        if self.name is not None and not isinstance(self.name, str):
            raise TypeError(f"Problem.name must be a str or None; got {type(self.name).__name__}.")

    @property
    def title(self) -> str:
        """The name, or the loss's qualified name."""
        return self.name or getattr(self.loss, "__qualname__", type(self.loss).__name__)
