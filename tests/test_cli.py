"""The ``hessian-tools`` command (hessian_tools.cli): ``analyze`` end to end
against the library's API called directly, interruption and resume, every
error case, the report in a real browser; ``demo`` against
find_critical_points called directly."""

import contextlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import _background
import numpy as np
import pytest
from _util import grid_starts, inside
from analyze_targets import CURVATURES, toy_saddle

import hessian_tools as ht
from hessian_tools import cli
from hessian_tools.cli._analysis import PARTS
from hessian_tools.cli._part import part_key
from hessian_tools.problems import TOY_2D

PROBLEMS = ("himmelblau", "saddle")
STARTS = 8
REPO = Path(__file__).resolve().parents[1]
TARGETS = Path(__file__).resolve().parent / "analyze_targets.py"
TOY = f"{TARGETS}:toy_saddle"
# a trace budget below n = 15, so that the trace is a randomised estimate
OPTIONS = ["--x64", "--grid", "9", "--trace-matvecs", "8"]
# the CLI's persistent compilation cache goes to a folder of the test run's own
ENV = {**os.environ, "MPLBACKEND": "Agg", "XDG_CACHE_HOME": tempfile.mkdtemp(prefix="ht-cache-")}


def _main(argv):
    """(status, stdout, stderr) of the command run in this process, without
    the persistent compilation cache (a global JAX option: it would stay on
    for the rest of the test session)."""
    if argv and argv[0] in ("analyze", "demo") and "--compile-cache" not in argv:
        argv = [*argv, "--no-compile-cache"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(argv)
    return status, out.getvalue(), err.getvalue()


def _cli(*args, timeout=300, **kwargs):
    cmd = [sys.executable, "-m", "hessian_tools", *args]
    return subprocess.run(
        cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout, **kwargs
    )


def _without_timings(summary):
    return {k: v for k, v in summary.items() if k != "seconds"}


# --------------------------------------------------------------------------
# analyze


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    """One analysis of the toy saddle with every part: (status, folder, stdout)."""
    out = tmp_path_factory.mktemp("toy_report")
    status, printed, _ = _main(["analyze", TOY, "--out", str(out), "--parts", "all", *OPTIONS])
    return status, out, printed


@pytest.mark.slow  # ~10 s: the toy analysis with every part (shared)
def test_analyze_writes_the_report(toy_report):
    status, out, printed = toy_report
    assert status == 0
    assert "wrote" in printed and "saddle" in printed  # the short summary table
    summary = json.loads((out / "summary.json").read_text())
    for name in summary["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert len(summary["figures"]) == 5
    page = (out / "index.html").read_text()
    assert all(f"data-file='{name}'" in page for name in summary["figures"])
    assert "<table class='summary'>" in page and "Versions" in page and "Settings" in page
    assert summary["parts"] == list(PARTS)
    for part in summary["parts"]:
        assert (out / "parts" / f"{part}.json").exists()
    spent = summary["num_matvecs"]
    assert spent["total"] == sum(v for k, v in spent.items() if k != "total") > 0


@pytest.mark.slow
def test_analyze_summary_equals_the_library_called_directly(toy_report):
    _, out, _ = toy_report
    s = json.loads((out / "summary.json").read_text())
    p = toy_saddle()
    op = ht.HessianOperator(p.loss, p.params, *p.args)
    value, grad = op.value_and_grad()
    assert s["num_params"] == op.n == 15
    assert s["loss"] == pytest.approx(float(value), abs=1e-14)
    assert s["grad_norm"] == pytest.approx(float(np.linalg.norm(op.ravel(grad))), abs=1e-14)

    cp = ht.classify(p.loss, p.params, *p.args, key=part_key(0, "classification"))
    c = s["classification"]
    assert (c["kind"], c["index"], c["exact"]) == (cp.kind, cp.index, cp.exact)
    assert (c["kind"], c["index"]) == ("saddle", 3)  # and that is right: diag(CURVATURES)

    # top-k = 6 (the default) at each end, from one solve over both ends
    ep = ht.eigenpairs(op, 12, which="both", key=part_key(0, "eigenvalues"))
    e = s["eigenvalues"]
    np.testing.assert_allclose(e["largest"]["values"], ep.values[::-1][:6], rtol=1e-12)
    np.testing.assert_allclose(e["smallest"]["values"], ep.values[:6], rtol=1e-12)
    np.testing.assert_allclose(e["largest"]["error_bounds"], ep.error_bounds[::-1][:6])
    assert e["num_matvecs"] == s["num_matvecs"]["eigenvalues"] == int(ep.num_matvecs) == 15
    truth = np.sort(CURVATURES)
    np.testing.assert_allclose(e["largest"]["values"], truth[::-1][:6], atol=1e-9)
    np.testing.assert_allclose(e["smallest"]["values"], truth[:6], atol=1e-9)

    est = ht.trace(op, key=part_key(0, "trace"), num_matvecs=8)
    assert s["trace"]["value"] == pytest.approx(float(est.value), rel=1e-12)
    assert s["trace"]["stderr"] == pytest.approx(float(est.stderr), rel=1e-9)
    assert s["trace"]["num_matvecs"] == est.num_matvecs == 8

    sd = ht.spectral_density(op, key=part_key(0, "density"), num_matvecs=12 * 15, num_probes=12)
    frac, frac_err = sd.negative_fraction()
    assert s["density"]["negative_fraction"] == pytest.approx(frac, rel=1e-12)
    assert s["density"]["negative_fraction_stderr"] == pytest.approx(frac_err, rel=1e-9, abs=1e-15)
    assert frac == pytest.approx(3 / 15, abs=1e-9)

    d = ht.landscape.random_direction(part_key(0, "random_direction"), p.params)
    alphas = np.linspace(-1.0, 1.0, 9)
    line = ht.landscape.slice_1d(p.loss, p.params, d, alphas, *p.args)
    np.testing.assert_allclose(s["slice_1d"]["alphas"], alphas)
    np.testing.assert_allclose(s["slice_1d"]["random"], line.values, rtol=1e-12)
    assert s["slice_1d"]["direction_norm"] == pytest.approx(float(np.linalg.norm(op.ravel(d))))
    # along the top eigenvector (curvature 12) and over the plane of the top and
    # bottom (-3) ones, the loss is known: 0.5 a t^2 + 0.1 t^4 per axis, zero at c;
    # the eigenvector's norm makes its loss rise as the random direction's does
    norms = s["slice_1d"]["direction_norms"]
    assert norms["random"] == s["slice_1d"]["direction_norm"]
    rise = max(s["slice_1d"]["top_eigenvector"]) / max(line.values)
    assert 1 / 1.25 <= rise <= 1.25
    t = norms["top_eigenvector"] * alphas
    np.testing.assert_allclose(s["slice_1d"]["top_eigenvector"], 6 * t**2 + 0.1 * t**4, atol=1e-12)
    plane_norms = s["slice_2d"]["direction_norms"]
    with np.load(out / "parts" / "slice_2d.npz") as saved:
        xs, ys, plane = saved["xs"], saved["ys"], saved["values"]
    tx, ty = np.meshgrid(  # values[i, j] is at (xs[j], ys[i])
        plane_norms["top_eigenvector"] * alphas, plane_norms["bottom_eigenvector"] * alphas
    )
    known = 6 * tx**2 + 0.1 * tx**4 - 1.5 * ty**2 + 0.1 * ty**4
    np.testing.assert_allclose(xs, alphas)
    np.testing.assert_allclose(ys, alphas)
    np.testing.assert_allclose(plane, known, atol=1e-12)

    blocks = ht.block_spectra(p.loss, p.params, *p.args, key=part_key(0, "blocks"), trace_matvecs=8)
    assert [b["name"] for b in s["blocks"]] == [b.name for b in blocks]
    np.testing.assert_allclose([b["top"] for b in s["blocks"]], [b.values[0] for b in blocks])
    np.testing.assert_allclose(
        [b["trace"] for b in s["blocks"]], [b.trace.value for b in blocks], rtol=1e-12
    )


@pytest.mark.slow  # a process of ~10 s on 2 cores, interrupted, then resumed here
def test_interrupted_then_resumed_equals_an_uninterrupted_run(toy_report, tmp_path):
    _, full, _ = toy_report
    out = tmp_path / "report"
    args = ["analyze", TOY, "--out", str(out), "--parts", "all", *OPTIONS]  # bars on
    proc = subprocess.Popen(
        [sys.executable, "-m", "hessian_tools", *args],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines, first_part_done = [], threading.Event()

    def read_stderr():
        for line in proc.stderr:
            lines.append(line)
            if "done in" in line:  # the first part's status line
                first_part_done.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:  # start-up (imports, the first compile) bounded: never a hung test
        assert first_part_done.wait(timeout=240), "no part finished:\n" + "".join(lines)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    proc.stderr.close()
    err = "".join(lines)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err
    assert "Traceback" not in err
    done = sorted(p.stem for p in (out / "parts").glob("*.json"))
    assert "point" in done and len(done) < len(PARTS)
    assert json.loads((out / "summary.json").read_text())["parts"] == [
        p for p in PARTS if p in done
    ]  # the report of the finished parts was written too
    resume_cmd = shlex.split(err.strip().splitlines()[-1])  # the command it printed
    assert resume_cmd[:3] == [sys.executable, "-m", "hessian_tools"]
    assert resume_cmd[-1] == "--resume" and resume_cmd[resume_cmd.index("--out") + 1] == str(out)

    # the printed command's arguments, run in this process: its solvers are
    # compiled here already (a third process took ~20 s of compiling on 2 cores)
    status, _, resumed_err = _main(resume_cmd[3:])
    assert status == 0, resumed_err
    assert "reused the saved result" in resumed_err
    resumed = json.loads((out / "summary.json").read_text())
    reference = json.loads((full / "summary.json").read_text())
    assert _without_timings(resumed) == _without_timings(reference)


@pytest.mark.slow
def test_resume_refuses_parts_of_other_settings_or_another_problem(toy_report, tmp_path):
    _, full, _ = toy_report
    out = tmp_path / "copy"
    shutil.copytree(full, out)
    status, _, err = _main(["analyze", TOY, "--out", str(out), "--resume", "--quiet", *OPTIONS])
    assert status == 0, err  # same settings: every part reused
    other = [*OPTIONS[:-1], "9"]  # trace_matvecs 8 -> 9
    status, _, err = _main(["analyze", TOY, "--out", str(out), "--resume", "--quiet", *other])
    assert status == 1
    assert "part trace" in err and "trace_matvecs 8 -> 9" in err and "drop --resume" in err
    assert err.count("\n") == 1  # one line
    status, _, err = _main(
        ["analyze", f"{TARGETS}:non_scalar", "--out", str(out), "--resume", "--quiet"]
    )
    assert status == 1  # checked before the folder: its loss is not a scalar


ERRORS = [
    ("nowhere/missing.py:make", 2, "no such file: nowhere/missing.py"),
    ("no_such_module_here:make", 2, "no module named 'no_such_module_here'"),
    (f"{TARGETS}:absent", 2, "has no factory 'absent' (its functions:"),
    (f"{TARGETS}:NOT_A_FUNCTION", 2, "is not a function that returns a Problem"),
    (f"{TARGETS}:wrong_type", 2, "returned dict, not a hessian_tools.Problem("),
    (f"{TARGETS}:raises", 1, "raised RuntimeError: the data folder is missing"),
    (f"{TARGETS}:non_scalar", 1, "must return a scalar; got shape (3,)"),
    (f"{TARGETS}:not_finite", 1, "the loss is not finite (NaN or inf)"),
    (str(TARGETS), 2, "TARGET must be package.module:factory or path/to/file.py:factory"),
]


@pytest.mark.parametrize(("target", "status", "message"), ERRORS, ids=[e[2][:20] for e in ERRORS])
def test_errors_are_one_line_with_their_status(target, status, message, tmp_path):
    got, printed, err = _main(["analyze", target, "--out", str(tmp_path / "out"), "--quiet"])
    assert got == status
    assert err.startswith("hessian-tools: error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err and printed == ""
    assert not (tmp_path / "out").exists()  # nothing computed, nothing written


def test_a_module_target_and_a_part_subset(tmp_path):
    # package.module:factory (tests/ is on the path); only the point part, and
    # the parts a selected part needs come along
    status, printed, err = _main(
        [
            "analyze",
            "analyze_targets:toy_saddle",
            "--parts",
            "point",
            "--quiet",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0, err
    assert err == ""  # --quiet: no bars, no status lines
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["parts"] == ["point"] and s["num_matvecs"]["total"] == 0
    assert s["problem"] == "toy saddle" and s["num_params"] == 15
    assert s["loss"] == pytest.approx(0.0, abs=1e-12)  # the saddle is at v = c
    assert "parameters" in printed and "toy saddle" in printed


def test_a_log_file_gets_one_line_per_finished_part_and_no_bars(tmp_path):
    # stderr is not a terminal here (as when redirected to a file): no
    # progress bars, whose every redraw would be a line of its own
    argv = ["analyze", TOY, "--parts", "point,trace", "--out", str(tmp_path), *OPTIONS]
    status, _, err = _main(argv)
    assert status == 0, err
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("[1/2] point: done in") and lines[0].endswith(" 0 HVPs")
    assert lines[1].startswith("[2/2] trace: done in") and lines[1].endswith(" 8 HVPs")
    assert "\r" not in err and "it/s" not in err and "HVP/s" not in err


def test_an_unwritable_output_folder_is_an_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    status, _, err = _main(["analyze", TOY, "--out", str(blocker / "report"), "--quiet"])
    assert status == 1
    assert f"cannot write to the output folder {blocker / 'report'}: Not a directory" in err


def test_debug_adds_the_traceback(tmp_path):
    status, _, err = _main(["analyze", f"{TARGETS}:raises", "--debug", "--out", str(tmp_path)])
    assert status == 1
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("hessian-tools: error:")


def test_python_dash_m_runs_the_command():
    run = _cli("analyze", "nowhere/missing.py:make", timeout=120)
    assert run.returncode == 2
    assert run.stderr == "hessian-tools: error: no such file: nowhere/missing.py\n"


BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _browser(profile):
    missing = [p for p in ("/usr/bin/chromium", "/usr/bin/chromedriver") if not Path(p).exists()]
    if missing:
        pytest.fail(
            f"the browser test needs Debian's chromium and chromium-driver ({missing} missing): "
            "bash .ci/system-packages.sh installs them (make test and .ci/run run it)"
        )
    try:
        from selenium import webdriver
    except ImportError:
        pytest.fail("the browser test needs selenium: pip install -e '.[dev]'")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in [*BROWSER_FLAGS, f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path="/usr/bin/chromedriver")
    return webdriver.Chrome(options=opts, service=service)


def _page_problems(driver, path):
    """(images that did not load, console errors, whether the summary table is there)."""
    from selenium.webdriver.common.by import By

    driver.get(Path(path).as_uri())
    widths = driver.execute_script(
        "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0);"
    )
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return (
        [i for i, w in enumerate(widths) if not w > 0],
        errors,
        len(widths),
        bool(driver.find_elements(By.CSS_SELECTOR, "table.summary td")),
    )


def _system_packages(tmp_path, **env):
    """Run .ci/system-packages.sh as a user without root and without sudo."""
    fake = tmp_path / "bin"
    fake.mkdir(parents=True)
    for name, body in (("id", "echo 1000"), ("sudo", "exit 1")):
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", **env}
    script = REPO / ".ci" / "system-packages.sh"
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)


def test_system_packages_without_root_stop_with_the_command_to_run(tmp_path):
    run = _system_packages(tmp_path, CHROMIUM=str(tmp_path / "none"))
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1  # one line
    assert "run: sudo apt-get install -y chromium chromium-driver" in run.stderr
    present = _system_packages(tmp_path / "again", CHROMIUM="/bin/sh", CHROMEDRIVER="/bin/sh")
    assert (present.returncode, present.stderr) == (0, "")  # installed: nothing to do


@pytest.mark.slow  # starts a browser
def test_the_report_in_a_real_browser(toy_report, tmp_path):
    _, out, _ = toy_report
    broken = tmp_path / "broken.html"  # the check itself must be able to fail
    broken.write_text("<!doctype html><html><body><img src='missing.png'></body></html>")
    driver = _browser(tmp_path / "profile")
    try:
        bad_images, errors, count, table = _page_problems(driver, out / "index.html")
        assert count == 5 and bad_images == [] and table
        assert errors == []
        # a screenshot of the page, for a person to look at (HT_SCREENSHOT=path keeps it)
        shot = Path(os.environ.get("HT_SCREENSHOT", tmp_path / "report.png"))
        driver.set_window_size(1200, 2400)
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        bad_images, errors, _, table = _page_problems(driver, broken)
        assert bad_images == [0] and errors and not table
    finally:
        driver.quit()


# --------------------------------------------------------------------------
# demo


@pytest.fixture(scope="module")
def demo():
    """One run of the toy part of the demo (float64), shared by the tests
    below: its exit status, its output folder and what it printed.
    `hessian-tools demo --x64 --problems himmelblau,saddle --starts 8 --skip
    digits` in a subprocess started when the tests were collected
    (_background; it fails the tests unless it exits with 0)."""
    assert ",".join(PROBLEMS) == "himmelblau,saddle" and STARTS == 8  # _background's argv
    _, out, printed = _background.result("toy-demo")
    return 0, out, printed


@pytest.mark.slow  # ~12 s: the linear autoencoder section always runs (256 starts)
def test_demo_writes_the_report(demo):
    status, out, printed = demo
    assert status == 0
    names = [f"{p}.png" for p in PROBLEMS] + ["linear_autoencoder_index_vs_loss.png"]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (out / "index.html").read_text()
    assert all(f"data-file='{name}'" in page for name in names)
    assert page.count("src='data:image/png;base64,") == len(names)  # embedded: offline
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


@pytest.mark.slow  # ~1-2 min on 2 cores: compiling every solver for a 2,410-parameter MLP
def test_demo_digits_mlp_analysed_before_and_after_training():
    # `hessian-tools demo --skip toy,autoencoder --steps 20 --grid 5`, run in
    # a subprocess started when the tests were collected (_background)
    _, tmp_path, _ = _background.result("digits-demo")
    digits = json.loads((tmp_path / "summary.json").read_text())["digits"]
    init, trained = digits["init"], digits["trained"]
    assert init["num_params"] == trained["num_params"] == 64 * 32 + 32 + 32 * 10 + 10
    assert trained["loss"] < init["loss"] and digits["accuracy"]["trained"] > 0.5
    for s in (init, trained):
        assert set(s["eigenvalues"]) >= {"largest", "smallest"}
        assert s["eigenvalues"]["largest"]["values"][0] > 0 and s["trace"]["stderr"] > 0
    assert [r["step"] for r in digits["track"]] == [0, 10, 20]
    assert digits["track"][0]["sharpness"] == pytest.approx(
        init["eigenvalues"]["largest"]["values"][0], rel=1e-6
    )
    page = (tmp_path / "index.html").read_text()
    for name in ("digits_init/slice_2d.png", "digits_trained/density.png", "sharpness_track.png"):
        assert f"data-file='{name}'" in page
    assert (tmp_path / "digits_trained" / "index.html").exists()


def test_unknown_problem_exits_non_zero_naming_the_known_ones(tmp_path):
    run = _cli("demo", "--out", str(tmp_path), "--problems", "himmelblau,nope", timeout=120)
    assert run.returncode == 2
    assert "nope" in run.stderr
    for known in TOY_2D:
        assert known in run.stderr
    assert not list(tmp_path.iterdir())  # nothing computed, nothing written


# --------------------------------------------------------------------------
# The persistent compilation cache (an application's choice, so the CLI's)


def test_the_cli_caches_compiled_programs_and_a_second_run_loads_them():
    # five runs of `hessian-tools analyze` (tests/_cli_cache_check.py), in
    # the background (_background)
    got, _, _ = _background.result("cli-cache")
    status, stderr = got["status"], got["stderr"]
    assert status["first"] == 0, stderr["first"]
    entries = set(got["entries"])
    assert entries, "nothing was cached"
    assert status["second"] == 0, stderr["second"]
    # the programs were loaded, not compiled again (every program is cached
    # there, the CLI's 0.1 s threshold set to 0 through JAX's variable)
    new = set(got["after"]) - entries
    assert not new, sorted(new)
    assert status["off"] == 0, stderr["off"]
    # a file where the cache folder should be: a warning, and a run without it
    assert status["warned"] == 0 and "cannot be written" in stderr["warned"]
    assert status["both"] == 2 and "not allowed with" in stderr["both"]
