"""hessian_tools.cli._store and _html: fingerprints, the saved parts and their refusals,
and the self-contained page (the browser check of a real report is in
test_cli.py)."""

import base64
import json

import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools.cli import _html, _store
from hessian_tools.cli._part import PartResult


def _loss(p, x):
    return jnp.sum((p["kernel"] @ x) ** 2)


def _problem(scale=1.0, name="p"):
    params = {"kernel": jnp.ones((2, 3)) * scale, "step": 3}  # a non-array leaf too
    return ht.Problem(_loss, params, args=(jnp.arange(3.0),), name=name)


def test_fingerprint_is_stable_and_sees_params_data_and_loss():
    fp = _store.problem_fingerprint
    assert fp(_problem()) == fp(_problem())  # rebuilt from scratch: same bytes, same hash
    assert fp(_problem()) == fp(_problem(name="renamed"))  # the name is only a label
    assert fp(_problem()) != fp(_problem(scale=2.0))
    assert fp(_problem()) != fp(ht.Problem(_loss, _problem().params, args=(jnp.ones(3),)))
    other = lambda p, x: _loss(p, x)
    assert fp(_problem()) != fp(ht.Problem(other, _problem().params, args=_problem().args))
    as32 = jnp.ones((2, 3), jnp.float32)
    assert fp(_problem()) != fp(ht.Problem(_loss, {"kernel": as32, "step": 3}, _problem().args))


def _closure_problem(scale, act):
    x = jnp.arange(3.0) * scale  # captured, not passed: invisible to the arguments

    def loss(p):
        return jnp.sum(act(p["kernel"] @ x) ** 2)

    return ht.Problem(loss, {"kernel": jnp.ones((2, 3))})


def test_fingerprint_sees_what_a_closure_captures():
    fp = _store.problem_fingerprint
    # same qualified name ("_closure_problem.<locals>.loss"), params and args
    assert fp(_closure_problem(1.0, jnp.tanh)) == fp(_closure_problem(1.0, jnp.tanh))
    assert fp(_closure_problem(1.0, jnp.tanh)) != fp(_closure_problem(5.0, jnp.tanh))
    assert fp(_closure_problem(1.0, jnp.tanh)) != fp(_closure_problem(1.0, jnp.sin))


def test_part_records_are_strict_json_and_pair_with_their_own_arrays(tmp_path, monkeypatch):
    store = _store.PartStore(tmp_path, _problem(), resume=False)
    store.save(_result(value=float("nan")), {"seed": 0})
    record = json.loads((tmp_path / "parts" / "trace.json").read_text(), parse_constant=pytest.fail)
    assert record["results"]["value"] is None  # NaN is not JSON: written as null
    # an interrupt between the arrays and the record leaves no old record
    # next to new arrays: the part is computed again on resume
    monkeypatch.setattr(_store, "write_json", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        store.save(_result(value=2.0), {"seed": 0})
    assert _store.PartStore(tmp_path, _problem(), resume=True).load("trace", {"seed": 0}) is None


def test_a_part_saved_by_another_version_is_refused(tmp_path, monkeypatch):
    _store.PartStore(tmp_path, _problem(), resume=False).save(_result(), {"seed": 0})
    monkeypatch.setattr(ht, "__version__", "0.0.dev-other")
    with pytest.raises(_store.StaleResultError, match="made by hessian_tools"):
        _store.PartStore(tmp_path, _problem(), resume=True).load("trace", {"seed": 0})


def _result(part="trace", value=1.5):
    return PartResult(part, {"value": value}, {"v": np.arange(3.0)}, 7, 0.25)


def test_a_saved_part_is_reused_only_when_resuming(tmp_path):
    store = _store.PartStore(tmp_path, _problem(), resume=False)
    store.save(_result(), {"seed": 0})
    assert store.load("trace", {"seed": 0}) is None  # a fresh run computes everything
    again = _store.PartStore(tmp_path, _problem(), resume=True)
    loaded = again.load("trace", {"seed": 0})
    assert loaded.results == {"value": 1.5} and loaded.num_matvecs == 7
    np.testing.assert_array_equal(loaded.arrays["v"], np.arange(3.0))
    assert again.load("density", {"seed": 0}) is None  # not saved yet: to compute


def test_a_saved_part_of_other_settings_or_another_problem_is_refused(tmp_path):
    _store.PartStore(tmp_path, _problem(), resume=False).save(_result(), {"seed": 0})
    with pytest.raises(_store.StaleResultError, match=r"other settings \(seed 0 -> 1\)"):
        _store.PartStore(tmp_path, _problem(), resume=True).load("trace", {"seed": 1})
    with pytest.raises(_store.StaleResultError, match=r"another problem.*drop --resume"):
        _store.PartStore(tmp_path, _problem(scale=3.0), resume=True).load("trace", {"seed": 0})


def test_a_part_whose_arrays_were_lost_is_computed_again(tmp_path):
    store = _store.PartStore(tmp_path, _problem(), resume=True)
    store.save(_result(), {"seed": 0})
    (tmp_path / "parts" / "trace.npz").unlink()
    assert store.load("trace", {"seed": 0}) is None


def test_files_are_written_whole_and_readable_by_all(tmp_path):
    store = _store.PartStore(tmp_path, _problem(), resume=False)
    store.save(_result(), {"seed": 0})
    record = json.loads((tmp_path / "parts" / "trace.json").read_text())
    assert record["format"] == _store.PART_FORMAT and record["arrays"] == ["v"]
    assert not list((tmp_path / "parts").glob(".*"))  # no temporary file left behind
    assert (tmp_path / "parts" / "trace.json").stat().st_mode & 0o777 == 0o644


def test_an_unwritable_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(_store.ReportError, match="cannot write to the output folder"):
        _store.PartStore(blocker / "out", _problem(), resume=False)


def test_the_page_embeds_figures_and_escapes_text():
    png = b"\x89PNG\r\n\x1a\nfake"
    page = _html.render_html(
        "<title>",
        [
            _html.Section(
                "a <b>",
                [
                    "x < y",
                    _html.Raw("<p id='raw'>ok</p>"),
                    _html.Table(("h",), [["<td>"], [1.23456789]], bad=frozenset({1})),
                    _html.Figure("f.png", png, "cap"),
                ],
            )
        ],
    )
    assert "<h1>&lt;title&gt;</h1>" in page and "<h2>a &lt;b&gt;</h2>" in page
    assert "<p>x &lt; y</p>" in page and "<p id='raw'>ok</p>" in page
    assert "<td>&lt;td&gt;</td>" in page and "<tr class='bad'><td>1.23457</td>" in page
    assert f"src='data:image/png;base64,{base64.b64encode(png).decode()}'" in page
    assert "data-file='f.png'" in page
    assert "src='http" not in page and "<script" not in page  # nothing to fetch
