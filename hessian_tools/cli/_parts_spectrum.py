"""The spectral parts of the analysis: point, classification, eigenvalues,
trace and density, each one ``Part`` record (computation, figure, summary
rows, report section) built on the library's public API."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from hessian_tools.cli._part import Computed, Part, PartResult, floats, pm
from hessian_tools.critical import classify
from hessian_tools.density import spectral_density
from hessian_tools.eigen import eigenpairs
from hessian_tools.estimators import trace

__all__ = ["CLASSIFICATION", "DENSITY", "EIGENVALUES", "POINT", "TRACE"]

# --------------------------------------------------------------------------
# point: loss, gradient norm, number of parameters (one gradient)


def _point(an: Any, key: Any, done: dict, progress: bool, checkpoint: Any) -> Computed:
    value, grad = an.op.value_and_grad()
    variables = an.op.ravel(an.op.variables)
    results = {
        "num_params": int(an.n),
        "loss": float(value),
        "grad_norm": float(np.linalg.norm(np.asarray(an.op.ravel(grad), np.float64))),
        "params_norm": float(np.linalg.norm(np.asarray(variables, np.float64))),
        "dtype": str(variables.dtype),
    }
    return Computed(results, {}, 0)


POINT = Part(
    "point",
    "loss and gradient",
    _point,
    summarize=lambda result: dict(result.results),
    rows=lambda s: [
        ("problem", s["problem"]),
        ("parameters", f"{s['num_params']:,}"),
        ("loss", f"{s['loss']:.6g}"),
        ("gradient norm", f"{s['grad_norm']:.3g}"),
    ],
)

# --------------------------------------------------------------------------
# classification: classify (kind, index or its estimate ± stderr)


def _classification(an: Any, key: Any, done: dict, progress: bool, checkpoint: Any) -> Computed:
    p = an.problem
    cp = classify(p.loss, p.params, *p.args, batches=p.batches, key=key, progress=progress)
    results = {
        "kind": cp.kind,
        "index": int(cp.index),
        # inf where the index was not estimated (a not-critical point): null
        "index_stderr": float(cp.index_stderr) if np.isfinite(cp.index_stderr) else None,
        "exact": bool(cp.exact),
        "num_zero": int(cp.num_zero),
        "definiteness": cp.definiteness,
        "tol": float(cp.tol),
        "grad_tol": float(cp.grad_tol),
    }
    arrays = {"eigenvalues": np.asarray(cp.eigenvalues)}
    return Computed(results, arrays, int(cp.num_matvecs))


def _classification_rows(s: dict) -> list:
    c = s["classification"]
    return [("kind", c["kind"]), ("index", _index_text(c))]


def _index_text(c: dict) -> str:
    if c["exact"]:
        return str(c["index"])
    if c["index_stderr"] is None:  # not estimated: the negatives found
        return f"≥ {c['index']}"
    return f"≈ {c['index']} ± {c['index_stderr']:.2g}"


def _classification_section(s: dict) -> list:
    c = s["classification"]
    how = (
        "from all n eigenvalues of the dense Hessian"
        if c["exact"]
        else "the kind from the extreme eigenvalues, the index not estimated at a point that "
        "is not critical (a lower bound: the negative eigenvalues found)"
        if c["index_stderr"] is None
        else f"the kind from the extreme eigenvalues, the index estimated from the spectral "
        f"density (standard error {c['index_stderr']:.2g})"
    )
    return [
        f"{c['kind']} ({c['definiteness']} Hessian), index {_index_text(c)}, {how}. "
        f"An eigenvalue counts as zero within tol = {c['tol']:.3g}; the point is "
        f"critical when the gradient norm is at most {c['grad_tol']:.3g}."
    ]


CLASSIFICATION = Part(
    "classification",
    "kind and index of the point",
    _classification,
    settings=("seed",),
    rows=_classification_rows,
    heading="Classification",
    section=_classification_section,
)

# --------------------------------------------------------------------------
# eigenvalues: eigenpairs(which="both"), top-k and bottom-k with their bounds


def _eigenvalues(an: Any, key: Any, done: dict, progress: bool, checkpoint: Any) -> Computed:
    # One solve for both ends (which="both": one dense Hessian, or one
    # Krylov space), which with the default top_k = 6 is also the solver
    # that classify compiled for its k_per_end = 6 eigenpairs at each end.
    if an.n == 1:
        ep = eigenpairs(an.op, 1, key=key, progress=progress)
        k, ends = 1, {"largest": [0], "smallest": [0]}
    else:
        k = max(1, min(an.settings.top_k, an.n // 2))
        ep = eigenpairs(an.op, 2 * k, which="both", key=key, progress=progress)
        # ascending: the k smallest first, the k largest last
        ends = {"largest": list(range(2 * k - 1, k - 1, -1)), "smallest": list(range(k))}
    values, bounds = np.asarray(ep.values), np.asarray(ep.error_bounds)
    vectors = np.asarray(ep.vectors)
    results: dict = {"k": k, "num_matvecs": int(ep.num_matvecs)}
    arrays = {}
    for which, idx in ends.items():
        results[which] = {
            "values": floats(values[idx]),
            "error_bounds": floats(bounds[idx]),
            "converged": bool(ep.converged),
            "exact": bool(ep.exact),
        }
        arrays[f"{which}_vector"] = vectors[:, idx[0]]
    return Computed(results, arrays, ep.num_matvecs)


def _draw_eigenvalues(result: PartResult) -> Any:
    """Left: the eigenvalues at both ends against their rank (symlog when
    they span decades); right: each one's certified error bound relative to
    |eigenvalue|, on a log scale, where a bound of 1e-6 can be read."""
    import matplotlib.pyplot as plt

    r = result.results
    fig, (ax, rel) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    magnitudes, exact = [], True
    for which, marker in (("largest", "o"), ("smallest", "s")):
        values = np.asarray(r[which]["values"], dtype=np.float64)
        bounds = np.asarray(r[which]["error_bounds"], dtype=np.float64)
        rank = np.arange(1, values.size + 1)
        ax.plot(rank, values, marker=marker, linestyle="-", label=f"{which} {values.size}")
        ratio = bounds / np.maximum(np.abs(values), np.finfo(np.float64).tiny)
        shown = np.where(ratio > 0, ratio, np.nan)  # a zero bound has no logarithm
        if np.isfinite(shown).any():
            rel.plot(rank, shown, marker=marker, linestyle="-", label=which)
        magnitudes.append(np.abs(values))
        exact = exact and r[which]["exact"]
    nonzero = np.concatenate(magnitudes)
    nonzero = nonzero[nonzero > 0]
    if nonzero.size and nonzero.max() > 100 * nonzero.min():
        # both ends readable when one is decades larger than the other
        ax.set_yscale("symlog", linthresh=float(nonzero.min()))
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xlabel("rank at its end (1: the extreme one)")
    ax.set_ylabel("eigenvalue")
    ax.set_title("largest and smallest eigenvalues", fontsize="medium")
    ax.legend(fontsize="small")
    rel.set_xlabel("rank at its end (1: the extreme one)")
    rel.set_ylabel("error bound / |eigenvalue|")
    converged = r["largest"]["converged"] and r["smallest"]["converged"]
    rel.set_title(
        "certified relative error bound" + ("" if converged else " (NOT converged)"),
        fontsize="medium",
    )
    if rel.lines:
        rel.set_yscale("log")
        rel.legend(fontsize="small")
    else:
        rel.text(
            0.5,
            0.5,
            "every bound is 0" + (" (dense Hessian: exact)" if exact else ""),
            ha="center",
            va="center",
            transform=rel.transAxes,
        )
    for a in (ax, rel):
        a.set_xticks(np.arange(1, len(r["largest"]["values"]) + 1))
    fig.tight_layout()
    return fig


def _eigenvalue_rows(s: dict) -> list:
    rows = []
    for which in ("largest", "smallest"):
        e = s["eigenvalues"][which]
        rows.append((f"{which} eigenvalue", pm(e["values"][0], e["error_bounds"][0])))
    return rows


def _eigenvalue_section(s: dict) -> list:
    from hessian_tools.cli._html import Table

    rows = []
    for which in ("largest", "smallest"):
        e = s["eigenvalues"][which]
        for i, (v, b) in enumerate(zip(e["values"], e["error_bounds"], strict=True)):
            rows.append((which, i + 1, v, f"{b:.2e}", "yes" if e["converged"] else "no"))
    return [
        "The algebraically largest and smallest eigenvalues, each with its certified "
        "error bound (eigenpairs; exact when computed densely).",
        Table(("end", "#", "eigenvalue", "error bound", "converged"), rows),
    ]


EIGENVALUES = Part(
    "eigenvalues",
    "top-k and bottom-k eigenvalues",
    _eigenvalues,
    settings=("top_k", "seed"),
    figure="eigenvalues.png",
    draw=_draw_eigenvalues,
    rows=_eigenvalue_rows,
    heading="Eigenvalues",
    section=_eigenvalue_section,
)

# --------------------------------------------------------------------------
# trace: trace ± stderr


def _trace(an: Any, key: Any, done: dict, progress: bool, checkpoint: Any) -> Computed:
    est = trace(an.op, key=key, num_matvecs=an.settings.trace_matvecs, progress=progress)
    results = {
        "value": float(est.value),
        "stderr": float(est.stderr),
        "method": est.method,
        "num_matvecs": int(est.num_matvecs),
    }
    return Computed(results, {}, est.num_matvecs)


def _trace_section(s: dict) -> list:
    t = s["trace"]
    return [
        f"Trace {pm(t['value'], t['stderr'])} (standard error; method {t['method']}, "
        f"{t['num_matvecs']} HVPs)."
    ]


TRACE = Part(
    "trace",
    "trace estimate",
    _trace,
    settings=("trace_matvecs", "seed"),
    rows=lambda s: [("trace", pm(s["trace"]["value"], s["trace"]["stderr"]))],
    heading="Trace and spectral density",
    section=_trace_section,
)

# --------------------------------------------------------------------------
# density: spectral_density and its negative fraction


def _density(an: Any, key: Any, done: dict, progress: bool, checkpoint: Any) -> Computed:
    s = an.settings
    probes = s.num_probes
    budget = min(s.density_matvecs, probes * an.n)  # at most n steps per probe
    sd = spectral_density(an.op, key=key, num_matvecs=budget, num_probes=probes, progress=progress)
    frac, frac_err = sd.negative_fraction()
    results = {
        "negative_fraction": frac,
        "negative_fraction_stderr": frac_err,
        "index_estimate": frac * an.n,
        "lambda_min": sd.lambda_min,
        "lambda_max": sd.lambda_max,
        "num_probes": probes,
        "num_matvecs": int(sd.num_matvecs),
    }
    arrays = {
        "grid": np.asarray(sd.grid),
        "density": np.asarray(sd.density),
        "nodes": np.asarray(sd.nodes),
        "weights": np.asarray(sd.weights),
    }
    return Computed(results, arrays, sd.num_matvecs)


def _draw_density(result: PartResult) -> Any:
    import matplotlib.pyplot as plt

    from hessian_tools import plotting

    r, a = result.results, result.arrays
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    plotting.plot_spectral_density(SimpleNamespace(grid=a["grid"], density=a["density"]), ax)
    ax.set_title(
        f"negative fraction {r['negative_fraction']:.3g} ± {r['negative_fraction_stderr']:.2g}",
        fontsize="medium",
    )
    fig.tight_layout()
    return fig


def _density_section(s: dict) -> list:
    d = s["density"]
    fraction = pm(d["negative_fraction"], d["negative_fraction_stderr"])
    return [
        f"Spectral density by stochastic Lanczos quadrature ({d['num_probes']} probes, "
        f"{d['num_matvecs']} HVPs): a fraction {fraction} of the eigenvalues lies "
        f"below -0.001 lambda_max, about {d['index_estimate']:.1f} of "
        f"{s['num_params']} (the classification's index also counts negative "
        "eigenvalues closer to zero, down to its tol)."
    ]


DENSITY = Part(
    "density",
    "spectral density",
    _density,
    settings=("density_matvecs", "num_probes", "seed"),
    figure="density.png",
    draw=_draw_density,
    rows=lambda s: [
        (
            "negative fraction",
            pm(s["density"]["negative_fraction"], s["density"]["negative_fraction_stderr"]),
        )
    ],
    heading="Trace and spectral density",
    section=_density_section,
)
