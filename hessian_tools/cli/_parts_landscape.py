"""The landscape parts of the analysis: the 1-D slices (top eigenvector and
a filter-normalised random direction, Li et al. 2018) and the 2-D slice
over the plane of the top and bottom eigenvectors, each one ``Part``
record. They cost loss evaluations, no HVPs."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import jax
import numpy as np

from hessian_tools import landscape
from hessian_tools.cli._part import Computed, Part, PartResult, ProblemError, part_key

__all__ = ["SLICE_1D", "SLICE_2D", "eigenvector_scale", "random_direction"]


def random_direction(an: Any) -> tuple[np.ndarray, str]:
    """The filter-normalised random direction of the slices, flat, and the
    normalisation used (no HVPs).

    Biases are zeroed (Li et al.'s default) unless every variable is a
    vector (a toy problem), which is then scaled as one filter; where params
    are zero, so that no scale can be taken, a unit direction. The filter
    axes are, in this order: ``--filter-axis``, ``Problem.filter_axis``,
    those read from the model (``landscape.filter_axes``: Haiku- and
    PyTorch-style dicts need no option), the leaves' names.

    Raises:
        ProblemError: the weights' filter axis cannot be told (the message
            names the option that gives it).
    """
    p, s = an.problem, an.settings
    axis = s.filter_axis if s.filter_axis is not None else p.filter_axis
    if axis is None:
        axis = _model_axes(p)
    key = part_key(s.seed, "random_direction")
    weights = any(np.ndim(leaf) >= 2 for leaf in jax.tree.leaves(an.op.variables))
    try:
        d = landscape.random_direction(
            key, p.params, filter_axis=axis, leaves_1d="zero" if weights else "keep"
        )
        label = "filter" if weights else "layer (every variable is a vector)"
    except ValueError as err:
        if "identically zero" not in str(err):
            raise ProblemError(
                f"the random direction of the slices: {err} On the command line: "
                "--filter-axis -1 or 0; in a factory: Problem(filter_axis=...)."
            ) from err
        flat = np.asarray(
            an.op.ravel(landscape.random_direction(key, p.params, None, leaves_1d="keep"))
        )
        return flat / np.linalg.norm(flat), "unit (params are zero)"
    return np.asarray(an.op.ravel(d)), label


def _model_axes(p: Any) -> Any:
    """The filter axes read from the model, or None (the name rule) where
    it cannot decide a leaf (an embedding table, say)."""
    args = p.args if p.batches is None else (*p.args, *p.batches[0])
    try:
        return landscape.filter_axes(p.loss, p.params, *args)
    except ValueError:
        return None


def _unit_eigenvector(done: dict, which: str) -> np.ndarray:
    v = np.asarray(done["eigenvalues"].arrays[f"{which}_vector"])
    return v / np.linalg.norm(v)


def _axis(an: Any) -> np.ndarray:
    s = an.settings
    return np.linspace(-s.span, s.span, s.grid)


def eigenvector_scale(
    rise_at: Callable[[float], float], rise: float, top: float, reach: float, tries: int = 12
) -> float:
    """The norm of the top eigenvector's slice direction: where the loss
    along it rises by about ``rise`` (the random direction's loss change
    over the slice, within a factor 1.25), at most ``reach`` (the random
    direction's norm times the span).

    Scaled to the random direction's norm instead, the eigenvector's loss
    of a sharp model rises by 1e4-1e5 where the random one rises by 0.1:
    on a shared axis the random curve is then a flat line. The first guess
    is the quadratic model's, ``top * t**2 / 2 = rise``; then the measured
    rise (``rise_at(t)``, two loss evaluations) is bracketed and bisected on
    a log scale, since far from the point a cross-entropy grows linearly,
    not quadratically.
    """
    if not (rise > 0 and np.isfinite(rise)):
        return reach
    t = reach if not (top > 0 and np.isfinite(top)) else min(reach, np.sqrt(2.0 * rise / top))
    low, high = 0.0, reach
    for _ in range(tries):
        got = rise_at(t)
        if not np.isfinite(got) or got > 1.25 * rise:
            high = t
        elif got < rise / 1.25 and t < reach:
            low = t
        else:
            return float(t)
        # the quadratic model's step, kept inside the bracket
        step = t * np.sqrt(rise / got) if np.isfinite(got) and got > 0 else 2.0 * t
        t = step if low < step < high else (np.sqrt(low * high) if low > 0 else high / 4.0)
    return float(t)


class _Along:
    """The loss along directions from the point, counting its evaluations."""

    def __init__(self, an: Any):
        self.an, self.count = an, 0

    def __call__(self, d: np.ndarray, at: np.ndarray, bar: bool = False) -> np.ndarray:
        p = self.an.problem
        self.count += np.size(at)
        sl = landscape.slice_1d(p.loss, p.params, d, at, *p.args, batches=p.batches, progress=bar)
        return np.asarray(sl.values)

    def matched_norm(self, unit: np.ndarray, curvature: float, rise: float, at_point: float):
        """The norm of ``unit``'s slice direction whose loss rises by about
        ``rise`` over the slice (``eigenvector_scale``), at most the random
        direction's."""
        span, reach = self.an.settings.span, self.an.settings.span * self.scale
        ends = lambda t: float(np.max(self(unit, np.asarray([-t, t])))) - at_point
        return eigenvector_scale(ends, rise, curvature, reach) / span

    def random(self) -> tuple[np.ndarray, str]:
        d, label = random_direction(self.an)
        self.scale = float(np.linalg.norm(d))
        return d, label


def _slice_1d(an: Any, key: Any, done: dict, progress: bool, checkpoint: Any) -> Computed:
    along, alphas = _Along(an), _axis(an)
    random, label = along.random()
    arrays = {"alphas": alphas, "random": along(random, alphas, bar=progress)}
    at_point = float(done["point"].results["loss"])
    rise = float(np.nanmax(arrays["random"]) - at_point)
    top = float(done["eigenvalues"].results["largest"]["values"][0])
    unit = _unit_eigenvector(done, "largest")
    top_norm = along.matched_norm(unit, top, rise, at_point)
    arrays["top_eigenvector"] = along(top_norm * unit, alphas, bar=progress)
    results = {
        "directions": ["top_eigenvector", "random"],
        "direction_norm": along.scale,
        "direction_norms": {"top_eigenvector": top_norm, "random": along.scale},
        "normalization": label,
        "num_loss_evaluations": along.count,  # the search for top_norm too
    }
    return Computed(results, arrays, 0)


def _draw_slice_1d(result: PartResult) -> Any:
    """One panel per direction, each on its own loss axis, labelled with its
    direction's norm: the random direction's curve stays readable beside the
    (much sharper) top eigenvector's."""
    import matplotlib.pyplot as plt

    from hessian_tools import plotting

    r, a = result.results, result.arrays
    norms = r.get("direction_norms", {d: r["direction_norm"] for d in r["directions"]})
    names = {
        "top_eigenvector": "top eigenvector",
        "random": f"random ({r['normalization'].split(' ')[0]}-normalised)",
    }
    fig, axes = plt.subplots(1, len(r["directions"]), figsize=(9.6, 3.6))
    for ax, d, color in zip(axes, r["directions"], ("tab:blue", "tab:orange"), strict=False):
        line = SimpleNamespace(alphas=a["alphas"], values=a[d])
        plotting.plot_slice_1d(line, ax, color=color)
        ax.axvline(0.0, color="black", linewidth=0.6, linestyle=":")
        ax.set_title(f"{names[d]}, |d| = {norms[d]:.3g}", fontsize="medium")
        ax.set_xlabel("alpha (params + alpha d)")
    fig.tight_layout()
    return fig


def _slice_1d_section(s: dict) -> list:
    r = s["slice_1d"]
    norms = r.get("direction_norms", {d: r["direction_norm"] for d in r["directions"]})
    return [
        f"The loss along the top eigenvector (direction norm "
        f"{norms['top_eigenvector']:.3g}) and along a random direction "
        f"({r['normalization']} normalisation, Li et al. 2018; norm {norms['random']:.3g}); "
        "alpha 0 is the point. The eigenvector's norm is chosen so that the loss rises "
        "along it about as much as along the random direction over the slice (at most "
        "the random direction's norm): each curve on its own axis."
    ]


SLICE_1D = Part(
    "slice_1d",
    "1-D slices (top eigenvector, random direction)",
    _slice_1d,
    settings=("grid", "span", "seed", "filter_axis"),
    requires=("eigenvalues",),
    figure="slice_1d.png",
    draw=_draw_slice_1d,
    summarize=lambda result: {
        "slice_1d": {
            **result.results,
            **{k: [float(v) for v in result.arrays[k]] for k in ("alphas", "random")},
            "top_eigenvector": [float(v) for v in result.arrays["top_eigenvector"]],
        }
    },
    heading="Loss landscape",
    section=_slice_1d_section,
)


def _slice_2d(an: Any, key: Any, done: dict, progress: bool, checkpoint: Any) -> Computed:
    p, span = an.problem, an.settings.span
    along = _Along(an)
    random, _ = along.random()
    at_point = float(done["point"].results["loss"])
    rise = float(np.max(along(random, np.asarray([-span, span])))) - at_point
    eig = done["eigenvalues"].results
    norms, axes = {}, []
    for name, which in (("top_eigenvector", "largest"), ("bottom_eigenvector", "smallest")):
        unit = _unit_eigenvector(done, which)
        curvature = abs(float(eig[which]["values"][0]))
        norms[name] = along.matched_norm(unit, curvature, rise, at_point)
        axes.append(norms[name] * unit)
    xs = ys = _axis(an)
    sl = landscape.slice_2d(
        p.loss,
        p.params,
        tuple(axes),
        xs,
        ys,
        *p.args,
        batches=p.batches,
        checkpoint=checkpoint,
        progress=progress,
    )
    d1, d2 = axes
    results = {
        "directions": ["top_eigenvector", "bottom_eigenvector"],
        "direction_norm": along.scale,
        "direction_norms": norms,
        "overlap": float(abs(np.dot(d1, d2)) / (np.linalg.norm(d1) * np.linalg.norm(d2))),
        "num_loss_evaluations": int(xs.size * ys.size) + along.count,
    }
    return Computed(results, {"xs": xs, "ys": ys, "values": np.asarray(sl.values)}, 0)


def _draw_slice_2d(result: PartResult) -> Any:
    import matplotlib.pyplot as plt

    from hessian_tools import plotting

    r, a = result.results, result.arrays
    norms = r.get("direction_norms", {d: r["direction_norm"] for d in r["directions"]})
    values = np.asarray(a["values"])
    # a log colour scale where the loss spans decades (as a sharp model's does)
    log = bool(np.nanmin(values) > 0 and np.nanmax(values) > 100 * np.nanmin(values))
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    plotting.plot_slice_2d(SimpleNamespace(xs=a["xs"], ys=a["ys"], values=values), ax, log=log)
    ax.plot([0], [0], "k+", markersize=12)
    ax.set_xlabel(f"top eigenvector, |d| = {norms['top_eigenvector']:.3g}")
    ax.set_ylabel(f"bottom eigenvector, |d| = {norms['bottom_eigenvector']:.3g}")
    fig.tight_layout()
    return fig


def _summarize_slice_2d(result: PartResult) -> dict:
    values = result.arrays["values"]
    return {
        "slice_2d": {
            **result.results,
            "shape": list(values.shape),
            "min": float(np.nanmin(values)),
            "max": float(np.nanmax(values)),
        }
    }


SLICE_2D = Part(
    "slice_2d",
    "2-D slice (top and bottom eigenvectors)",
    _slice_2d,
    settings=("grid", "span", "seed", "filter_axis"),
    requires=("eigenvalues",),
    checkpointed=True,
    figure="slice_2d.png",
    draw=_draw_slice_2d,
    summarize=_summarize_slice_2d,
    heading="Loss landscape",
    section=lambda s: [
        "The loss over the plane of the top and bottom eigenvectors, centred on the point "
        "(+), each direction's norm chosen as the 1-D slice's eigenvector's is (the loss "
        "rises along it about as much as along the random direction)."
    ],
)
