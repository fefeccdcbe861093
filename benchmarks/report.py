"""Markdown rendering of the benchmark results (benchmarks/RESULTS.md)."""

from __future__ import annotations

import datetime
import importlib.metadata as md
import math
import os
import subprocess

import workloads as wl


def fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0:
            return "0"
        if 1e-2 <= abs(value) < 1e4:
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return f"{value:.1e}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(title: str, columns: list[str], rows: list[list], note: str = "") -> str:
    lines = [f"## {title}", ""]
    if note:
        lines += [note, ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:  # a short row's missing cells are empty ("—")
        row = list(row) + [None] * (len(columns) - len(row))
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        if dist == "hessian_tools":  # imported from the source tree, not installed
            import hessian_tools

            return f"{hessian_tools.__version__} (source tree)"
        return "missing"


def _backend() -> str:
    import jax

    dev = jax.devices()[0]
    return f"{dev.platform.upper()} ({getattr(dev, 'device_kind', dev.platform)})"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _git() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(__file__),
        ).stdout.strip()
    except OSError:
        return "unknown"


def previous_targets() -> list[str]:
    """The targets table of the committed RESULTS.md (git HEAD), to compare with."""
    try:
        proc = subprocess.run(
            ["git", "show", "HEAD:benchmarks/RESULTS.md"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(__file__),
        )
    except OSError:
        return []
    lines, keep = [], False
    for line in proc.stdout.splitlines():
        if line.startswith("## "):
            keep = line.strip() == "## Targets"
            continue
        if keep and line.startswith("|"):
            lines.append(line)
    head = next((ln for ln in proc.stdout.splitlines() if ln.startswith("Written by")), "")
    if not lines:
        return []
    return [
        "## Previous run's targets (committed RESULTS.md)",
        "",
        head,
        "",
        *lines,
        "",
    ]


def document(ctx, sections, argv, seconds, load0, load1, platform) -> str:
    refs = ctx.refs
    versions = ", ".join(
        f"{d} {_version(d)}"
        for d in ("hessian_tools", "jax", "jaxlib", "numpy", "scipy", "scikit-learn")
    )
    peers = ctx.peers
    peer_line = peers.get("status", "")
    if peers.get("versions"):
        peer_line += " — " + ", ".join(f"{k} {v}" for k, v in peers["versions"].items())
    cmd = ".venv/bin/python benchmarks/run.py" + ("" if not argv else " " + " ".join(argv))
    lines = [
        "# hessian_tools benchmarks",
        "",
        f"Written by `{cmd}` (`make bench`) on "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, git {_git()}, "
        f"in {seconds / 60:.1f} min.",
        "",
        f"* Machine: {_cpu()}, {os.cpu_count()} cores, {platform.platform()}, "
        f"Python {platform.python_version()}. Load average {load0[0]:.1f} at the start, "
        f"{load1[0]:.1f} at the end: the machine is shared, so absolute times are noisy; "
        "compare ratios measured in this run.",
        f"* Ours: {versions}; float32, JIT on {_backend()}.",
        f"* Peers (own venv `.venv-bench`, one fresh process per task): {peer_line}.",
        "* Data: scikit-learn's bundled digits (1,797 images), inputs divided by 16 "
        "(so in [0, 1]), labels one-hot, full batch, mean cross-entropy, float32.",
    ]
    for name in wl.WORKLOADS:
        lines.append(f"* Workload {name!r}: {wl.get_workload(name).describe()}.")
    for name, r in refs.items():
        lines.append(f"* Reference for {name!r}: {r['method']}; trace: {r['trace_method']}.")
    if "small" in refs:
        lines.append(
            f"  The per-layer trace formula agrees with the dense trace on 'small' to "
            f"{refs['small']['trace_formula_rel_diff']:.0e}."
        )
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for what, measured, ok in ctx.summary:
        lines.append(f"| {what} | {measured} | {fmt(ok)} |")
    lines.append("")
    lines += sections
    lines += previous_targets()
    return "\n".join(lines) + "\n"
