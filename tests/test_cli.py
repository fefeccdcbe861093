"""The ``hessian-tools demo`` command (hessian_tools.cli): the report it
writes, and its points against find_critical_points called directly."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _util import grid_starts, inside

import hessian_tools as ht
from hessian_tools import cli
from hessian_tools.problems import TOY_2D

PROBLEMS = ("himmelblau", "saddle")
STARTS = 8
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run of the demo (float64), shared by the tests below: its exit
    status, its output folder and what it printed."""
    out = tmp_path_factory.mktemp("demo")
    argv = ["demo", "--out", str(out), "--x64", "--problems", ",".join(PROBLEMS)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main([*argv, "--starts", str(STARTS)])
    return status, out, printed.getvalue()


@pytest.mark.slow  # ~12 s: the linear autoencoder section always runs (256 starts)
def test_demo_writes_the_report(demo):
    status, out, printed = demo
    assert status == 0
    names = [f"{p}.png" for p in PROBLEMS] + ["linear_autoencoder_index_vs_loss.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (out / "index.html").read_text()
    assert all(f"src='{name}'" in page for name in names)
    assert "class='bad'" not in page  # no problem row or autoencoder level flagged
    report = json.loads((out / "critical_points.json").read_text())
    assert [s["problem"] for s in report["summary"]] == list(PROBLEMS)
    for s in report["summary"]:
        assert s["starts"] == STARTS**2
        assert s["matched"] == s["known"] == len(TOY_2D[s["problem"]].critical_points)
        assert s["unexpected"] == 0
    # the autoencoder levels are closed-form ones, (1/2) * the eigenvalues left out
    lam = [5.0, 4.0, 3.0, 2.0, 1.0]
    levels = [r["value"] for r in report["autoencoder"]]
    assert all(r["closed_form"] for r in report["autoencoder"])
    assert min(levels) == pytest.approx(0.5 * sum(lam[2:]), rel=1e-6)  # the minimum, I = {0, 1}
    assert printed.count("[OK]") == len(PROBLEMS)


@pytest.mark.slow
@pytest.mark.parametrize("name", PROBLEMS)
def test_demo_points_equal_find_critical_points(demo, name):
    _, out, _ = demo
    rows = [
        r
        for r in json.loads((out / "critical_points.json").read_text())["points"]
        if r["problem"] == name
    ]
    prob = TOY_2D[name]
    found = ht.find_critical_points(prob.f, grid_starts(prob.bounds, STARTS))
    found = [cp for cp in found if inside(np.asarray(cp.x), prob.bounds)]
    assert [r["kind"] for r in rows] == [cp.kind for cp in found]
    assert [r["index"] for r in rows] == [cp.index for cp in found]
    np.testing.assert_allclose([r["value"] for r in rows], [cp.value for cp in found], atol=1e-12)
    np.testing.assert_allclose([r["x"] for r in rows], [cp.x for cp in found], atol=1e-12)
    np.testing.assert_allclose(
        [r["eigenvalues"] for r in rows], [cp.eigenvalues for cp in found], rtol=1e-12
    )
    # and they are the listed critical points, every one of them
    listed = sorted((tuple(np.round(x, 6)), k) for x, k in prob.critical_points)
    assert sorted((tuple(np.round(r["x"], 6)), r["kind"]) for r in rows) == listed


def test_unknown_problem_exits_non_zero_naming_the_known_ones(tmp_path):
    cmd = [sys.executable, "-m", "hessian_tools.cli", "demo", "--out", str(tmp_path)]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    run = subprocess.run(
        [*cmd, "--problems", "himmelblau,nope"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "nope" in run.stderr
    for known in TOY_2D:
        assert known in run.stderr
    assert not list(tmp_path.iterdir())  # nothing computed, nothing written
