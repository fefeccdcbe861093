"""hessian_tools.cli: the Problem type, the settings, the Part records,
which parts run, and what a saved part must match (the end-to-end checks
against the library's API are in test_cli.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools import _problem
from hessian_tools.cli import _analysis, _part
from hessian_tools.cli._analysis import Analysis
from hessian_tools.cli._parts_landscape import eigenvector_scale, random_direction


def _loss(p, x):
    return jnp.sum((p * x) ** 2)


def test_problem_is_exported_and_is_not_the_toy_type():
    assert ht.Problem is _problem.Problem
    assert "Problem" in ht.__all__
    assert ht.problems.Problem is ht.problems.ToyProblem  # the old name of the toy type
    assert ht.problems.ToyProblem is not ht.Problem


def test_problem_takes_a_list_of_args_as_a_tuple_and_names_itself_after_the_loss():
    p = ht.Problem(_loss, jnp.ones(2), args=[jnp.ones(2)])
    assert isinstance(p.args, tuple) and len(p.args) == 1
    assert p.title == "_loss"
    assert ht.Problem(_loss, jnp.ones(2), name="mine").title == "mine"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loss": 3}, "callable"),
        ({"args": jnp.ones(2)}, "tuple"),
        ({"batches": iter([(jnp.ones(2),)])}, "one-shot iterator"),
        ({"name": 5}, "name"),
    ],
)
def test_problem_rejects_what_it_cannot_use(kwargs, match):
    fields = {"loss": _loss, "params": jnp.ones(2), **kwargs}
    with pytest.raises(TypeError, match=match):
        ht.Problem(**fields)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 0}, "top_k"),
        ({"grid": 2}, "grid"),
        ({"seed": -1}, "seed"),
        ({"span": 0.0}, "span"),
        ({"density_matvecs": 5, "num_probes": 12}, "at least num_probes"),
        ({"top_k": True}, "top_k"),
    ],
)
def test_settings_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _part.Settings(**kwargs)


def test_parts_default_all_skip_and_requirements():
    assert _analysis.resolve_parts() == list(_analysis.DEFAULT_PARTS)
    assert "blocks" not in _analysis.DEFAULT_PARTS
    assert _analysis.resolve_parts(["all"]) == list(_analysis.PARTS)
    # a slice needs the eigenvectors; the point always runs; PARTS order kept
    assert _analysis.resolve_parts(["slice_2d", "trace"]) == [
        "point",
        "eigenvalues",
        "trace",
        "slice_2d",
    ]
    assert "density" not in _analysis.resolve_parts(skipped=["density"])


@pytest.mark.parametrize(
    ("selected", "skipped", "match"),
    [
        (["eigenvalue"], [], "unknown part.*eigenvalue"),
        (None, ["point"], "cannot be skipped"),
        (["slice_1d"], ["eigenvalues"], "needs part eigenvalues"),
    ],
)
def test_parts_refuse_what_cannot_run(selected, skipped, match):
    with pytest.raises(ValueError, match=match):
        _analysis.resolve_parts(selected, skipped)


def test_part_settings_name_what_the_result_depends_on():
    base = _part.Settings()
    assert _analysis.part_settings("point", base) == {"x64": True}
    assert _analysis.part_settings("trace", base) == {
        "trace_matvecs": 100,
        "seed": 0,
        "x64": True,
    }
    # a slice depends on the eigenvalues' settings too (it uses their vectors)
    slices = _analysis.part_settings("slice_1d", _part.Settings(top_k=3))
    assert slices["requires"]["eigenvalues"]["top_k"] == 3
    # the trace does not depend on the slices' grid
    assert _analysis.part_settings("trace", _part.Settings(grid=5)) == _analysis.part_settings(
        "trace", base
    )


def test_part_keys_differ_by_part_and_seed_and_are_stable():
    k = lambda seed, part: np.asarray(_part.part_key(seed, part)).tolist()
    assert k(0, "trace") == k(0, "trace")
    assert k(0, "trace") != k(0, "density")
    assert k(0, "trace") != k(1, "trace")


def test_analysis_reports_a_bad_loss_as_a_problem_error():
    bad = ht.Problem(lambda p: p * 2.0, jnp.ones(3), name="vector")
    with pytest.raises(_part.ProblemError, match=r"'vector'.*scalar"):
        Analysis(bad, _part.Settings())


def test_random_direction_falls_back_to_a_unit_vector_at_zero_params():
    # a toy problem at the origin: no scale to take the direction's from
    an = Analysis(ht.Problem(ht.problems.saddle, jnp.zeros(2)), _part.Settings())
    d, label = random_direction(an)
    assert label.startswith("unit")
    np.testing.assert_allclose(np.linalg.norm(d), 1.0, rtol=1e-12)


def test_random_direction_without_a_known_layout_names_the_option():
    loss = lambda p: jnp.sum(p["w"] ** 2)
    an = Analysis(ht.Problem(loss, {"w": jnp.ones((3, 2))}), _part.Settings())
    with pytest.raises(_part.ProblemError, match="--filter-axis"):
        random_direction(an)
    given = Analysis(ht.Problem(loss, {"w": jnp.ones((3, 2))}), _part.Settings(filter_axis=-1))
    assert random_direction(given)[1] == "filter"


def test_random_direction_reads_the_filter_axes_from_the_model():
    # Haiku's w is (in, out), a PyTorch-style dict's (out, in): no option needed
    x = jnp.ones((5, 3))
    haiku = lambda p, x: jnp.sum(jnp.tanh(x @ p["w"]))
    torch = lambda p, x: jnp.sum(jnp.tanh(x @ p["w"].T))
    w = jnp.arange(1.0, 7.0).reshape(3, 2)
    for loss, params, axis in ((haiku, {"w": w}, -1), (torch, {"w": w.T}, 0)):
        read = random_direction(Analysis(ht.Problem(loss, params, args=(x,)), _part.Settings()))
        named = random_direction(
            Analysis(ht.Problem(loss, params, args=(x,)), _part.Settings(filter_axis=axis))
        )
        np.testing.assert_allclose(read[0], named[0], rtol=1e-6)


@pytest.mark.slow  # compiles classify's Lanczos path
def test_classification_counts_the_density_only_where_classify_runs_it():
    # n = 3000: classify's Lanczos path; at a minimum it runs no spectral
    # density (1,536 HVPs alone), and the part reports the HVPs classify
    # counted (465 here, where the old estimate said 240)
    n = 3000
    loss = lambda p, a: 0.5 * jnp.sum(a * p**2)
    problem = ht.Problem(loss, jnp.zeros(n), args=(jnp.linspace(1.0, 10.0, n),))
    result = Analysis(problem, _part.Settings()).compute("classification", {})
    assert result.results["kind"] == "minimum" and not result.results["exact"]
    assert 0 < result.num_matvecs < 1536


def test_every_part_is_one_complete_record():
    for name, part in _analysis.PARTS.items():
        assert part.name == name and part.description
        assert set(part.settings) <= set(_part.Settings.__dataclass_fields__), name
        assert set(part.requires) <= set(_analysis.PARTS), name
        assert (part.figure is None) == (part.draw is None), name
        assert part.heading or name == "point", name  # point is the summary table


def test_eigenvector_scale_matches_the_random_rise_within_the_reach():
    quadratic = lambda t: 0.5 * 200.0 * t**2
    assert eigenvector_scale(quadratic, 0.25, top=200.0, reach=3.0) == pytest.approx(0.05)
    # far from the point a cross-entropy grows linearly: the measured rise decides
    linear = lambda t: 40.0 * t
    t = eigenvector_scale(linear, 2.0, top=1e-3, reach=3.0)
    assert 2.0 / 1.25 <= linear(t) <= 2.0 * 1.25
    flat = lambda t: 1e-3 * t**2
    assert eigenvector_scale(flat, 10.0, top=2e-3, reach=3.0) == 3.0  # flat: the reach
    assert eigenvector_scale(quadratic, 0.0, top=200.0, reach=3.0) == 3.0  # a flat random line


def _sharp(p, a):
    return 0.5 * jnp.sum(a * (p["kernel"].ravel() - 1.0) ** 2)  # a minimum at ones


def test_a_sharp_top_eigenvector_does_not_flatten_the_random_slice():
    # one curvature of 1e4 among ones: scaled to the random direction's norm,
    # the eigenvector's loss rose 1e4 times more than the random one's, a
    # flat line beside it on one axis (the report's figure before)
    a = jnp.asarray([1e4] + [1.0] * 127)
    problem = ht.Problem(_sharp, {"kernel": jnp.ones((16, 8))}, args=(a,))
    an = Analysis(problem, _part.Settings(grid=9, top_k=2))
    done = {p: an.compute(p, {}) for p in ("point", "eigenvalues")}
    r = an.compute("slice_1d", done)
    rise = {d: float(np.max(r.arrays[d])) for d in ("random", "top_eigenvector")}
    assert rise["random"] > 0
    assert 0.5 < rise["top_eigenvector"] / rise["random"] < 2.0
    norms = r.results["direction_norms"]
    assert norms["top_eigenvector"] < 0.5 * norms["random"]


def test_the_core_never_imports_the_application():
    # the command line only uses the core: no core module names hessian_tools.cli,
    # and importing the library loads neither the CLI nor matplotlib
    import re
    import subprocess
    import sys
    from pathlib import Path

    package = Path(ht.__file__).parent
    core = [p for p in package.rglob("*.py") if "cli" not in p.relative_to(package).parts]
    imports = re.compile(r"^\s*(from hessian_tools\.cli|import hessian_tools\.cli)", re.M)
    assert [p.name for p in core if imports.search(p.read_text())] == ["__main__.py"]
    code = (
        "import sys, hessian_tools as ht; ht.Problem; "
        "print(sorted(m for m in sys.modules if m.startswith(('hessian_tools.cli', 'matplotlib'))))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=package.parent
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
