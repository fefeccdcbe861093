"""The ``hessian-tools`` command (also ``python -m hessian_tools``).

``hessian-tools analyze TARGET [options]``: TARGET is ``package.module:factory``
or ``path/to/file.py:factory``, a function of no arguments that returns a
``hessian_tools.Problem(loss, params, args=(), batches=None, name=None)``.
It writes a report folder (``--out``): ``index.html`` (self-contained:
figures, summary table, settings, versions, HVPs per part), the figures as
PNG, ``summary.json``, and ``parts/`` with every finished part, saved as
soon as it is done. ``--resume`` continues an interrupted run from its
finished parts and refuses parts made for another problem or with other
settings. For example::

    hessian-tools analyze hessian_tools.cli._demo_digits:digits_mlp_trained --x64 --out report

``hessian-tools demo``: the critical points of the built-in toy problems, and
a digits MLP analysed at initialisation and after a short training run, with
its sharpness tracked during training; one page, ``demo_output/index.html``.

Progress bars (on a terminal only) and status lines go to stderr (none under
``--quiet``); redirected to a file, stderr gets one line per finished part
with its time and HVPs. The short summary table and the report's path go to
stdout. Exit status: 0 done; 1 the analysis failed (a non-scalar or
non-finite loss, a factory or module that raised, an output folder that
cannot be written, a refused resume); 2 a bad command line or TARGET (a
missing file, module or factory, a factory that returns something else than
a Problem); 130 interrupted (Ctrl-C), after printing the command that
resumes. An error is one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path
from typing import Any

from hessian_tools.cli._target import (
    EXIT_FAILED,
    EXIT_USAGE,
    TARGET_FORM,
    CommandError,
    load_problem,
)

EXIT_INTERRUPTED = 130


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _on_terminal(quiet: bool) -> bool:
    """Progress bars: only where stderr is a terminal (a log file would get
    every redraw of every bar as a line of its own)."""
    return not quiet and sys.stderr.isatty()


# --------------------------------------------------------------------------
# The commands


def default_cache_dir() -> Path:
    """The per-user folder of JAX's persistent compilation cache:
    ``$XDG_CACHE_HOME/hessian_tools/jax`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hessian_tools" / "jax"


def enable_compile_cache(folder: Path | None) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``folder`` (None: off).

    The CLI is an application, so it may set this global option (the
    library never does): a second run of the same analysis loads its
    compiled solvers from disk instead of compiling them again. A folder
    that cannot be written gives a warning and a run without the cache.

    Returns:
        The folder in use, or None.
    """
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        warnings.warn(
            f"the compilation cache folder {folder} cannot be written ({err}); running without "
            "the cache (--compile-cache DIR for another folder, --no-compile-cache to silence).",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    # the solvers compile in 0.1-3 s each: cache all of them, not only > 1 s
    # (JAX's own environment variable, where set, wins)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def _setup(x64: bool, cache: Path | None = None) -> None:
    import jax

    if x64:  # an application-level choice of the user, never made by the library
        jax.config.update("jax_enable_x64", True)
    enable_compile_cache(cache)
    import matplotlib

    matplotlib.use("Agg")


def _cache_folder(args: argparse.Namespace) -> Path | None:
    if getattr(args, "no_compile_cache", False):
        return None
    given = getattr(args, "compile_cache", None)
    return given if given is not None else default_cache_dir()


def _settings(args: argparse.Namespace, **defaults: Any) -> Any:
    from hessian_tools.cli._part import Settings

    given = {
        k: getattr(args, k)
        for k in ("top_k", "grid", "span", "seed", "trace_matvecs", "density_matvecs")
        if getattr(args, k, None) is not None
    }
    filter_axis = getattr(args, "filter_axis", None)
    try:
        return Settings(**{**defaults, **given}, filter_axis=filter_axis)
    except ValueError as err:
        raise CommandError(str(err), EXIT_USAGE) from err


def _parts(selected: str | None, skipped: str | None) -> list:
    from hessian_tools.cli._analysis import resolve_parts

    split = lambda s: [p.strip() for p in s.split(",") if p.strip()]
    try:
        return resolve_parts(split(selected) if selected else None, split(skipped or ""))
    except ValueError as err:
        raise CommandError(str(err), EXIT_USAGE) from err


def analyze(args: argparse.Namespace) -> int:
    _setup(args.x64, _cache_folder(args))
    from hessian_tools.cli._run import format_summary, run_analysis

    parts = _parts(args.parts, args.skip)
    settings = _settings(args)
    problem = load_problem(args.target)
    s = run_analysis(
        problem,
        settings,
        parts,
        args.out,
        resume=args.resume,
        progress=_on_terminal(args.quiet),
        log=None if args.quiet else _log,
    )
    print(format_summary(s))
    print(f"wrote {Path(args.out) / 'index.html'}")
    return 0


def _demo_command(args: argparse.Namespace) -> int:
    _setup(args.x64, _cache_folder(args))
    import jax.numpy as jnp

    import hessian_tools as ht
    from hessian_tools.cli._demo_digits import run_digits
    from hessian_tools.cli._demo_toy import run_toy
    from hessian_tools.cli._html import write_html
    from hessian_tools.cli._run import meta_sections
    from hessian_tools.cli._store import PartStore, versions, write_json

    skip = {p.strip() for p in (args.skip or "").split(",") if p.strip()}
    if skip - {"toy", "autoencoder", "digits"}:
        raise CommandError(
            f"unknown --skip {sorted(skip)}; give toy, autoencoder or digits.", EXIT_USAGE
        )
    names = args.problems.split(",") if args.problems else list(ht.problems.TOY_2D)
    unknown = sorted(set(names) - set(ht.problems.TOY_2D))
    if unknown:
        raise CommandError(
            f"unknown problem(s) {unknown}; known: {list(ht.problems.TOY_2D)}", EXIT_USAGE
        )
    settings = _settings(args, grid=31)
    out = Path(args.out)
    PartStore.check_writable(out)
    dtype = jnp.float64 if args.x64 else jnp.float32
    page, failures, report = [], [], {}
    toy_names = [] if "toy" in skip else names
    if toy_names or "autoencoder" not in skip:
        sections, report["critical_points"], failures = run_toy(
            toy_names, "autoencoder" not in skip, args.starts, dtype, out
        )
        page += sections
        write_json(out / "critical_points.json", report["critical_points"])
    if "digits" not in skip:
        log = None if args.quiet else _log
        sections, report["digits"] = run_digits(
            settings,
            out,
            steps=args.steps,
            resume=args.resume,
            log=log,
            progress=_on_terminal(args.quiet),
        )
        page += sections
    meta = {
        "dtype": jnp.dtype(dtype).name,
        "toy starts": f"{args.starts} x {args.starts}",
        "training steps": args.steps,
        **{k: v for k, v in vars(settings).items() if v is not None},
    }
    write_json(out / "summary.json", {**report, "settings": meta, "versions": versions()})
    write_html(out / "index.html", "hessian_tools demo", page + meta_sections(meta, versions()))
    print(f"\nwrote {out / 'index.html'}")
    if failures:
        print(f"mismatch with the known critical points: {failures}", file=sys.stderr)
    return EXIT_FAILED if failures else 0


# --------------------------------------------------------------------------
# Command line


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--out", type=Path, default=Path(out), help=f"report folder (default {out})")
    p.add_argument("--x64", action="store_true", help="float64 for this run (default float32)")
    p.add_argument("--resume", action="store_true", help="reuse the finished parts in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    p.add_argument("--seed", type=int, help="seed of every random part (default 0)")
    p.add_argument("--grid", type=int, help="slice points per axis (default 41; demo 31)")
    p.add_argument("--top-k", type=int, help="eigenvalues at each end (default 6)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument(
        "--compile-cache",
        type=Path,
        metavar="DIR",
        help=f"JAX's persistent compilation cache folder (default {default_cache_dir()})",
    )
    cache.add_argument(
        "--no-compile-cache", action="store_true", help="compile everything afresh, store nothing"
    )


def parser() -> argparse.ArgumentParser:
    from hessian_tools.cli._analysis import DEFAULT_PARTS, PARTS

    top = argparse.ArgumentParser(prog="hessian-tools", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)
    a = sub.add_parser("analyze", help="analyse a model's Hessian into an HTML report")
    a.add_argument("target", metavar="TARGET", help=TARGET_FORM)
    _common(a, "hessian_report")
    a.add_argument(
        "--parts",
        help=f"comma-separated parts to run, or 'all' (default {','.join(DEFAULT_PARTS)}; "
        f"all parts: {','.join(PARTS)})",
    )
    a.add_argument("--skip", help="comma-separated parts not to run")
    a.add_argument("--span", type=float, help="slices over [-span, span] (default 1)")
    a.add_argument("--trace-matvecs", type=int, help="HVPs of the trace (default 100)")
    a.add_argument("--density-matvecs", type=int, help="HVPs of the density (default 1536)")
    a.add_argument(
        "--filter-axis",
        type=int,
        help="filter axis of the weights for the random direction (-1: (in, out), 0: (out, in))",
    )
    d = sub.add_parser("demo", help="the toy problems' critical points and a digits MLP")
    _common(d, "demo_output")
    d.add_argument("--starts", type=int, default=20, help="grid of N x N starts per toy problem")
    d.add_argument("--problems", default=None, help="comma-separated subset of toy problems")
    d.add_argument("--skip", help="comma-separated sections not to run: toy, autoencoder, digits")
    d.add_argument("--steps", type=int, default=200, help="training steps of the digits MLP")
    return top


class _Interrupts:
    """Ctrl-C raises KeyboardInterrupt as usual, and is remembered: one that
    lands in a host callback (a progress bar) reaches us wrapped in another
    exception, which then still counts as an interruption."""

    seen = False

    def _handler(self, signum: int, frame: Any) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def __enter__(self) -> _Interrupts:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _resume_command(argv: list) -> str:
    prog = ["hessian-tools"]
    if sys.argv and sys.argv[0].endswith("__main__.py"):
        prog = [sys.executable, "-m", "hessian_tools"]
    return shlex.join(prog + [a for a in argv if a != "--resume"] + ["--resume"])


def main(argv: list[str] | None = None) -> int:
    """Run the command; return its exit status (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    run = analyze if args.command == "analyze" else _demo_command
    guard = _Interrupts()
    try:
        with guard:
            return run(args)
    except KeyboardInterrupt:
        pass
    except Exception as err:
        if not guard.seen:
            return _error(err, args.debug)
    print(
        f"\ninterrupted; every finished part is saved in {args.out}. Resume with:\n"
        f"  {_resume_command(argv)}",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def _error(err: Exception, debug: bool) -> int:
    from hessian_tools.cli._part import ProblemError
    from hessian_tools.cli._store import ReportError, StaleResultError

    if debug:
        traceback.print_exc()
    if isinstance(err, CommandError):
        message, status = str(err), err.status
    elif isinstance(err, (ProblemError, ReportError, StaleResultError)):
        message, status = str(err), EXIT_FAILED
    else:
        message = f"{type(err).__name__}: {err}" + ("" if debug else " (--debug shows where)")
        status = EXIT_FAILED
    print(f"hessian-tools: error: {' '.join(message.split())}", file=sys.stderr)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
