"""An analysis run into a report folder: parts, figures, summary.json, index.html.

``run_analysis`` is the loop that ``hessian-tools analyze`` and ``demo``
share: for each part it reuses the saved result (``--resume``) or computes
it, saves it at once (``PartStore``), draws its figure, and rewrites
summary.json and index.html, so an interrupted run leaves a readable
report of every finished part. ``summary`` is summary.json's content and
``sections`` the page's, both built from the part results alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from hessian_tools._parts import Analysis
from hessian_tools._report import (
    Figure,
    PartStore,
    Section,
    StaleResultError,
    Table,
    save_figure,
    versions,
    write_html,
    write_json,
)
from hessian_tools.analysis import PartResult, Problem, Settings, part_settings

__all__ = [
    "SUMMARY_FORMAT",
    "format_summary",
    "run_analysis",
    "sections",
    "summary",
    "summary_rows",
]

SUMMARY_FORMAT = "hessian_tools.analyze/1"

DESCRIPTIONS = {
    "point": "loss and gradient",
    "classification": "kind and index of the point",
    "eigenvalues": "top-k and bottom-k eigenvalues",
    "trace": "trace estimate",
    "density": "spectral density",
    "slice_1d": "1-D slices (top eigenvector, random direction)",
    "slice_2d": "2-D slice (top and bottom eigenvectors)",
    "blocks": "per-layer top eigenvalue and trace",
}
FIGURES = {
    "eigenvalues": "eigenvalues.png",
    "density": "density.png",
    "slice_1d": "slice_1d.png",
    "slice_2d": "slice_2d.png",
    "blocks": "blocks.png",
}


# --------------------------------------------------------------------------
# Figures, one per part that has one


def _draw(result: PartResult) -> Any:
    import matplotlib.pyplot as plt

    from hessian_tools import plotting

    r, a = result.results, result.arrays
    if result.part == "eigenvalues":
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.6))
        for ax, which in zip(axes, ("largest", "smallest"), strict=True):
            values = np.asarray(r[which]["values"])
            plotting.plot_eigenvalues(values, ax=ax)
            ax.errorbar(np.arange(values.size), values, r[which]["error_bounds"], fmt="none")
            ax.set_title(f"{which} {values.size} (bars: certified bounds)", fontsize="medium")
    elif result.part == "density":
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        plotting.plot_spectral_density(SimpleNamespace(grid=a["grid"], density=a["density"]), ax)
        ax.set_title(
            f"negative fraction {r['negative_fraction']:.3g} ± {r['negative_fraction_stderr']:.2g}",
            fontsize="medium",
        )
    elif result.part == "slice_1d":
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        lines = [SimpleNamespace(alphas=a["alphas"], values=a[d]) for d in r["directions"]]
        labels = ["top eigenvector", f"random ({r['normalization'].split(' ')[0]}-normalised)"]
        plotting.plot_slice_1d(lines, ax, labels=labels)
        ax.set_xlabel(f"alpha (direction norm {r['direction_norm']:.3g})")
    elif result.part == "slice_2d":
        fig, ax = plt.subplots(figsize=(6.4, 5.0))
        plotting.plot_slice_2d(SimpleNamespace(xs=a["xs"], ys=a["ys"], values=a["values"]), ax)
        ax.plot([0], [0], "k+", markersize=12)
        ax.set_xlabel("top eigenvector")
        ax.set_ylabel("bottom eigenvector")
    elif result.part == "blocks":
        blocks = [
            SimpleNamespace(
                name=b["name"],
                values=[b["top"]],
                error_bounds=[b["top_error_bound"]],
                trace=SimpleNamespace(value=b["trace"], stderr=b["trace_stderr"]),
            )
            for b in r["blocks"]
        ]
        fig, axes = plt.subplots(1, 2, figsize=(9.6, 3.8))
        for ax, quantity in zip(axes, ("top", "trace"), strict=True):
            key = "top" if quantity == "top" else "trace"
            positive = all(b[key] > 0 for b in r["blocks"])
            plotting.plot_block_spectra(blocks, ax, quantity=quantity, log=positive)
    else:
        return None
    fig.tight_layout()
    return fig


def draw_figure(result: PartResult, folder: Path, force: bool) -> None:
    """Write the part's figure (if it has one) unless it exists and not ``force``."""
    name = FIGURES.get(result.part)
    if name is None or (not force and (folder / name).exists()):
        return
    save_figure(_draw(result), folder / name)


# --------------------------------------------------------------------------
# summary.json


def summary(
    problem: Problem, n: int, settings: Settings, done: dict[str, PartResult]
) -> dict[str, Any]:
    """summary.json: the numbers of every finished part, the HVPs each spent,
    the settings and the versions."""
    out: dict[str, Any] = {"format": SUMMARY_FORMAT, "problem": problem.title, "num_params": n}
    for part, result in done.items():
        if part == "point":
            out.update(result.results)
        elif part == "blocks":
            out["blocks"] = result.results["blocks"]
        elif part == "slice_1d":
            arrays = {k: [float(v) for v in result.arrays[k]] for k in ("alphas", "random")}
            arrays["top_eigenvector"] = [float(v) for v in result.arrays["top_eigenvector"]]
            out[part] = {**result.results, **arrays}
        elif part == "slice_2d":
            values = result.arrays["values"]
            out[part] = {
                **result.results,
                "shape": list(values.shape),
                "min": float(np.nanmin(values)),
                "max": float(np.nanmax(values)),
            }
        else:
            out[part] = result.results
    spent = {part: r.num_matvecs for part, r in done.items()}
    out["num_matvecs"] = {**spent, "total": sum(spent.values())}
    out["num_matvecs_estimated"] = [p for p, r in done.items() if r.matvecs_estimated]
    out["seconds"] = {part: r.seconds for part, r in done.items()}
    out["parts"] = list(done)
    out["figures"] = [FIGURES[p] for p in done if p in FIGURES]
    out["settings"] = dataclasses.asdict(settings)
    out["versions"] = versions()
    return out


def _pm(value: float, err: float) -> str:
    return f"{value:.6g} ± {err:.2g}"


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(quantity, value) rows of the short summary table."""
    rows = [
        ("problem", s["problem"]),
        ("parameters", f"{s['num_params']:,}"),
        ("loss", f"{s['loss']:.6g}"),
        ("gradient norm", f"{s['grad_norm']:.3g}"),
    ]
    if "classification" in s:
        c = s["classification"]
        index = str(c["index"]) if c["exact"] else f"≈ {c['index']} ± {c['index_stderr']:.2g}"
        rows += [("kind", c["kind"]), ("index", index)]
    if "eigenvalues" in s:
        for which in ("largest", "smallest"):
            e = s["eigenvalues"][which]
            rows.append((f"{which} eigenvalue", _pm(e["values"][0], e["error_bounds"][0])))
    if "trace" in s:
        rows.append(("trace", _pm(s["trace"]["value"], s["trace"]["stderr"])))
    if "density" in s:
        d = s["density"]
        rows.append(
            ("negative fraction", _pm(d["negative_fraction"], d["negative_fraction_stderr"]))
        )
    total = s["num_matvecs"]["total"]
    rows.append(("HVPs", f"{'≈ ' if s['num_matvecs_estimated'] else ''}{total:,}"))
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
    read from ``folder`` and named ``prefix + file``."""
    sub = level + 1

    def figure(part: str, caption: str) -> list:
        if part not in s["parts"] or not (folder / FIGURES[part]).exists():
            return []
        fig = Figure.read(folder, FIGURES[part], caption)
        return [dataclasses.replace(fig, name=prefix + fig.name)]

    out = [
        Section(
            s["problem"],
            [Table(("quantity", "value"), summary_rows(s), css_class="summary")],
            level,
        )
    ]
    if "classification" in s:
        c = s["classification"]
        how = (
            "from all n eigenvalues of the dense Hessian"
            if c["exact"]
            else f"the kind from the extreme eigenvalues, the index estimated from the spectral "
            f"density (standard error {c['index_stderr']:.2g})"
        )
        out.append(
            Section(
                "Classification",
                [
                    f"{c['kind']} ({c['definiteness']} Hessian), index {c['index']}, {how}. "
                    f"An eigenvalue counts as zero within tol = {c['tol']:.3g}; the point is "
                    f"critical when the gradient norm is at most {c['grad_tol']:.3g}."
                ],
                sub,
            )
        )
    if "eigenvalues" in s:
        rows = []
        for which in ("largest", "smallest"):
            e = s["eigenvalues"][which]
            for i, (v, b) in enumerate(zip(e["values"], e["error_bounds"], strict=True)):
                rows.append((which, i + 1, v, f"{b:.2e}", "yes" if e["converged"] else "no"))
        items = [
            "The algebraically largest and smallest eigenvalues, each with its certified "
            "error bound (eigenpairs; exact when computed densely).",
            Table(("end", "#", "eigenvalue", "error bound", "converged"), rows),
            *figure("eigenvalues", "top-k and bottom-k eigenvalues"),
        ]
        out.append(Section("Eigenvalues", items, sub))
    if "trace" in s or "density" in s:
        items = []
        if "trace" in s:
            t = s["trace"]
            items.append(
                f"Trace {_pm(t['value'], t['stderr'])} (standard error; method {t['method']}, "
                f"{t['num_matvecs']} HVPs)."
            )
        if "density" in s:
            d = s["density"]
            fraction = _pm(d["negative_fraction"], d["negative_fraction_stderr"])
            items.append(
                f"Spectral density by stochastic Lanczos quadrature ({d['num_probes']} probes, "
                f"{d['num_matvecs']} HVPs): a fraction {fraction} of the eigenvalues lies "
                f"below -0.001 lambda_max, about {d['index_estimate']:.1f} of "
                f"{s['num_params']} (the classification's index also counts negative "
                "eigenvalues closer to zero, down to its tol)."
            )
            items += figure("density", "spectral density (log scale)")
        out.append(Section("Trace and spectral density", items, sub))
    if "slice_1d" in s or "slice_2d" in s:
        items = []
        if "slice_1d" in s:
            items.append(
                f"The loss along the top eigenvector and along a random direction "
                f"({s['slice_1d']['normalization']} normalisation, Li et al. 2018), both of "
                f"norm {s['slice_1d']['direction_norm']:.3g}; alpha 0 is the point."
            )
            items += figure("slice_1d", "1-D slices")
        if "slice_2d" in s:
            items.append(
                "The loss over the plane of the top and bottom eigenvectors (same norm), "
                "centred on the point (+)."
            )
            items += figure("slice_2d", "2-D slice")
        out.append(Section("Loss landscape", items, sub))
    if "blocks" in s:
        rows = [
            (
                b["name"],
                b["n"],
                _pm(b["top"], b["top_error_bound"]),
                _pm(b["trace"], b["trace_stderr"]),
            )
            for b in s["blocks"]
        ]
        items = [
            "Diagonal blocks of the Hessian, one per layer (the other parameters held fixed).",
            Table(("block", "parameters", "top eigenvalue", "trace"), rows),
            *figure("blocks", "per-layer top eigenvalue and trace"),
        ]
        out.append(Section("Per-layer spectra", items, sub))
    est = set(s["num_matvecs_estimated"])
    rows = [
        (p, f"{'≈ ' if p in est else ''}{s['num_matvecs'][p]:,}", f"{s['seconds'][p]:.2f}")
        for p in s["parts"]
    ]
    rows.append(("total", f"{'≈ ' if est else ''}{s['num_matvecs']['total']:,}", ""))
    items = [Table(("part", "HVPs", "seconds"), rows)]
    if est:
        items.append(
            "≈: classify does not report its HVP count on the Lanczos path; this is its "
            "documented estimate (classify_cost)."
        )
    out.append(Section("HVPs spent per part", items, sub))
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

    Raises:
        ProblemError: the problem cannot be analysed.
        ReportError: the folder cannot be written.
        StaleResultError: resuming from parts of another problem or settings.
    """
    log = log or (lambda message: None)
    folder = Path(folder)
    analysis = Analysis(problem, settings)
    if {"slice_1d", "slice_2d"} & set(parts):
        analysis.random_direction()  # no HVPs: an unknown weight layout fails now, not last
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
                log(f"{step}: {DESCRIPTIONS[part]} ...")
                result = _compute(analysis, store, part, done, resume, progress)
                store.save(result, part_settings(part, settings))
            done[part] = result
            # drawn again from the saved arrays even when reused: a figure on
            # disk may be an older run's (an interrupt during savefig)
            draw_figure(result, folder, force=True)
            write_report(folder, summary(problem, analysis.n, settings, done))
            reported = len(done)
            if fresh:
                hvps = f"{'≈ ' if result.matvecs_estimated else ''}{result.num_matvecs:,} HVPs"
                log(f"{' ' * len(step)}  done in {result.seconds:.1f} s, {hvps}")
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
    if part != "slice_2d":
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
