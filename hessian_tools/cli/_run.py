"""An analysis run into a report folder: parts, figures, summary.json, index.html.

``run_analysis`` is the loop that ``hessian-tools analyze`` and ``demo``
share: for each part it reuses the saved result (``--resume``) or computes
it, saves it at once (``PartStore``), draws its figure, and rewrites
summary.json and index.html, so an interrupted run leaves a readable
report of every finished part. ``summary`` is summary.json's content and
``sections`` the page's, both built from the part results alone, each part
contributing through its ``Part`` record (``_analysis.PARTS``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hessian_tools._problem import Problem
from hessian_tools.cli._analysis import PARTS, Analysis, part_settings
from hessian_tools.cli._html import Figure, Section, Table, write_html
from hessian_tools.cli._part import PartResult, Settings
from hessian_tools.cli._parts_landscape import random_direction
from hessian_tools.cli._store import (
    PartStore,
    StaleResultError,
    save_figure,
    versions,
    write_json,
)

__all__ = [
    "SUMMARY_FORMAT",
    "format_summary",
    "meta_sections",
    "run_analysis",
    "sections",
    "summary",
    "summary_rows",
]

SUMMARY_FORMAT = "hessian_tools.analyze/1"


def draw_figure(result: PartResult, folder: Path, force: bool) -> None:
    """Write the part's figure (if it has one) unless it exists and not ``force``."""
    part = PARTS[result.part]
    if part.figure is None or (not force and (folder / part.figure).exists()):
        return
    save_figure(part.draw(result), folder / part.figure)


# --------------------------------------------------------------------------
# summary.json


def summary(
    problem: Problem, n: int, settings: Settings, done: dict[str, PartResult]
) -> dict[str, Any]:
    """summary.json: the numbers of every finished part, the HVPs each spent,
    the settings and the versions."""
    out: dict[str, Any] = {"format": SUMMARY_FORMAT, "problem": problem.title, "num_params": n}
    for part, result in done.items():
        out.update(PARTS[part].summary_entries(result))
    spent = {part: r.num_matvecs for part, r in done.items()}
    out["num_matvecs"] = {**spent, "total": sum(spent.values())}
    out["seconds"] = {part: r.seconds for part, r in done.items()}
    out["parts"] = list(done)
    out["figures"] = [PARTS[p].figure for p in done if PARTS[p].figure]
    out["settings"] = dataclasses.asdict(settings)
    out["versions"] = versions()
    return out


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(quantity, value) rows of the short summary table."""
    rows = [row for part in s["parts"] for row in PARTS[part].rows(s)]
    total = s["num_matvecs"]["total"]
    rows.append(("HVPs", f"{total:,}"))
    return rows


def format_summary(s: dict[str, Any]) -> str:
    """The short summary table, as text."""
    rows = summary_rows(s)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:{width}s}  {v}" for k, v in rows)


# --------------------------------------------------------------------------
# The page


def sections(s: dict[str, Any], folder: Path, prefix: str = "", level: int = 2) -> list[Section]:
    """The page's sections for one analysis from its summary; figures are
    read from ``folder`` and named ``prefix + file``. Consecutive parts with
    the same heading share a section."""
    out = [
        Section(
            s["problem"],
            [Table(("quantity", "value"), summary_rows(s), css_class="summary")],
            level,
        )
    ]
    for name in s["parts"]:
        part = PARTS[name]
        if not part.heading:
            continue
        items = list(part.section(s))
        if part.figure and (folder / part.figure).exists():
            fig = Figure.read(folder, part.figure, part.description)
            items.append(dataclasses.replace(fig, name=prefix + fig.name))
        if out[-1].title == part.heading and len(out) > 1:
            out[-1] = dataclasses.replace(out[-1], items=[*out[-1].items, *items])
        else:
            out.append(Section(part.heading, items, level + 1))
    rows = [(p, f"{s['num_matvecs'][p]:,}", f"{s['seconds'][p]:.2f}") for p in s["parts"]]
    rows.append(("total", f"{s['num_matvecs']['total']:,}", ""))
    items = [Table(("part", "HVPs", "seconds"), rows)]
    out.append(Section("HVPs spent per part", items, level + 1))
    return out


def meta_sections(settings: dict[str, Any], vers: dict[str, Any], level: int = 2) -> list:
    """The settings and versions tables."""
    return [
        Section("Settings", [Table(("setting", "value"), list(settings.items()))], level),
        Section("Versions", [Table(("package", "version"), list(vers.items()))], level),
    ]


def write_report(folder: Path, s: dict[str, Any]) -> None:
    """summary.json and index.html of one analysis."""
    write_json(folder / "summary.json", s)
    page = sections(s, folder) + meta_sections(s["settings"], s["versions"])
    write_html(folder / "index.html", f"hessian_tools analysis: {s['problem']}", page)


# --------------------------------------------------------------------------
# The loop


def run_analysis(
    problem: Problem,
    settings: Settings,
    parts: Sequence[str],
    folder: Path,
    *,
    resume: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compute (or, resuming, reuse) every part into ``folder`` and return
    the summary. Each part is saved as soon as it is done, and the report
    rewritten, so an interruption keeps every finished part.

    ``progress`` draws progress bars (on a terminal) and logs a line before
    each part and one after it; without, ``log`` gets one line per finished
    part, with its time and HVPs (a log file is not flooded).

    Raises:
        ProblemError: the problem cannot be analysed.
        ReportError: the folder cannot be written.
        StaleResultError: resuming from parts of another problem or settings.
    """
    log = log or (lambda message: None)
    folder = Path(folder)
    analysis = Analysis(problem, settings)
    if {"slice_1d", "slice_2d"} & set(parts):
        random_direction(analysis)  # no HVPs: an unknown weight layout fails now, not last
    store = PartStore(folder, problem, resume)
    # every saved part is checked before anything is computed: a refused
    # resume costs nothing
    saved = {part: store.load(part, part_settings(part, settings)) for part in parts}
    done: dict[str, PartResult] = {}
    reported = 0  # parts in the report on disk
    try:
        for i, part in enumerate(parts, 1):
            step = f"[{i}/{len(parts)}] {part}"
            result = saved[part]
            fresh = result is None
            if fresh:
                if progress:  # a terminal: the bars run under this line
                    log(f"{step}: {PARTS[part].description} ...")
                result = _compute(analysis, store, part, done, resume, progress)
                store.save(result, part_settings(part, settings))
            done[part] = result
            # drawn again from the saved arrays even when reused: a figure on
            # disk may be an older run's (an interrupt during savefig)
            draw_figure(result, folder, force=True)
            write_report(folder, summary(problem, analysis.n, settings, done))
            reported = len(done)
            if fresh:
                hvps = f"{result.num_matvecs:,} HVPs"
                # a log file gets one line per part, a terminal two (around the bars)
                lead = " " * len(step) + " " if progress else f"{step}:"
                log(f"{lead} done in {result.seconds:.1f} s, {hvps}")
            else:
                log(f"{step}: reused the saved result")
    except BaseException:
        # Ctrl-C (or an error) between saving a part and rewriting the report:
        # the report still shows every saved part (its figure is redrawn on
        # --resume)
        if len(done) > reported:
            with contextlib.suppress(Exception):
                write_report(folder, summary(problem, analysis.n, settings, done))
        raise
    return summary(problem, analysis.n, settings, done)


def _compute(analysis, store, part, done, resume, progress) -> PartResult:
    if not PARTS[part].checkpointed:
        return analysis.compute(part, done, progress=progress)
    rows = store.checkpoint(part)  # finished rows of an interrupted slice
    if not resume:
        rows.unlink(missing_ok=True)
    try:
        result = analysis.compute(part, done, progress=progress, checkpoint=str(rows))
    except ValueError as err:
        if str(rows) not in str(err):
            raise
        raise StaleResultError(
            f"cannot resume: {err} Drop --resume to start afresh, or pass another --out."
        ) from err
    rows.unlink(missing_ok=True)  # its rows are in the saved part now
    return result
