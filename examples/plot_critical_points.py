"""
Finding and classifying critical points
=======================================

Every critical point of two classic test functions, found with
:func:`hessian_tools.find_critical_points` from a grid of starts and
classified by the inertia of the Hessian: Himmelblau's function (four
minima, four saddles, one maximum) and the six-hump camel (six minima, seven
saddles, two maxima).

Gradient descent only finds minima: it is attracted by them and repelled
by everything else. The finder here is Newton-MR (Roosta et al. 2022):
Newton steps on :math:`\\nabla f = 0` solved in the least-squares sense by
MINRES, globalised by a line search on :math:`\\|\\nabla f\\|^2`. It
treats every zero of the gradient alike, so it finds saddles and maxima as
readily as minima.

At a saddle we then draw the two ways out: the direction of most negative
curvature (:func:`hessian_tools.escape_direction`) and the saddle-free
Newton step of Dauphin et al. (2014)
(:func:`hessian_tools.saddle_free_newton_step`).
"""

import jax

# Float64 for this script: critical points to ~12 digits. The library never
# flips this switch itself; it follows the dtype of its inputs.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import hessian_tools as ht

rng = np.random.default_rng(0)


def grid_of_starts(bounds, num, jitter=0.02):
    """A num x num grid over the box, slightly jittered (off symmetry lines)."""
    (x0, x1), (y0, y1) = bounds
    gx, gy = np.meshgrid(np.linspace(x0, x1, num), np.linspace(y0, y1, num))
    starts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    starts += jitter * rng.standard_normal(starts.shape) * [x1 - x0, y1 - y0]
    return jnp.asarray(starts, jnp.float64)


def check_against_known(name, points, tol=1e-8):
    """Every known critical point in the box found once, with its kind."""
    known = ht.problems.TOY_2D[name].critical_points
    assert len(points) == len(known), (name, len(points), len(known))
    for x_known, kind in known:
        dist = [float(np.linalg.norm(np.asarray(cp.x) - x_known)) for cp in points]
        nearest = points[int(np.argmin(dist))]
        assert min(dist) < tol and nearest.kind == kind, (name, x_known, kind, nearest)
        assert nearest.index == {"minimum": 0, "saddle": 1, "maximum": 2}[kind]


def print_table(name, points):
    print(f"{name}: {len(points)} critical points")
    print(f"{'kind':>10} {'index':>5} {'x':>10} {'y':>10} {'value':>12} {'|grad|':>9}  eigenvalues")
    for cp in points:
        x, y = np.asarray(cp.x)
        eigs = ", ".join(f"{e:8.3f}" for e in np.asarray(cp.eigenvalues))
        print(
            f"{cp.kind:>10} {cp.index:>5} {x:10.6f} {y:10.6f} {float(cp.value):12.6f} "
            f"{float(cp.grad_norm):9.1e}  [{eigs}]"
        )
    print()


# %%
# Himmelblau's function
# ---------------------
# 400 starts on a jittered 20 x 20 grid over the box. All starts run at
# once (``vmap`` in one jitted loop); the end points are classified,
# deduplicated and sorted by loss.

himmelblau = ht.problems.TOY_2D["himmelblau"]
found_h = ht.find_critical_points(ht.problems.himmelblau, grid_of_starts(himmelblau.bounds, 20))
print_table("Himmelblau", found_h)

# %%
# The finder's list is checked against the known critical points of
# :data:`hessian_tools.problems.TOY_2D` (to 12 digits): all nine found, each
# once, each of the right kind and index, to within 1e-8.

check_against_known("himmelblau", found_h)

# %%
# Each kind gets its own marker (:data:`hessian_tools.plotting.KIND_STYLES`).
# The contour is of :math:`\log(1 + f)`, since the minima sit at 0.

fig, ax = plt.subplots(figsize=(6, 5))
ht.plotting.plot_function_2d(
    lambda x: ht.problems.himmelblau(x) + 1.0,
    *himmelblau.bounds,
    ax=ax,
    log=True,
    critical_points=found_h,
)
ax.set_title(f"Himmelblau: {len(found_h)} critical points")
ax.legend(loc="lower left", fontsize="small")

# %%
# The six-hump camel
# ------------------
# Fifteen critical points in the box, symmetric under
# :math:`(x, y) \to (-x, -y)`.

camel = ht.problems.TOY_2D["six_hump_camel"]
found_c = ht.find_critical_points(ht.problems.six_hump_camel, grid_of_starts(camel.bounds, 24))
found_c = [cp for cp in found_c if np.all(np.abs(np.asarray(cp.x)) <= [2.0, 1.0])]
print_table("six-hump camel", found_c)

counts = {kind: sum(cp.kind == kind for cp in found_c) for kind in ("minimum", "saddle", "maximum")}
print("six-hump camel by kind:", counts)
assert counts == {"minimum": 6, "saddle": 7, "maximum": 2}
check_against_known("six_hump_camel", found_c)

fig, ax = plt.subplots(figsize=(7, 4))
ht.plotting.plot_function_2d(
    ht.problems.six_hump_camel,
    *camel.bounds,
    ax=ax,
    levels=np.linspace(-1.2, 6.0, 37),
    critical_points=found_c,
)
ax.set_title(f"Six-hump camel: {len(found_c)} critical points")
ax.legend(loc="lower left", fontsize="small", ncols=3)

# %%
# Leaving a saddle
# ----------------
# At the saddle of Himmelblau's function nearest the origin the gradient is
# zero, so gradient descent started there does not move. Two directions
# lead away:
#
# * the escape direction: the eigenvector of the most negative Hessian
#   eigenvalue (both signs are descent directions to second order; the
#   sign is chosen so that the first-order change is not positive);
# * the saddle-free Newton step :math:`-|H|^{-1} \nabla f`, with the
#   Hessian's eigenvalues replaced by their absolute values. Newton's
#   method, :math:`-H^{-1} \nabla f`, is *attracted* to the saddle; the
#   saddle-free step is repelled from it along negative curvature.
#
# Exactly at the saddle the gradient vanishes and so does the saddle-free
# step, so we evaluate both steps at eight points on a circle around it. The
# negative-curvature eigenvector (in both of its signs) is drawn at the
# saddle itself.

saddle = min(
    (cp for cp in found_h if cp.kind == "saddle"),
    key=lambda cp: float(jnp.linalg.norm(cp.x)),
)
esc = ht.escape_direction(ht.problems.himmelblau, saddle.x)
print(
    f"saddle at {np.asarray(saddle.x).round(4)}: curvature {float(esc.curvature):.3f}, "
    f"direction {np.asarray(esc.direction).round(4)}, "
    f"predicted change for a step of 0.5: {float(esc.predicted_change(0.5)):.3f}"
)

angles = np.linspace(0, 2 * np.pi, 8, endpoint=False) + np.pi / 8
near = np.asarray(saddle.x) + 0.25 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
sfn = np.stack(
    [np.asarray(ht.saddle_free_newton_step(ht.problems.himmelblau, jnp.asarray(p))) for p in near]
)
newton = np.stack(
    [
        -np.linalg.solve(
            np.asarray(ht.hessian(ht.problems.himmelblau, jnp.asarray(p))),
            np.asarray(jax.grad(ht.problems.himmelblau)(jnp.asarray(p))),
        )
        for p in near
    ]
)

# %%
# The claims of the figure below, checked: along the escape direction
# :math:`e` the saddle-free step points away from the saddle at all eight
# points and Newton's step towards it, and every saddle-free step lowers
# the loss (a full Newton step raises it at some of them).

rel = near - np.asarray(saddle.x)
e = np.asarray(esc.direction)
assert float(esc.curvature) < 0 and abs(float(esc.slope)) < 1e-8
assert np.all((rel @ e) * (sfn @ e) > 0), "saddle-free Newton moves away along e"
assert np.all((rel @ e) * (newton @ e) < 0), "Newton moves towards the saddle along e"
f_h = jax.jit(ht.problems.himmelblau)
change_sfn = np.array([float(f_h(p + s) - f_h(p)) for p, s in zip(near, sfn, strict=True)])
change_newton = np.array([float(f_h(p + s) - f_h(p)) for p, s in zip(near, newton, strict=True)])
print("loss change, saddle-free Newton:", change_sfn.round(2))
print("loss change, Newton:            ", change_newton.round(2))
assert np.all(change_sfn < 0) and np.any(change_newton > 0)

fig, ax = plt.subplots(figsize=(6, 6))
sx, sy = np.asarray(saddle.x)
ht.plotting.plot_function_2d(
    lambda x: ht.problems.himmelblau(x) + 1.0,
    (sx - 0.7, sx + 0.7),
    (sy - 0.6, sy + 0.6),
    ax=ax,
    levels=25,
    critical_points=[saddle],
)
d = 0.55 * np.asarray(esc.direction)
for sign in (1, -1):
    ax.annotate(
        "",
        xy=(sx + sign * d[0], sy + sign * d[1]),
        xytext=(sx, sy),
        arrowprops=dict(arrowstyle="-|>", color="black", lw=2),
    )
arrows = dict(angles="xy", scale_units="xy", scale=1, width=0.007)
ax.quiver(*near.T, *newton.T, color="white", alpha=0.8, **arrows)
ax.quiver(*near.T, *sfn.T, color="tab:red", **arrows)
ax.plot(*near.T, "k.", ms=5)
ax.plot([], [], color="black", lw=2, label="escape direction (negative curvature)")
ax.plot([], [], color="white", lw=2, label="Newton step: towards the saddle")
ax.plot([], [], color="tab:red", lw=2, label="saddle-free Newton step: away")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize="small", facecolor="0.8")
ax.set_title("Leaving a saddle of Himmelblau's function")
fig.tight_layout()
