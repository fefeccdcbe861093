"""The toy problems of ``hessian-tools demo``.

Every critical point of the built-in 2-D problems is found by Newton-MR
from a grid of starts and classified, and checked against the known list;
the linear autoencoder's critical levels against Baldi & Hornik's (1989)
closed form. ``run_toy`` prints a table and returns the page's sections.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools.cli._html import Figure, Raw, Section, Table
from hessian_tools.cli._store import save_figure

KIND_ORDER = ("minimum", "saddle", "maximum", "degenerate")


# --------------------------------------------------------------------------
# Toy problems


def _grid(bounds, num):
    (x0, x1), (y0, y1) = bounds
    xs, ys = np.meshgrid(np.linspace(x0, x1, num), np.linspace(y0, y1, num))
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _inside(x, bounds, slack=1e-9):
    return all(lo - slack <= xi <= hi + slack for xi, (lo, hi) in zip(x, bounds, strict=True))


# Near a degenerate critical point (Hessian singular there) the Hessian at
# any nearby point shows the local shape instead: the monkey saddle's found
# point, 1e-10 from the origin, has eigenvalues -/+1e-9, a saddle.
COMPATIBLE = {"degenerate": {"degenerate", "saddle"}}


def _match(found, known, atol):
    """Indices of known points matched (same place and kind) by found points;
    a second point matching the same known one counts as unexpected."""
    matched, extra = set(), []
    for cp in found:
        x = np.asarray(cp.x, float)
        d = [np.linalg.norm(x - p) for p, _ in known]
        j = int(np.argmin(d))
        kinds = COMPATIBLE.get(known[j][1], {known[j][1]})
        if d[j] <= atol and cp.kind in kinds and j not in matched:
            matched.add(j)
        else:
            extra.append(cp)
    return matched, extra


def _row(cp, problem, **extra):
    """One critical point as a JSON-ready dict."""
    return {
        "problem": problem,
        "kind": cp.kind,
        "index": cp.index,
        "num_zero": cp.num_zero,
        "definiteness": cp.definiteness,
        "value": float(cp.value),
        "grad_norm": float(cp.grad_norm),
        **extra,
    }


def toy_problem(name, num_starts, dtype, out):
    """Find, classify and draw the critical points of one toy problem:
    (rows, summary, figure)."""
    import matplotlib.pyplot as plt

    import hessian_tools as ht

    prob = ht.problems.TOY_2D[name]
    starts = jnp.asarray(_grid(prob.bounds, num_starts), dtype)
    t0 = time.perf_counter()
    found = ht.find_critical_points(prob.f, starts)
    seconds = time.perf_counter() - t0
    inside = [cp for cp in found if _inside(np.asarray(cp.x, float), prob.bounds)]
    atol = 1e-3 if dtype == jnp.float32 else 1e-7
    matched, extra = _match(inside, list(prob.critical_points), atol)

    fmin = min(float(cp.value) for cp in inside) if inside else 0.0
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    if prob.log_scale:
        g = lambda x: jnp.log10(1.0 + prob.f(x) - fmin)
        label = "log10(1 + f - f_min)"
    else:
        g, label = prob.f, "f"
    ht.plotting.plot_function_2d(g, *prob.bounds, ax=ax, num=160, critical_points=inside)
    ax.set_title(f"{name}: {len(inside)} critical points ({label})", fontsize="medium")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    fig.tight_layout()
    png = save_figure(fig, out / f"{name}.png")
    rows = [
        _row(
            cp,
            name,
            x=[float(v) for v in np.asarray(cp.x, float)],
            eigenvalues=[float(v) for v in np.asarray(cp.eigenvalues, float)],
        )
        for cp in inside
    ]
    summary = {
        "problem": name,
        "starts": int(starts.shape[0]),
        "found": len(inside),
        "known": len(prob.critical_points),
        "matched": len(matched),
        "unexpected": len(extra),
        "seconds": seconds,
    }
    return rows, summary, Figure(f"{name}.png", png)


def autoencoder(dtype, out):
    """Critical levels of the linear autoencoder: (rows, figure)."""
    import matplotlib.pyplot as plt

    import hessian_tools as ht

    lam = [5.0, 4.0, 3.0, 2.0, 1.0]
    p = 2
    _, s, _ = ht.problems.linear_autoencoder_critical_point(lam, [0, 1], p, dtype=dtype)
    key = jax.random.PRNGKey(0)
    m = 256
    starts = {
        "W1": 0.8 * jax.random.normal(key, (m, p, len(lam)), dtype),
        "W2": 0.8 * jax.random.normal(jax.random.fold_in(key, 1), (m, len(lam), p), dtype),
    }
    found = ht.find_critical_points(ht.problems.linear_autoencoder, starts, s, dedup_tol=1e-3)
    # The GL(p) symmetry makes every critical point one of a continuum; keep
    # one representative per loss level for the figure and the table.
    levels = {}
    for cp in found:
        levels.setdefault(round(float(cp.value), 4), cp)
    reps = sorted(levels.values(), key=lambda cp: float(cp.value))
    # Baldi & Hornik: every critical loss is (1/2) sum of the eigenvalues left out
    closed_form = {
        0.5 * (sum(lam) - sum(lam[i] for i in subset))
        for r in range(p + 1)
        for subset in itertools.combinations(range(len(lam)), r)
    }
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ht.plotting.plot_index_vs_loss(reps, ax=ax)
    ax.set_title(
        f"linear autoencoder (d = {len(lam)}, p = {p}): loss rises with the index",
        fontsize="medium",
    )
    fig.tight_layout()
    name = "linear_autoencoder_index_vs_loss.png"
    png = save_figure(fig, out / name)
    rows = [
        _row(
            cp,
            "linear_autoencoder",
            closed_form=any(abs(float(cp.value) - v) <= 1e-4 * v for v in closed_form),
        )
        for cp in reps
    ]
    return rows, Figure(name, png)


def toy_sections(summaries, rows, figures, ae_rows, ae_figure) -> list[Section]:
    """The toy problems' part of the page."""
    ok = [s["matched"] == s["known"] and s["unexpected"] == 0 for s in summaries]
    out = [
        Section(
            "Critical points of the toy problems",
            [
                Raw(
                    "<p>Every point was found by Newton-MR (MINRES steps, backtracking on "
                    "|grad f|<sup>2</sup>) from a grid of starts, deduplicated, and classified "
                    "by the signs of its Hessian's eigenvalues. Known points are those listed "
                    "in <code>hessian_tools.problems</code>. A point found next to a "
                    "degenerate critical point (the monkey saddle's origin) is labelled by the "
                    "Hessian's signs where it landed, which show the local shape (a "
                    "saddle).</p>"
                ),
                Table(
                    ("problem", "starts", "found", "known", "matched", "unexpected", "seconds"),
                    [
                        [s[k] for k in ("problem", "starts", "found", "known", "matched")]
                        + [s["unexpected"], f"{s['seconds']:.2f}"]
                        for s in summaries
                    ],
                    bad=frozenset(i for i, good in enumerate(ok) if not good),
                ),
            ],
        )
    ]
    for s, fig in zip(summaries, figures, strict=True):
        table = Table(
            ("x", "y", "kind", "index", "value", "|grad|", "eigenvalues"),
            [
                (
                    f"{r['x'][0]:.6f}",
                    f"{r['x'][1]:.6f}",
                    r["kind"],
                    r["index"],
                    f"{r['value']:.6g}",
                    f"{r['grad_norm']:.2e}",
                    ", ".join(f"{v:.4g}" for v in r["eigenvalues"]),
                )
                for r in rows
                if r["problem"] == s["problem"]
            ],
        )
        out.append(Section(s["problem"], [fig, table], 3))
    ae_table = Table(
        ("value", "kind", "index", "zero eigenvalues", "definiteness", "a closed-form level?"),
        [
            (
                f"{r['value']:.6g}",
                r["kind"],
                r["index"],
                r["num_zero"],
                r["definiteness"],
                "yes" if r["closed_form"] else "NO",
            )
            for r in ae_rows
        ],
        bad=frozenset(i for i, r in enumerate(ae_rows) if not r["closed_form"]),
    )
    intro = Raw(
        "<p>Critical points of "
        "&frac12;&#8214;(I &minus; W<sub>2</sub>W<sub>1</sub>)&Sigma;<sup>1/2</sup>&#8214;"
        "<sup>2</sup> (Baldi &amp; Hornik 1989) found from random starts: the only minimum "
        "is degenerate (positive semidefinite, from the GL(p) symmetry), all others are "
        "saddles, and the index rises with the loss.</p>"
    )
    out.append(Section("Linear autoencoder", [intro, ae_figure, ae_table], 3))
    return out


def run_toy(names: list, with_autoencoder: bool, num_starts: int, dtype: Any, out: Path):
    """The toy problems' sections, their JSON, and the problems that failed."""
    rows, summaries, figures, failures = [], [], [], []
    if names:
        print(
            f"{'problem':18s} {'x':>11s} {'y':>11s}  {'kind':10s} {'idx':>3s} {'value':>12s}"
            f" {'|grad|':>9s}  eigenvalues"
        )
    for name in names:
        r, s, fig = toy_problem(name, num_starts, dtype, out)
        rows += r
        summaries.append(s)
        figures.append(fig)
        for p in r:
            eig = " ".join(f"{v:9.4g}" for v in p["eigenvalues"])
            print(
                f"{name:18s} {p['x'][0]:11.6f} {p['x'][1]:11.6f}  {p['kind']:10s} {p['index']:3d}"
                f" {p['value']:12.6g} {p['grad_norm']:9.2e}  {eig}"
            )
        ok = s["matched"] == s["known"] and not s["unexpected"]
        if not ok:
            failures.append(name)
        print(
            f"{'':18s} -> {s['found']} found, {s['matched']}/{s['known']} known matched, "
            f"{s['unexpected']} unexpected, {s['seconds']:.2f} s  [{'OK' if ok else 'MISMATCH'}]"
        )
    ae_rows, ae_figure = [], None
    if with_autoencoder:
        ae_rows, ae_figure = autoencoder(dtype, out)
        print("\nlinear autoencoder (d = 5, p = 2): value, kind, index")
        for r in ae_rows:
            flag = "" if r["closed_form"] else "  <- not a closed-form critical level"
            print(f"  {r['value']:8.4f}  {r['kind']:10s} {r['index']:3d}{flag}")
        if not all(r["closed_form"] for r in ae_rows):
            failures.append("linear_autoencoder")
    sections = toy_sections(summaries, rows, figures, ae_rows, ae_figure)
    report = {"summary": summaries, "points": rows, "autoencoder": ae_rows}
    return sections, report, failures
