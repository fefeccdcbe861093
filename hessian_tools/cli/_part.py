"""The record of one analysis part, the settings the parts compute with,
and a finished part's result.

Each part of ``hessian-tools analyze`` is one ``Part``: its name, the
settings its result depends on, the parts it needs, its computation, its
figure, its rows of the summary table and its section of the page, all in
one place (``_parts_spectrum``, ``_parts_landscape``, ``_parts_blocks``
define them; ``_analysis.PARTS`` lists them in the order they run).

A part's result depends only on the problem, the settings named in
``Part.settings`` and the parts it needs, so a saved result can be reused
(``--resume``). Every part draws its PRNG key from the seed and its own
name (``part_key``), so selecting or skipping other parts changes nothing
else.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = [
    "Computed",
    "Part",
    "PartResult",
    "ProblemError",
    "Settings",
    "floats",
    "part_key",
    "pm",
]


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


def part_key(seed: int, part: str) -> jax.Array:
    """The PRNG key of one part: the seed's key folded with the part's name."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(part.encode()) & 0x7FFFFFFF)


@dataclasses.dataclass(frozen=True)
class PartResult:
    """One finished part.

    Attributes:
        part: its name (a key of ``_analysis.PARTS``).
        results: JSON-ready numbers (floats, ints, strings, lists, dicts).
        arrays: name -> numpy array (eigenvectors, densities, slices).
        num_matvecs: HVPs spent (counted by the library's functions).
        seconds: wall-clock time it took when it was computed.
    """

    part: str
    results: dict
    arrays: dict
    num_matvecs: int
    seconds: float


class Computed(NamedTuple):
    """What a part's computation returns (``PartResult`` less its name and time)."""

    results: dict
    arrays: dict
    num_matvecs: int


def _own_results(part: str, result: PartResult) -> dict:
    return {part: result.results}


@dataclasses.dataclass(frozen=True)
class Part:
    """One part of the analysis: everything about it in one record.

    Attributes:
        name: the part's name on the command line and in the files.
        description: what it computes, for the status line.
        compute: ``compute(analysis, key, done, progress, checkpoint)`` ->
            ``Computed``: ``analysis`` an ``_analysis.Analysis`` (problem,
            settings, operator), ``key`` the part's PRNG key, ``done`` the
            finished parts by name (those in ``requires`` among them),
            ``checkpoint`` a file for work in progress (parts with
            ``checkpointed``) or None.
        settings: the ``Settings`` fields its result depends on (besides the
            problem and float64).
        requires: the parts whose results it uses.
        default: run without ``--parts``.
        checkpointed: saves its work in progress to ``checkpoint``.
        figure: its figure's file name (None: no figure).
        draw: ``draw(result)`` -> a matplotlib figure.
        summarize: ``summarize(result)`` -> its entries of summary.json
            (default ``{name: result.results}``).
        rows: ``rows(summary)`` -> its (quantity, value) rows of the short
            summary table.
        heading: the title of its section of the page; consecutive parts
            with the same heading share one section.
        section: ``section(summary)`` -> the section's paragraphs and
            tables (its figure follows them).
    """

    name: str
    description: str
    compute: Callable[..., Computed]
    settings: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    default: bool = True
    checkpointed: bool = False
    figure: str | None = None
    draw: Callable[[PartResult], Any] | None = None
    summarize: Callable[[PartResult], dict] | None = None
    rows: Callable[[dict], list] = lambda s: []
    heading: str = ""
    section: Callable[[dict], list] = lambda s: []

    def summary_entries(self, result: PartResult) -> dict:
        """Its entries of summary.json."""
        return self.summarize(result) if self.summarize else _own_results(self.name, result)


def floats(x: Any) -> list:
    """``x`` as a flat list of Python floats (JSON-ready)."""
    return [float(v) for v in np.ravel(np.asarray(x, dtype=np.float64))]


def pm(value: float, err: float) -> str:
    """``value ± err`` as text."""
    return f"{value:.6g} ± {err:.2g}"
