"""Plots (hessian_tools.plotting) with the Agg backend: the expected artists."""

import dataclasses

import matplotlib

matplotlib.use("Agg")

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import LineCollection, PathCollection

from hessian_tools import plotting as P
from hessian_tools.landscape import Slice1D, Slice2D


@dataclasses.dataclass(frozen=True)
class Point:  # duck-typed stand-in for CriticalPoint
    kind: str
    x: np.ndarray
    value: float = 0.0
    index: int = 0
    eigenvalues: np.ndarray | None = None


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


POINTS = [
    Point("minimum", np.array([0.0, 0.0]), 0.0, 0, np.array([1.0, 2.0])),
    Point("minimum", np.array([1.0, 1.0]), 0.5, 0, np.array([1.0, 3.0])),
    Point("saddle", np.array([0.5, 0.2]), 1.0, 1, np.array([-1.0, 2.0])),
    Point("saddle", np.array([-0.5, 0.2]), 1.2, 1, np.array([-1.0, 2.0])),
    Point("saddle", np.array([0.1, -0.7]), 1.1, 1, np.array([-1.0, 2.0])),
    Point("maximum", np.array([0.3, 0.9]), 3.0, 2, np.array([-1.0, -2.0])),
]


def scatter_by_label(ax):
    return {c.get_label(): c for c in ax.collections if isinstance(c, PathCollection)}


def test_kind_styles_cover_every_kind_with_distinct_markers():
    kinds = {"minimum", "maximum", "saddle", "degenerate", "not_critical"}
    assert set(P.KIND_STYLES) == kinds
    assert len({s["marker"] for s in P.KIND_STYLES.values()}) == len(kinds)
    assert all({"marker", "color", "label"} <= set(s) for s in P.KIND_STYLES.values())


def test_plot_critical_points_one_marker_per_point_and_kind():
    _, ax = plt.subplots()
    out = P.plot_critical_points(POINTS, ax)
    assert out is ax
    groups = scatter_by_label(ax)
    assert set(groups) == {"minimum", "saddle", "maximum"}
    counts = {"minimum": 2, "saddle": 3, "maximum": 1}
    for kind, n in counts.items():
        offsets = groups[kind].get_offsets()
        assert len(offsets) == n
        expected = np.array([p.x for p in POINTS if p.kind == kind])
        np.testing.assert_allclose(offsets, expected)
    legend = ax.get_legend()
    assert legend is not None
    assert {t.get_text() for t in legend.get_texts()} == {"minimum", "saddle", "maximum"}
    with pytest.raises(ValueError, match="unknown critical point kind"):
        P.plot_critical_points([Point("valley", np.zeros(2))], ax)


def test_plot_critical_points_pytree_x_and_dims():
    pts = [Point("saddle", {"a": np.array([1.0, 2.0]), "b": np.array([3.0])})]
    ax = P.plot_critical_points(pts, dims=(2, 0))
    np.testing.assert_allclose(scatter_by_label(ax)["saddle"].get_offsets(), [[3.0, 1.0]])


def make_slice_2d():
    xs, ys = np.linspace(-1, 2, 7), np.linspace(-1, 1, 4)
    gx, gy = np.meshgrid(xs, ys)
    return Slice2D(xs, ys, 1 + gx**2 + 3 * gy**2 + 0.5 * gx, {"m": gx})


def test_plot_slice_2d_contours_points_trajectory_and_log():
    s = make_slice_2d()
    fig, ax = plt.subplots()
    traj = np.array([[-1.0, -1.0], [0.0, -0.5], [0.5, 0.1]])
    out = P.plot_slice_2d(s, ax, critical_points=POINTS, trajectory=traj, log=True, cmap="magma")
    assert out is ax
    contour_sets = [c for c in ax.collections if c.__class__.__name__ == "QuadContourSet"]
    assert len(contour_sets) == 2  # filled + lines
    filled = [c for c in contour_sets if c.filled]
    assert len(filled) == 1
    assert isinstance(filled[0].norm, matplotlib.colors.LogNorm)
    assert filled[0].get_cmap().name == "magma"
    levels = filled[0].levels
    np.testing.assert_allclose(np.diff(np.log(levels)), np.diff(np.log(levels))[0], rtol=1e-6)
    assert len(fig.axes) == 2  # the colorbar
    lines = [ln for ln in ax.get_lines() if ln.get_label() == "trajectory"]
    assert len(lines) == 1
    np.testing.assert_allclose(lines[0].get_xydata(), traj)
    assert len(scatter_by_label(ax)["saddle"].get_offsets()) == 3
    assert ax.get_legend() is not None


def test_plot_slice_2d_orientation_and_errors():
    s = make_slice_2d()
    ax = P.plot_slice_2d(s, colorbar=False, lines=False)
    (_,) = [c for c in ax.collections if c.__class__.__name__ == "QuadContourSet"]
    # the contour spans xs horizontally and ys vertically (meshgrid convention)
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert (x0, x1) == (-1, 2) and (y0, y1) == (-1, 1)
    with pytest.raises(ValueError, match="positive"):
        P.plot_slice_2d(Slice2D(s.xs, s.ys, s.values - 2), log=True)
    with pytest.raises(ValueError, match=r"len\(ys\), len\(xs\)"):
        P.plot_slice_2d(Slice2D(s.xs, s.ys, s.values.T))
    ax = P.plot_slice_2d(s, metric="m", colorbar=True)
    assert ax.figure.axes[1].get_ylabel() == "m"


def test_plot_slice_1d_overlays_and_log():
    alphas = np.linspace(-1, 1, 11)
    s1 = Slice1D(alphas, 1 + alphas**2, {})
    s2 = Slice1D(alphas, 2 + alphas**4, {})
    _, ax = plt.subplots()
    out = P.plot_slice_1d([s1, s2], ax, labels=["random", "top eigvec"], log=True, linewidth=3)
    assert out is ax
    assert len(ax.get_lines()) == 2
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), s2.values)
    assert ax.get_lines()[0].get_linewidth() == 3
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["random", "top eigvec"]
    ax2 = P.plot_slice_1d(s1)
    assert ax2.get_yscale() == "linear" and len(ax2.get_lines()) == 1
    with pytest.raises(ValueError, match="positive"):
        P.plot_slice_1d(Slice1D(alphas, alphas, {}), log=True)
    with pytest.raises(ValueError, match="labels"):
        P.plot_slice_1d([s1, s2], labels=["one"])


def test_plot_function_2d_with_points_and_non_square_grid():
    f = lambda x: (x[0] - 1) ** 2 + 3 * x[1] ** 2 + 1.0
    _, ax = plt.subplots()
    out = P.plot_function_2d(f, (-2, 3), (-1, 1), ax, num=(30, 12), critical_points=POINTS[:2])
    assert out is ax
    (filled,) = [c for c in ax.collections if getattr(c, "filled", False)]
    assert filled.levels.min() <= 1.0 + 1e-6  # the minimum value reaches the plot
    assert ax.get_xlim() == (-2, 3) and ax.get_ylim() == (-1, 1)
    assert len(scatter_by_label(ax)["minimum"].get_offsets()) == 2
    with pytest.raises(ValueError, match="scalar"):
        P.plot_function_2d(lambda x: x, (0, 1), (0, 1), num=5)


def test_plot_surface_is_3d():
    s = make_slice_2d()
    ax = P.plot_surface(s, log=True)
    assert ax.name == "3d"
    assert len(ax.collections) == 1
    assert ax.get_zlabel() == "log10 loss"
    with pytest.raises(ValueError, match="3-D"):
        P.plot_surface(s, plt.subplots()[1])


@dataclasses.dataclass
class Density:
    grid: np.ndarray
    density: np.ndarray


def test_plot_spectral_density_log_rug_and_negative_shading():
    grid = np.linspace(-2, 10, 200)
    dens = np.exp(-((grid - 1) ** 2)) + 1e-3
    eigs = np.array([-1.5, -0.2, 0.5, 3.0, 9.0])
    _, ax = plt.subplots()
    out = P.plot_spectral_density(Density(grid, dens), ax, eigenvalues=eigs, color="green")
    assert out is ax
    assert ax.get_yscale() == "log"
    (line,) = ax.get_lines()
    assert matplotlib.colors.same_color(line.get_color(), "green")
    (rug,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    segs = rug.get_segments()
    assert len(segs) == len(eigs)
    np.testing.assert_allclose(sorted(s[0][0] for s in segs), eigs)
    shaded = [p for p in ax.patches if p.get_label() == "negative curvature"]
    assert len(shaded) == 1
    xs = shaded[0].get_path().transformed(shaded[0].get_patch_transform()).vertices[:, 0]
    assert xs.min() == pytest.approx(-2.0) and xs.max() == pytest.approx(0.0)
    # an Eigenpairs-like object with .values; a spectrum without negatives: no shading
    ev = type("E", (), {"values": np.array([0.5, 2.0])})()
    ax2 = P.plot_spectral_density(Density(np.linspace(0, 5, 50), np.ones(50)), eigenvalues=ev)
    assert not ax2.patches
    ax3 = P.plot_spectral_density(Density(grid, dens), log=False, shade_negative=False)
    assert ax3.get_yscale() == "linear" and not ax3.patches


@pytest.mark.parametrize("style", ["stem", "bar"])
def test_plot_eigenvalues_highlights_negative(style):
    eigs = jnp.array([5.0, 2.0, 0.5, -0.3, -4.0])
    ax = P.plot_eigenvalues(eigs, style=style)
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks  # no index 0.5
    neg = matplotlib.colors.to_rgba(P.NEGATIVE_COLOR)
    if style == "bar":
        bars = ax.patches
        assert len(bars) == 5
        is_neg = [bar.get_facecolor() == neg for bar in bars]
        assert is_neg == [False, False, False, True, True]
        np.testing.assert_allclose([b.get_height() for b in bars], eigs)
    else:
        stems = {c.get_label(): c for c in ax.containers}
        assert set(stems) == {"positive", "negative"}
        np.testing.assert_allclose(stems["negative"].markerline.get_ydata(), [-0.3, -4.0])
        np.testing.assert_allclose(stems["positive"].markerline.get_ydata(), [5.0, 2.0, 0.5])
        assert matplotlib.colors.same_color(stems["negative"].markerline.get_color(), neg)
        assert not matplotlib.colors.same_color(stems["positive"].markerline.get_color(), neg)
    with pytest.raises(ValueError, match="style"):
        P.plot_eigenvalues(eigs, style="pie")


def test_plot_index_vs_loss_positions():
    ax = P.plot_index_vs_loss(POINTS)
    groups = scatter_by_label(ax)
    np.testing.assert_allclose(groups["saddle"].get_offsets(), [[0.5, 1.0], [0.5, 1.2], [0.5, 1.1]])
    np.testing.assert_allclose(groups["maximum"].get_offsets(), [[1.0, 3.0]])
    assert ax.get_legend() is not None
    ax2 = P.plot_index_vs_loss(POINTS, num_params=10)
    np.testing.assert_allclose(scatter_by_label(ax2)["maximum"].get_offsets(), [[0.2, 3.0]])


def test_never_shows_or_saves(monkeypatch):
    called = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: called.append("show"))
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda *a, **k: called.append("save"))
    s = make_slice_2d()
    P.plot_slice_2d(s, critical_points=POINTS)
    P.plot_slice_1d(Slice1D(s.xs, s.values[0], {}))
    P.plot_surface(s)
    P.plot_eigenvalues(np.array([1.0, -1.0]))
    assert not called


def test_with_real_critical_points_over_a_toy_function():
    from hessian_tools.critical import classify
    from hessian_tools.problems import TOY_2D

    problem = TOY_2D["himmelblau"]
    points = [classify(problem.f, jnp.asarray(x)) for x, _ in problem.critical_points]
    expected = {}
    for _, kind in problem.critical_points:
        expected[kind] = expected.get(kind, 0) + 1
    ax = P.plot_function_2d(problem.f, *problem.bounds, num=40, critical_points=points)
    groups = scatter_by_label(ax)
    assert {k: len(c.get_offsets()) for k, c in groups.items()} == expected
    labels = {t.get_text() for t in ax.get_legend().get_texts()}
    assert labels == {P.KIND_STYLES[k]["label"] for k in expected}
    ax2 = P.plot_index_vs_loss(points)
    np.testing.assert_allclose(
        scatter_by_label(ax2)["maximum"].get_offsets()[:, 0], [1.0]
    )  # index 2 of n = 2


def test_import_does_not_load_matplotlib():
    import subprocess
    import sys

    code = (
        "import sys, hessian_tools as ht\n"
        "assert 'matplotlib' not in sys.modules, 'imported eagerly'\n"
        "ht.plotting.plot_eigenvalues\n"
        "assert 'matplotlib' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
