"""The ``hessian-tools`` command.

``hessian-tools demo --out DIR`` finds and classifies every critical point
of the built-in 2-D toy problems, prints a table, and writes a
self-contained report: one contour figure per problem with the points
marked by kind, an index-vs-loss figure for the linear autoencoder, a JSON
file with every point, and ``index.html`` showing them.
"""

from __future__ import annotations

import argparse
import html
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

KIND_ORDER = ("minimum", "saddle", "maximum", "degenerate")


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


def _problem_section(name, prob, num_starts, dtype, out, ht, plt):
    import jax.numpy as jnp

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
    fig.savefig(out / f"{name}.png", dpi=110)
    plt.close(fig)

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
    return rows, summary


def _autoencoder_section(dtype, out, ht, plt):
    import jax

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
    fig.savefig(out / "linear_autoencoder_index_vs_loss.png", dpi=110)
    plt.close(fig)
    return [
        _row(
            cp,
            "linear_autoencoder",
            closed_form=any(abs(float(cp.value) - v) <= 1e-4 * v for v in closed_form),
        )
        for cp in reps
    ]


def _html(summaries, rows, ae_rows, meta):
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>hessian_tools demo</title><style>",
        "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}",
        "table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}",
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}",
        "img{max-width:100%;border:1px solid #ddd}.bad{color:#b00;font-weight:bold}",
        "</style></head><body>",
        "<h1>hessian_tools: critical points of toy problems</h1>",
        f"<p>{esc(meta)}</p>",
        "<p>Every point was found by Newton-MR (MINRES steps, backtracking on "
        "|grad f|<sup>2</sup>) from a grid of starts, deduplicated, and classified by the "
        "signs of its Hessian's eigenvalues. Known points are those listed in "
        "<code>hessian_tools.problems</code>. A point found next to a degenerate critical "
        "point (the monkey saddle's origin) is labelled by the Hessian's signs where it "
        "landed, which show the local shape (a saddle).</p>",
        "<h2>Summary</h2><table><tr><th>problem</th><th>starts</th><th>found</th>"
        "<th>known</th><th>matched</th><th>unexpected</th><th>seconds</th></tr>",
    ]
    for s in summaries:
        ok = s["matched"] == s["known"] and s["unexpected"] == 0
        cls = "" if ok else " class='bad'"
        parts.append(
            f"<tr{cls}><td>{esc(s['problem'])}</td><td>{s['starts']}</td><td>{s['found']}</td>"
            f"<td>{s['known']}</td><td>{s['matched']}</td><td>{s['unexpected']}</td>"
            f"<td>{s['seconds']:.2f}</td></tr>"
        )
    parts.append("</table>")
    for s in summaries:
        name = s["problem"]
        parts.append(f"<h2>{esc(name)}</h2><img src='{esc(name)}.png' alt='{esc(name)}'>")
        parts.append(
            "<table><tr><th>x</th><th>y</th><th>kind</th><th>index</th><th>value</th>"
            "<th>|grad|</th><th>eigenvalues</th></tr>"
        )
        for r in (r for r in rows if r["problem"] == name):
            eig = ", ".join(f"{v:.4g}" for v in r["eigenvalues"])
            parts.append(
                f"<tr><td>{r['x'][0]:.6f}</td><td>{r['x'][1]:.6f}</td><td>{r['kind']}</td>"
                f"<td>{r['index']}</td><td>{r['value']:.6g}</td><td>{r['grad_norm']:.2e}</td>"
                f"<td>{eig}</td></tr>"
            )
        parts.append("</table>")
    parts.append(
        "<h2>Linear autoencoder</h2><p>Critical points of "
        "&frac12;&#8214;(I &minus; W<sub>2</sub>W<sub>1</sub>)&Sigma;<sup>1/2</sup>&#8214;"
        "<sup>2</sup> (Baldi &amp; Hornik 1989) found from random starts: the only minimum "
        "is degenerate (positive semidefinite, from the GL(p) symmetry), all others are "
        "saddles, and the index rises with the loss.</p>"
        "<img src='linear_autoencoder_index_vs_loss.png' alt='index vs loss'>"
        "<table><tr><th>value</th><th>kind</th><th>index</th><th>zero eigenvalues</th>"
        "<th>definiteness</th><th>a closed-form level?</th></tr>"
    )
    for r in ae_rows:
        cls = "" if r["closed_form"] else " class='bad'"
        parts.append(
            f"<tr{cls}><td>{r['value']:.6g}</td><td>{r['kind']}</td><td>{r['index']}</td>"
            f"<td>{r['num_zero']}</td><td>{esc(r['definiteness'])}</td>"
            f"<td>{'yes' if r['closed_form'] else 'NO'}</td></tr>"
        )
    parts.append("</table></body></html>")
    return "\n".join(parts)


def demo(out: Path, num_starts: int, x64: bool, names: list[str] | None) -> int:
    import jax

    if x64:  # an application-level choice of the user, never made by the library
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import hessian_tools as ht

    dtype = jnp.float64 if x64 else jnp.float32
    out.mkdir(parents=True, exist_ok=True)
    names = names or list(ht.problems.TOY_2D)
    unknown = sorted(set(names) - set(ht.problems.TOY_2D))
    if unknown:
        raise SystemExit(f"unknown problem(s) {unknown}; known: {list(ht.problems.TOY_2D)}")
    rows, summaries = [], []
    header = f"{'problem':18s} {'x':>11s} {'y':>11s}  {'kind':10s} {'idx':>3s} {'value':>12s}"
    print(header + f" {'|grad|':>9s}  eigenvalues")
    for name in names:
        r, s = _problem_section(name, ht.problems.TOY_2D[name], num_starts, dtype, out, ht, plt)
        rows += r
        summaries.append(s)
        for p in r:
            eig = " ".join(f"{v:9.4g}" for v in p["eigenvalues"])
            print(
                f"{name:18s} {p['x'][0]:11.6f} {p['x'][1]:11.6f}  {p['kind']:10s} {p['index']:3d}"
                f" {p['value']:12.6g} {p['grad_norm']:9.2e}  {eig}"
            )
        status = "OK" if s["matched"] == s["known"] and not s["unexpected"] else "MISMATCH"
        print(
            f"{'':18s} -> {s['found']} found, {s['matched']}/{s['known']} known matched, "
            f"{s['unexpected']} unexpected, {s['seconds']:.2f} s  [{status}]"
        )
    ae_rows = _autoencoder_section(dtype, out, ht, plt)
    print("\nlinear autoencoder (d = 5, p = 2): value, kind, index")
    for r in ae_rows:
        flag = "" if r["closed_form"] else "  <- not a closed-form critical level"
        print(f"  {r['value']:8.4f}  {r['kind']:10s} {r['index']:3d}{flag}")
    meta = (
        f"hessian_tools {ht.__version__}, jax {jax.__version__}, dtype {jnp.dtype(dtype).name}, "
        f"{num_starts}x{num_starts} starts per problem."
    )
    (out / "critical_points.json").write_text(
        json.dumps({"meta": meta, "summary": summaries, "points": rows, "autoencoder": ae_rows})
    )
    (out / "index.html").write_text(_html(summaries, rows, ae_rows, meta))
    print(f"\nwrote {out / 'index.html'}")
    bad = [s["problem"] for s in summaries if s["matched"] != s["known"] or s["unexpected"]]
    if not all(r["closed_form"] for r in ae_rows):
        bad.append("linear_autoencoder")
    if bad:
        print(f"mismatch with the known critical points: {bad}", file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hessian-tools", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="find and classify the critical points of the toy problems")
    d.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    d.add_argument("--starts", type=int, default=20, help="grid of N x N starts per problem")
    d.add_argument(
        "--x64", action="store_true", help="enable float64 for this run (default float32)"
    )
    d.add_argument("--problems", default=None, help="comma-separated subset of problems")
    args = parser.parse_args(argv)
    if args.command == "demo":
        names = args.problems.split(",") if args.problems else None
        return demo(args.out, args.starts, args.x64, names)
    return 2  # pragma: no cover


if __name__ == "__main__":
    raise SystemExit(main())
