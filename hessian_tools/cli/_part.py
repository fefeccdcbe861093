"""Whole-model analysis: the parts behind ``hessian-tools analyze``.

A ``Problem`` bundles a loss with its parameters and data; a factory that
returns one is what the command line takes (``module:factory`` or
``file.py:factory``). The analysis computes these parts, each with the
library's public API (``hessian_tools._parts.Analysis``):

* ``point``: loss, gradient norm and number of parameters (one gradient);
* ``classification``: ``classify`` (kind, index or its estimate ± stderr);
* ``eigenvalues``: ``eigenpairs(which="both")``, the top-k and bottom-k with their
  certified error bounds (their eigenvectors feed the slices);
* ``trace``: ``trace`` ± stderr;
* ``density``: ``spectral_density`` and its negative fraction;
* ``slice_1d``: the loss along the top eigenvector and along a
  filter-normalised random direction (Li et al. 2018);
* ``slice_2d``: the loss over the plane of the top and bottom eigenvectors;
* ``blocks`` (not run by default): ``block_spectra``, per-layer top
  eigenvalue and trace.

Each part gives a ``PartResult``: JSON-ready numbers, numpy arrays and the
HVPs spent. It depends only on the problem, the settings named in
``PART_SETTINGS`` and the parts it needs, so a saved result can be reused
(``hessian-tools analyze --resume``). Every part draws its PRNG key from the
seed and its own name (``part_key``), so selecting or skipping other parts
changes nothing else.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
    "DEFAULT_PARTS",
    "PARTS",
    "PartResult",
    "Problem",
    "ProblemError",
    "Settings",
    "part_key",
    "resolve_parts",
]


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
            only when the weights are named neither ``kernel`` (Flax) nor
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


class ProblemError(ValueError):
    """The problem cannot be analysed (a non-scalar or non-finite loss, ...)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the parts compute with (the command line's options).

    Attributes:
        top_k: eigenvalues at each end (at most n // 2; default 6, the k of
            ``classify``, whose compiled solver the eigenvalues then reuse).
        grid: points per axis of the slices (odd puts the point itself on it).
        span: slice coordinates run over ``[-span, span]``, in units of the
            filter-normalised random direction's norm.
        seed: seed of every part's PRNG key (``part_key``).
        trace_matvecs: HVP budget of the trace (and of each block's trace).
        density_matvecs: HVP budget of the spectral density (default, as
            ``spectral_density``'s, 128 Lanczos steps for each of 12 probes:
            also the density that ``classify`` estimates the index from, so
            its compiled solver serves both parts).
        num_probes: probes of the spectral density.
        filter_axis: overrides ``Problem.filter_axis`` when not None.
    """

    top_k: int = 6
    grid: int = 41
    span: float = 1.0
    seed: int = 0
    trace_matvecs: int = 100
    density_matvecs: int = 1536
    num_probes: int = 12
    filter_axis: int | None = None

    def __post_init__(self) -> None:
        for name, low in (
            ("top_k", 1),
            ("grid", 3),
            ("trace_matvecs", 4),
            ("num_probes", 2),
            ("seed", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
        if not self.density_matvecs >= self.num_probes:
            raise ValueError(
                f"density_matvecs ({self.density_matvecs}) must be at least num_probes "
                f"({self.num_probes}): one Lanczos step per probe."
            )
        if not (np.isfinite(self.span) and self.span > 0):
            raise ValueError(f"span must be a positive number; got {self.span!r}.")


#: the parts in the order they run; "blocks" only when asked for
PARTS = (
    "point",
    "classification",
    "eigenvalues",
    "trace",
    "density",
    "slice_1d",
    "slice_2d",
    "blocks",
)
DEFAULT_PARTS = PARTS[:-1]
#: the settings each part's result depends on (besides the problem and x64)
PART_SETTINGS = {
    "point": (),
    "classification": ("seed",),
    "eigenvalues": ("top_k", "seed"),
    "trace": ("trace_matvecs", "seed"),
    "density": ("density_matvecs", "num_probes", "seed"),
    "slice_1d": ("grid", "span", "seed", "filter_axis"),
    "slice_2d": ("grid", "span", "seed", "filter_axis"),
    "blocks": ("trace_matvecs", "seed"),
}
#: parts whose results another part uses
REQUIRES = {"slice_1d": ("eigenvalues",), "slice_2d": ("eigenvalues",)}


def resolve_parts(selected: Sequence[str] | None = None, skipped: Sequence[str] = ()) -> list:
    """The parts to run, in ``PARTS`` order: ``selected`` (default
    ``DEFAULT_PARTS``; ``"all"`` for every part) minus ``skipped``, plus the
    parts they need (a needed part cannot be skipped). ``point`` (one
    gradient) always runs: every report states the loss and gradient."""
    if selected is None:
        selected = DEFAULT_PARTS
    elif list(selected) == ["all"]:
        selected = PARTS
    unknown = sorted({p for p in [*selected, *skipped] if p not in PARTS})
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}.")
    if "point" in skipped:
        raise ValueError("part point (loss and gradient norm) cannot be skipped.")
    wanted = set(selected) - set(skipped) | {"point"}
    for part in list(wanted):
        for need in REQUIRES.get(part, ()):
            if need in skipped:
                raise ValueError(f"part {part} needs part {need}, which was skipped.")
            wanted.add(need)
    return [p for p in PARTS if p in wanted]


def part_key(seed: int, part: str) -> jax.Array:
    """The PRNG key of one part: the seed's key folded with the part's name."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(part.encode()) & 0x7FFFFFFF)


def part_settings(part: str, settings: Settings) -> dict:
    """The settings a part's result depends on, those of the parts it needs
    included, and whether float64 is on: what a saved result must match."""
    own = {name: getattr(settings, name) for name in PART_SETTINGS[part]}
    needs = {need: part_settings(need, settings) for need in REQUIRES.get(part, ())}
    return {**own, **({"requires": needs} if needs else {}), "x64": bool(jax.config.x64_enabled)}


@dataclasses.dataclass(frozen=True)
class PartResult:
    """One finished part.

    Attributes:
        part: its name (one of ``PARTS``).
        results: JSON-ready numbers (floats, ints, strings, lists, dicts).
        arrays: name -> numpy array (eigenvectors, densities, slices).
        num_matvecs: HVPs spent (for "classification" on the Lanczos path,
            the library's estimate ``classify_cost``: see ``matvecs_estimated``).
        seconds: wall-clock time it took when it was computed.
        matvecs_estimated: ``num_matvecs`` is an estimate, not a count.
    """

    part: str
    results: dict
    arrays: dict
    num_matvecs: int
    seconds: float
    matvecs_estimated: bool = False
