"""Subprocess checks started as soon as the session's tests are collected,
so that they run on the machine's other core while the in-process tests
run on one (most of the suite is single-threaded XLA compilation). Each
check starts only when a collected test needs it (``conftest.py``), and a
test that asks for one that was not started starts it then, so running a
single test works the same. Nothing is skipped: a check that fails fails
its tests, with its output.

Two kinds:

* ``CHECKS``: scripts of their own (the sharded meshes, the two processes
  and their one-process reference, the CLI's demo and compilation cache as
  a user runs them).
* ``WORKERS``: a pytest of their own for the tests of a marker, whose
  outcomes the suite's session reports as its own (``conftest.py``):

  * ``default_xla`` (the miscompilation guards), at XLA's default
    optimisation level, since the suite's process compiles with the
    backend's optimisations off (``conftest.py``) and a miscompilation may
    need them;
  * ``other_core`` (whole modules that need nothing of the others: the
    certificates on transformers, the eigenvalue gradients, TFM-tiny), at
    the suite's own flags, so that the two cores share the suite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# every check's own folder: its output, and the CLI's compilation cache
ROOT = Path(tempfile.mkdtemp(prefix="ht-background-"))
# the suite's XLA flag (conftest.py), left out of the default_xla run
FAST_COMPILE = "--xla_backend_optimization_level=0"
# marker -> whether its pytest keeps the suite's XLA flags
WORKERS = {"default_xla": False, "other_core": True}


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
    "multiprocess-pair": Check(
        ("_multiprocess_check.py", "pair"), ("test_scaling.py::test_two_processes",), 900
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
    # the toy part of the demo (float64), shared by test_cli.py's demo tests
    "toy-demo": Check(
        tuple(
            "-m hessian_tools demo --out {out} --x64 --problems himmelblau,saddle --starts 8 "
            "--skip digits --no-compile-cache".split()
        ),
        ("test_cli.py::test_demo_writes", "test_cli.py::test_demo_points"),
        600,
    ),
    "cli-cache": Check(
        ("_cli_cache_check.py", "{out}"), ("test_cli.py::test_the_cli_caches",), 900
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


def _start(name: str, argv: list[str], cwd: Path, timeout: float, env: dict) -> None:
    folder = ROOT / name
    out = folder / "out"
    out.mkdir(parents=True)
    stdout, stderr = folder / "stdout", folder / "stderr"
    env = {
        **os.environ,
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "XDG_CACHE_HOME": str(folder / "cache"),
        **env,
    }
    argv = [sys.executable, *(a.format(out=out) for a in argv)]
    with open(stdout, "w") as o, open(stderr, "w") as e:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=o, stderr=e, text=True)
    if hasattr(os, "setpriority"):  # niced: the suite's own process keeps its core
        # (set from here: a preexec_fn would fork, which JAX warns against)
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, 10)
        except OSError:
            pass
    _running[name] = _Running(proc, out, stdout, stderr, timeout)


def start(names: list[str]) -> None:
    """Start each named check of ``CHECKS`` unless it runs already."""
    for name in names:
        if name not in _running:
            check = CHECKS[name]
            _start(name, list(check.argv), HERE, check.timeout, {})


def start_worker(marker: str, nodeids: list[str]) -> None:
    """Run these tests (node ids relative to the repository) in one pytest,
    the worker of ``marker`` (``WORKERS``)."""
    if marker in _running or not nodeids:
        return
    env = {"HT_TEST_WORKER": marker}
    if not WORKERS[marker]:
        flags = os.environ.get("XLA_FLAGS", "").split()
        env["XLA_FLAGS"] = " ".join(f for f in flags if f != FAST_COMPILE)
    argv = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml={out}/junit.xml"]
    _start(marker, [*argv, *nodeids], REPO, 1800, env)


def started() -> list[str]:
    """The checks and workers started in this process."""
    return list(_running)


def needed(nodeids: list[str]) -> list[str]:
    """The checks the tests with these node ids (``tests/...`` or bare) need."""
    bare = [i.split("tests/", 1)[-1] for i in nodeids]
    return [n for n, c in CHECKS.items() if any(i.startswith(c.needed_by) for i in bare)]


def _wait(name: str) -> _Running:
    run = _running[name]
    try:
        run.proc.wait(timeout=run.timeout)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        raise AssertionError(f"{name} ran past {run.timeout} s") from None
    return run


def result(name: str) -> tuple[dict | None, Path, str]:
    """Wait for a check of ``CHECKS``: (the JSON its last stdout line holds,
    or None; its output folder; its stdout). Starts it if nobody did.

    Raises:
        AssertionError: the check failed (with the end of its stderr).
    """
    start([name])
    run = _wait(name)
    printed = run.stdout.read_text()
    assert run.proc.returncode == 0, run.stderr.read_text()[-3000:]
    last = printed.strip().splitlines()[-1] if printed.strip() else ""
    try:
        value = json.loads(last)
    except json.JSONDecodeError:
        value = None
    return value, run.out, printed


def worker_outcome(marker: str, nodeid: str) -> None:
    """Wait for the worker of ``marker`` and raise unless the test
    ``nodeid`` passed there (its failure text, or its skip); starts the
    worker if nobody did.

    Raises:
        AssertionError: the test failed, errored or did not run there.
        pytest.skip.Exception: it was skipped there (with the reason).
    """
    import pytest

    start_worker(marker, [nodeid])
    run = _wait(marker)
    report = run.out / "junit.xml"
    assert report.exists(), run.stderr.read_text()[-3000:] + run.stdout.read_text()[-3000:]
    module, _, name = nodeid.partition("::")
    classname = module.removesuffix(".py").replace("/", ".")
    where = "at XLA's default optimisation level" if marker == "default_xla" else "in its worker"
    for case in ET.parse(report).iter("testcase"):
        if case.get("classname") == classname and case.get("name") == name:
            skipped = [c for c in case if c.tag == "skipped"]
            bad = [c for c in case if c.tag in ("failure", "error")]
            assert not bad, f"{where} ({marker}): {bad[0].get('message')}\n{bad[0].text}"
            if skipped:
                pytest.skip(f"{where} ({marker}): {skipped[0].get('message')}")
            return
    raise AssertionError(f"{nodeid} did not run in the {marker} pytest:\n{run.stdout.read_text()}")


def stop_all() -> None:
    """Kill what still runs and remove the checks' folders."""
    for run in _running.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
    shutil.rmtree(ROOT, ignore_errors=True)
