"""The parts of ``hessian-tools analyze`` and the operator they share.

``PARTS`` lists every ``Part`` record in the order the parts run (each
defined, with its figure and report section, in ``_parts_spectrum``,
``_parts_landscape`` or ``_parts_blocks``). ``Analysis(problem, settings)``
builds the Hessian operator once, which checks that the loss is a real
scalar and finite at params, and ``compute(part, done)`` runs one part
through the library's public API, returning a ``PartResult``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax

from hessian_tools._problem import Problem
from hessian_tools.cli._part import Part, PartResult, ProblemError, Settings, part_key
from hessian_tools.cli._parts_blocks import BLOCKS
from hessian_tools.cli._parts_landscape import SLICE_1D, SLICE_2D
from hessian_tools.cli._parts_spectrum import (
    CLASSIFICATION,
    DENSITY,
    EIGENVALUES,
    POINT,
    TRACE,
)
from hessian_tools.operators import HessianOperator

__all__ = ["DEFAULT_PARTS", "PARTS", "Analysis", "part_settings", "resolve_parts"]

#: every part, by name, in the order they run
PARTS: dict[str, Part] = {
    p.name: p
    for p in (POINT, CLASSIFICATION, EIGENVALUES, TRACE, DENSITY, SLICE_1D, SLICE_2D, BLOCKS)
}
#: the parts run without ``--parts`` ("blocks" only when asked for)
DEFAULT_PARTS = tuple(name for name, p in PARTS.items() if p.default)


def resolve_parts(selected: Sequence[str] | None = None, skipped: Sequence[str] = ()) -> list:
    """The parts to run, in ``PARTS`` order: ``selected`` (default
    ``DEFAULT_PARTS``; ``"all"`` for every part) minus ``skipped``, plus the
    parts they need (a needed part cannot be skipped). ``point`` (one
    gradient) always runs: every report states the loss and gradient."""
    if selected is None:
        selected = DEFAULT_PARTS
    elif list(selected) == ["all"]:
        selected = list(PARTS)
    unknown = sorted({p for p in [*selected, *skipped] if p not in PARTS})
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}.")
    if "point" in skipped:
        raise ValueError("part point (loss and gradient norm) cannot be skipped.")
    wanted = set(selected) - set(skipped) | {"point"}
    for part in list(wanted):
        for need in PARTS[part].requires:
            if need in skipped:
                raise ValueError(f"part {part} needs part {need}, which was skipped.")
            wanted.add(need)
    return [p for p in PARTS if p in wanted]


def part_settings(part: str, settings: Settings) -> dict:
    """The settings a part's result depends on, those of the parts it needs
    included, and whether float64 is on: what a saved result must match."""
    record = PARTS[part]
    own = {name: getattr(settings, name) for name in record.settings}
    needs = {need: part_settings(need, settings) for need in record.requires}
    return {**own, **({"requires": needs} if needs else {}), "x64": bool(jax.config.x64_enabled)}


class Analysis:
    """The parts of one problem under one set of settings.

    Args:
        problem: a ``Problem``.
        settings: a ``Settings``.

    Raises:
        ProblemError: a loss that is not a real scalar, or not finite at
            params; params without floating-point arrays.
    """

    def __init__(self, problem: Problem, settings: Settings):
        self.problem, self.settings = problem, settings
        try:
            self.op = HessianOperator(
                problem.loss, problem.params, *problem.args, batches=problem.batches
            )
        except (ValueError, TypeError, FloatingPointError) as err:
            raise ProblemError(f"problem {problem.title!r}: {err}") from err
        self.n = self.op.n

    def compute(
        self,
        part: str,
        done: dict[str, PartResult],
        *,
        progress: bool = False,
        checkpoint: str | None = None,
    ) -> PartResult:
        """Compute one part; ``done`` holds the parts it needs.
        ``checkpoint``: a file for a checkpointed part's work in progress."""
        t0 = time.perf_counter()
        key = part_key(self.settings.seed, part)
        out = PARTS[part].compute(self, key, done, progress, checkpoint)
        seconds = time.perf_counter() - t0
        return PartResult(part, out.results, out.arrays, int(out.num_matvecs), seconds)
