"""Subprocess checks started as soon as the session's tests are collected,
so that they run on the machine's other core while the in-process tests
run on one (most of the suite is single-threaded XLA compilation). Each
check starts only when a collected test needs it (``conftest.py``), and a
test that asks for one that was not started starts it then, so running a
single test works the same. Nothing is skipped: a check that fails fails
its tests, with its stderr.

On the 2-core machine this takes the sharded-mesh check (about 145 s of
subprocess time), the two-process reference and the digits demo off the
suite's wall time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# every check's own folder: its output, and the CLI's compilation cache
ROOT = Path(tempfile.mkdtemp(prefix="ht-background-"))


@dataclasses.dataclass(frozen=True)
class Check:
    argv: tuple[str, ...]  # after ``python``, run in tests/
    needed_by: tuple[str, ...]  # prefixes of the node ids of the tests that need it
    timeout: float = 900


CHECKS = {
    "sharded": Check(
        ("_sharded_check.py",),
        ("test_scaling.py::test_sharded", "test_scaling.py::test_data_parallel"),
    ),
    "multiprocess-reference": Check(
        ("_multiprocess_check.py", "reference"), ("test_scaling.py::test_two_processes",), 300
    ),
    # the CLI as a user runs it: 20 training steps, a 5-point slice grid
    "digits-demo": Check(
        tuple(
            "-m hessian_tools demo --out {out} --x64 --skip toy,autoencoder --quiet "
            "--steps 20 --grid 5 --no-compile-cache".split()
        ),
        ("test_cli.py::test_demo_digits",),
        600,
    ),
}


@dataclasses.dataclass
class _Running:
    proc: subprocess.Popen
    out: Path
    stdout: Path
    stderr: Path
    timeout: float


_running: dict[str, _Running] = {}


def start(names: list[str]) -> None:
    """Start each named check unless it runs already."""
    for name in names:
        if name in _running:
            continue
        check, folder = CHECKS[name], ROOT / name
        out = folder / "out"
        out.mkdir(parents=True)
        stdout, stderr = folder / "stdout", folder / "stderr"
        env = {
            **os.environ,
            "MPLBACKEND": "Agg",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "XDG_CACHE_HOME": str(folder / "cache"),
        }
        argv = [sys.executable, *(a.format(out=out) for a in check.argv)]
        with open(stdout, "w") as o, open(stderr, "w") as e:
            proc = subprocess.Popen(argv, cwd=HERE, env=env, stdout=o, stderr=e, text=True)
        _running[name] = _Running(proc, out, stdout, stderr, check.timeout)


def needed(nodeids: list[str]) -> list[str]:
    """The checks the tests with these node ids (``tests/...`` or bare) need."""
    bare = [i.split("tests/", 1)[-1] for i in nodeids]
    return [n for n, c in CHECKS.items() if any(i.startswith(c.needed_by) for i in bare)]


def result(name: str) -> tuple[dict | None, Path, str]:
    """Wait for a check: (the JSON its last stdout line holds, or None; its
    output folder; its stdout). Starts it if nobody did.

    Raises:
        AssertionError: the check failed (with the end of its stderr).
    """
    start([name])
    run = _running[name]
    try:
        run.proc.wait(timeout=run.timeout)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        raise AssertionError(f"{name} ran past {run.timeout} s") from None
    printed = run.stdout.read_text()
    assert run.proc.returncode == 0, run.stderr.read_text()[-3000:]
    last = printed.strip().splitlines()[-1] if printed.strip() else ""
    try:
        value = json.loads(last)
    except json.JSONDecodeError:
        value = None
    return value, run.out, printed


def stop_all() -> None:
    """Kill what still runs and remove the checks' folders."""
    for run in _running.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    shutil.rmtree(ROOT, ignore_errors=True)
