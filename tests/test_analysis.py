"""hessian_tools.analysis: the Problem type, the settings, which parts run,
and what a saved part must match (hessian_tools._parts computes them; the
end-to-end checks against the library's API are in test_cli.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools import analysis
from hessian_tools._parts import Analysis


def _loss(p, x):
    return jnp.sum((p * x) ** 2)


def test_problem_is_exported_and_is_not_the_toy_type():
    assert ht.Problem is analysis.Problem
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
        analysis.Settings(**kwargs)


def test_parts_default_all_skip_and_requirements():
    assert analysis.resolve_parts() == list(analysis.DEFAULT_PARTS)
    assert "blocks" not in analysis.DEFAULT_PARTS
    assert analysis.resolve_parts(["all"]) == list(analysis.PARTS)
    # a slice needs the eigenvectors; the point always runs; PARTS order kept
    assert analysis.resolve_parts(["slice_2d", "trace"]) == [
        "point",
        "eigenvalues",
        "trace",
        "slice_2d",
    ]
    assert "density" not in analysis.resolve_parts(skipped=["density"])


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
        analysis.resolve_parts(selected, skipped)


def test_part_settings_name_what_the_result_depends_on():
    base = analysis.Settings()
    assert analysis.part_settings("point", base) == {"x64": True}
    assert analysis.part_settings("trace", base) == {
        "trace_matvecs": 100,
        "seed": 0,
        "x64": True,
    }
    # a slice depends on the eigenvalues' settings too (it uses their vectors)
    slices = analysis.part_settings("slice_1d", analysis.Settings(top_k=3))
    assert slices["requires"]["eigenvalues"]["top_k"] == 3
    # the trace does not depend on the slices' grid
    assert analysis.part_settings("trace", analysis.Settings(grid=5)) == analysis.part_settings(
        "trace", base
    )


def test_part_keys_differ_by_part_and_seed_and_are_stable():
    k = lambda seed, part: np.asarray(ht.analysis.part_key(seed, part)).tolist()
    assert k(0, "trace") == k(0, "trace")
    assert k(0, "trace") != k(0, "density")
    assert k(0, "trace") != k(1, "trace")


def test_analysis_reports_a_bad_loss_as_a_problem_error():
    bad = ht.Problem(lambda p: p * 2.0, jnp.ones(3), name="vector")
    with pytest.raises(analysis.ProblemError, match=r"'vector'.*scalar"):
        Analysis(bad, analysis.Settings())


def test_random_direction_falls_back_to_a_unit_vector_at_zero_params():
    # a toy problem at the origin: no scale to take the direction's from
    an = Analysis(ht.Problem(ht.problems.saddle, jnp.zeros(2)), analysis.Settings())
    d, label = an.random_direction()
    assert label.startswith("unit")
    np.testing.assert_allclose(np.linalg.norm(d), 1.0, rtol=1e-12)


def test_random_direction_without_a_known_layout_names_the_option():
    loss = lambda p: jnp.sum(p["w"] ** 2)
    an = Analysis(ht.Problem(loss, {"w": jnp.ones((3, 2))}), analysis.Settings())
    with pytest.raises(analysis.ProblemError, match="--filter-axis"):
        an.random_direction()
    given = Analysis(ht.Problem(loss, {"w": jnp.ones((3, 2))}), analysis.Settings(filter_axis=-1))
    assert given.random_direction()[1] == "filter"


@pytest.mark.slow  # compiles classify's Lanczos path
def test_classification_counts_the_density_only_where_classify_runs_it():
    # n = 3000: classify's Lanczos path; at a minimum it runs no spectral
    # density, so its HVP estimate is the eigenpairs' alone
    from hessian_tools.critical import classify_cost
    from hessian_tools.eigen import lanczos_cost

    n = 3000
    loss = lambda p, a: 0.5 * jnp.sum(a * p**2)
    problem = ht.Problem(loss, jnp.zeros(n), args=(jnp.linspace(1.0, 10.0, n),))
    result = Analysis(problem, analysis.Settings()).compute("classification", {})
    assert result.results["kind"] == "minimum" and not result.results["exact"]
    assert result.matvecs_estimated
    assert result.num_matvecs == lanczos_cost(n, 12, "both") < classify_cost(n, 6)
