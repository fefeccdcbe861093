"""Loss-landscape slices (hessian_tools.landscape) against direct evaluation."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import TraceCounter, asym_loss, asym_problem, at

from hessian_tools import landscape as L
from hessian_tools.dense import hessian
from hessian_tools.landscape import _slices


@pytest.fixture
def problem():
    return asym_problem()


XS = np.array([-1.0, -0.4, 0.0, 0.3, 0.9, 1.5, 2.0])  # 7 columns
YS = np.array([-0.8, 0.0, 0.6, 1.7])  # 4 rows


# --------------------------------------------------------------------------
# Slices against direct evaluation


def test_slice_2d_matches_direct_evaluation_on_non_square_grid(problem):
    params, a, d1, d2 = problem
    s = L.slice_2d(asym_loss, params, (d1, d2), XS, YS, a, chunk_size=5)
    assert s.values.shape == (len(YS), len(XS))
    ref = np.array([[asym_loss(at(params, (x, y), (d1, d2)), a) for x in XS] for y in YS])
    np.testing.assert_allclose(s.values, ref, rtol=1e-12)
    # the orientation that Li et al.'s tool gets wrong: transposed would differ
    assert not np.allclose(s.values, ref.T.reshape(s.values.shape))
    np.testing.assert_array_equal(s.xs, XS)
    np.testing.assert_array_equal(s.ys, YS)
    i0, j0 = 1, 2  # (xs[2], ys[1]) == (0, 0) is params itself
    assert s.values[i0, j0] == pytest.approx(float(asym_loss(params, a)), rel=1e-14)


def test_slice_1d_matches_direct_evaluation(problem):
    params, a, d1, _ = problem
    alphas = np.array([0.5, -2.0, 0.0, 1.0, 3.0])  # unsorted on purpose
    s = L.slice_1d(asym_loss, params, d1, alphas, a, chunk_size=2)
    ref = [asym_loss(at(params, (t,), (d1,)), a) for t in alphas]
    np.testing.assert_allclose(s.values, ref, rtol=1e-12)
    np.testing.assert_array_equal(s.alphas, alphas)


def test_chunk_size_does_not_change_values(problem):
    params, a, d1, d2 = problem
    ref = L.slice_2d(asym_loss, params, (d1, d2), XS, YS, a).values
    for chunk in (1, 3, 28, 100):
        v = L.slice_2d(asym_loss, params, (d1, d2), XS, YS, a, chunk_size=chunk).values
        np.testing.assert_allclose(v, ref, rtol=1e-13)


def test_float32_params_stay_float32(problem):
    params, a, d1, _ = problem
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    seen = []

    def f(p, a):
        seen.append(p["w"].dtype)
        return asym_loss(p, a.astype(jnp.float32))

    s = L.slice_1d(f, p32, d1, XS, a)
    assert set(seen) == {jnp.dtype(jnp.float32)}
    ref = [asym_loss(at(params, (t,), (d1,)), a) for t in XS]
    np.testing.assert_allclose(s.values, ref, rtol=1e-5)


def test_batches_weighted_by_size(problem):
    params, _, d1, d2 = problem
    rng = np.random.default_rng(0)
    data = rng.normal(size=(10, 3))

    def f(p, x):  # a per-sample mean
        return jnp.mean((x @ p["w"].T) ** 2) + jnp.sum(p["b"] ** 2)

    batches = [(data[:3],), (data[3:],)]  # uneven: 3 and 7 samples
    s = L.slice_2d(f, params, (d1, d2), XS[:3], YS[:2], batches=batches)
    full = L.slice_2d(f, params, (d1, d2), XS[:3], YS[:2], data)
    np.testing.assert_allclose(s.values, full.values, rtol=1e-12)
    # *args next to batches= are shared by every batch and come first
    g = lambda p, scale, x: scale * f(p, x)
    shared = L.slice_1d(g, params, d1, XS, 2.0, batches=batches)
    np.testing.assert_allclose(
        shared.values, 2 * L.slice_1d(f, params, d1, XS, data).values, rtol=1e-12
    )


def test_metrics_and_curvature_metric(problem):
    params, a, d1, d2 = problem
    metrics = {
        "wnorm": lambda p, a: jnp.sum(p["w"] ** 2),
        "lmax": L.extreme_eigenvalue_metric(asym_loss, num_matvecs=9),
        "lmin": L.extreme_eigenvalue_metric(asym_loss, "smallest", num_matvecs=9),
    }
    xs, ys = XS[:3], YS[:2]
    s = L.slice_2d(asym_loss, params, (d1, d2), xs, ys, a, metrics=metrics)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            p = at(params, (x, y), (d1, d2))
            w = np.linalg.eigvalsh(np.asarray(hessian(asym_loss, p, a)))
            assert s.metrics["wnorm"][i, j] == pytest.approx(float(jnp.sum(p["w"] ** 2)))
            assert s.metrics["lmax"][i, j] == pytest.approx(w[-1], rel=1e-9)
            assert s.metrics["lmin"][i, j] == pytest.approx(w[0], rel=1e-9, abs=1e-9)


def test_compiled_once_for_new_params_and_data(problem):
    params, a, d1, d2 = problem
    loss = TraceCounter(asym_loss)
    L.slice_2d(loss, params, (d1, d2), XS, YS, a)
    traced = loss.count
    # a new point, new directions and new data of the same shapes: no recompilation
    other = jax.tree.map(lambda x: x + 1.0, params)
    s = L.slice_2d(loss, other, (d2, d1), XS, YS, a * 2, progress=True)
    assert loss.count == traced
    ref = asym_loss(at(other, (XS[3], YS[2]), (d2, d1)), a * 2)
    assert s.values[2, 3] == pytest.approx(float(ref), rel=1e-12)


def test_params_not_mutated(problem):
    params, a, d1, d2 = problem
    p_np = jax.tree.map(lambda x: np.array(x), params)
    before = jax.tree.map(np.copy, p_np)
    L.slice_2d(asym_loss, p_np, (d1, d2), XS, YS, a)
    L.slice_1d(asym_loss, p_np, d1, XS, a)
    jax.tree.map(np.testing.assert_array_equal, p_np, before)


def test_non_finite_values_warn(problem):
    params, a, d1, _ = problem
    f = lambda p, a: jnp.log(jnp.sum(p["w"]) + 1.0)  # log of a negative number for large alpha
    with pytest.warns(RuntimeWarning, match="NaN or inf"):
        L.slice_1d(f, params, d1, np.array([0.0, -100.0]), a)


# --------------------------------------------------------------------------
# Bad input


def test_bad_inputs(problem):
    params, a, d1, d2 = problem
    wrong = {"w": d1["w"]}
    with pytest.raises(ValueError, match="structure"):
        L.slice_1d(asym_loss, params, wrong, XS, a)
    with pytest.raises(ValueError, match=r"directions\[1\]"):
        L.slice_2d(asym_loss, params, (d1, {"w": d1["w"], "b": jnp.ones(4)}), XS, YS, a)
    with pytest.raises(ValueError, match="empty"):
        L.slice_2d(asym_loss, params, (d1, d2), XS, [], a)
    with pytest.raises(ValueError, match="1-D"):
        L.slice_2d(asym_loss, params, (d1, d2), np.ones((2, 3)), YS, a)
    with pytest.raises(ValueError, match="1-D"):
        L.slice_1d(asym_loss, params, d1, 0.5, a)
    with pytest.raises(ValueError, match="NaN"):
        L.slice_1d(asym_loss, params, d1, [0.0, np.nan], a)
    with pytest.raises(ValueError, match="pair"):
        L.slice_2d(asym_loss, params, (d1,), XS, YS, a)
    with pytest.raises(ValueError, match="scalar"):
        L.slice_1d(lambda p, a: p["w"], params, d1, XS, a)
    with pytest.raises(ValueError, match="metric 'm'"):
        L.slice_1d(asym_loss, params, d1, XS, a, metrics={"m": lambda p, a: p["b"]})
    with pytest.raises(ValueError, match="chunk_size"):
        L.slice_1d(asym_loss, params, d1, XS, a, chunk_size=0)


# --------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_resume_equals_uninterrupted(problem, tmp_path, monkeypatch):
    params, a, d1, d2 = problem
    path = tmp_path / "grid.npz"
    full = L.slice_2d(asym_loss, params, (d1, d2), XS, YS, a, metrics={"s": lambda p, a: p["b"][0]})

    metric = {"s": lambda p, a: p["b"][0]}
    real = _slices._eval_points
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 3:  # rows 0 and 1 done, interrupted during row 2
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(_slices, "_eval_points", flaky)
    with pytest.raises(KeyboardInterrupt):
        L.slice_2d(asym_loss, params, (d1, d2), XS, YS, a, metrics=metric, checkpoint=path)
    with np.load(path) as saved:
        assert saved["rows"].shape[0] == 2  # only the row in progress was lost
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]

    monkeypatch.setattr(_slices, "_eval_points", real)
    counted = []
    monkeypatch.setattr(_slices, "_eval_points", lambda *args: counted.append(1) or real(*args))
    resumed = L.slice_2d(asym_loss, params, (d1, d2), XS, YS, a, metrics=metric, checkpoint=path)
    assert len(counted) == len(YS) - 2  # rows 0 and 1 were not recomputed
    np.testing.assert_allclose(resumed.values, full.values, rtol=1e-14)
    np.testing.assert_allclose(resumed.metrics["s"], full.metrics["s"], rtol=1e-14)
    # a finished checkpoint answers without evaluating anything
    counted.clear()
    again = L.slice_2d(asym_loss, params, (d1, d2), XS, YS, a, metrics=metric, checkpoint=path)
    assert not counted
    np.testing.assert_array_equal(again.values, resumed.values)


def test_checkpoint_from_other_grid_or_problem_is_refused(problem, tmp_path):
    params, a, d1, d2 = problem
    path = str(tmp_path / "grid.npz")
    L.slice_2d(asym_loss, params, (d1, d2), XS, YS, a, checkpoint=path)
    with pytest.raises(ValueError, match="different grid"):
        L.slice_2d(asym_loss, params, (d1, d2), XS, YS[:3], a, checkpoint=path)
    with pytest.raises(ValueError, match="different grid"):
        L.slice_2d(asym_loss, params, (d1, d2), XS + 0.1, YS, a, checkpoint=path)
    with pytest.raises(ValueError, match="different problem"):
        L.slice_2d(asym_loss, params, (d2, d1), XS, YS, a, checkpoint=path)
    other = jax.tree.map(lambda x: x + 1e-9, params)
    with pytest.raises(ValueError, match="different problem"):
        L.slice_2d(asym_loss, other, (d1, d2), XS, YS, a, checkpoint=path)
    # one entry one ulp away: the on-device fingerprint hashes bits, not values
    leaf = jax.tree.leaves(params)[0]
    nudged = leaf.ravel().at[0].set(jnp.nextafter(leaf.ravel()[0], jnp.inf)).reshape(leaf.shape)
    other = jax.tree.unflatten(jax.tree.structure(params), [nudged, *jax.tree.leaves(params)[1:]])
    with pytest.raises(ValueError, match="different problem"):
        L.slice_2d(asym_loss, other, (d1, d2), XS, YS, a, checkpoint=path)
    with pytest.raises(ValueError, match="different problem"):
        L.slice_2d(asym_loss, params, (d1, d2), XS, YS, a + 1, checkpoint=path)
    with pytest.raises(ValueError, match="different problem"):
        L.slice_2d(
            asym_loss, params, (d1, d2), XS, YS, a, checkpoint=path, metrics={"m": asym_loss}
        )
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="cannot read"):
        L.slice_2d(asym_loss, params, (d1, d2), XS, YS, a, checkpoint=junk)
    assert junk.read_bytes() == b"not a zip file"
