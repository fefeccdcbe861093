"""
Escaping a saddle
=================

Near a saddle the gradient is small, so gradient descent slows to a crawl:
it leaves along the direction of negative curvature only at the rate
:math:`1 + \\eta|\\lambda_{\\min}|` per step, and spends a long plateau at
the saddle's loss first. Dauphin et al. (2014, "Identifying and attacking
the saddle point problem in high-dimensional non-convex optimization")
argue that these plateaus, not poor local minima, are what makes training
slow in high dimension. Newton's method is no cure: it jumps *to* the
saddle, since a critical point is all it looks for.

We start four optimisers at the same point near a saddle of a linear
autoencoder (24 parameters), where the loss and the kind of every critical
point are known in closed form (Baldi & Hornik 1989):

* gradient descent (:func:`optax.sgd`);
* gradient descent with a negative-curvature step
  (:func:`hessian_tools.escape_direction`) whenever the gradient is small;
* saddle-free Newton (:func:`hessian_tools.saddle_free_newton_step`):
  :math:`-|H|^{-1}\\nabla f`, Newton's step with the Hessian's eigenvalues
  replaced by their absolute values (Dauphin et al. 2014);
* Newton's method, :math:`-H^{-1}\\nabla f`, for contrast.
"""

import jax

# Float64: the saddle and the minimum to ~12 digits. The library never flips
# this switch itself; it follows the dtype of its inputs.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

import hessian_tools as ht

loss = ht.problems.linear_autoencoder
eigenvalues = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]  # the spectrum of the data covariance
p = 2  # width of the code layer

# %%
# The saddle and the start
# ------------------------
# The critical point that encodes the 1st and the 3rd principal directions
# (:math:`I = \{0, 2\}`) has loss :math:`\tfrac12(5 + 3 + 2 + 1) = 5.5`; the
# minimum encodes the top two and has loss 5. The saddle's Hessian has
# exactly one negative eigenvalue: swapping the 3rd principal direction for
# the 2nd lowers the loss. We start at a distance :math:`10^{-3}` from the
# saddle, in a random direction.

saddle_params, sigma_sqrt, saddle_loss = ht.problems.linear_autoencoder_critical_point(
    eigenvalues, (0, 2), p, dtype=jnp.float64
)
min_loss = ht.problems.linear_autoencoder_critical_point(eigenvalues, (0, 1), p)[2]
saddle = ht.classify(loss, saddle_params, sigma_sqrt)
lam = np.asarray(saddle.eigenvalues)
print(
    f"saddle: {saddle.kind}, index {saddle.index}, loss {float(saddle.value)} "
    f"(closed form {saddle_loss}); minimum loss {min_loss}"
)
print(f"Hessian eigenvalues: min {lam.min():.3f}, max {lam.max():.3f}")
assert saddle.kind == "saddle" and saddle.index == 1
assert abs(float(saddle.value) - saddle_loss) < 1e-12

flat_saddle, unravel = ravel_pytree(saddle_params)
u = jax.random.normal(jax.random.PRNGKey(0), flat_saddle.shape, jnp.float64)
start = unravel(flat_saddle + 1e-3 * u / jnp.linalg.norm(u))

# %%
# Four optimisers
# ---------------
# Gradient descent runs at :math:`\eta = 0.12 \approx 1.4/\lambda_{\max}`
# (stable below :math:`2/\lambda_{\max}`). The negative-curvature variant
# takes the same steps, except that when the gradient norm falls below
# :math:`10^{-2}` and the Hessian has an eigenvalue below :math:`-0.05`, it
# steps along that eigenvector instead (``escape_direction``), halving the
# step length from 1 until the loss decreases. Saddle-free Newton takes
# its step with the same backtracking (far from the saddle the quadratic
# model no longer holds, and a full step can overshoot), with the
# eigenvalues' magnitudes floored at ``damping=0.1`` (about
# :math:`\lambda_{\max}/100`; the default floor, :math:`\sqrt{\epsilon}
# \|H\|`, lets the near-zero curvature of the symmetry directions blow the
# step up near the minimum). Newton takes full steps. The Hessian here is
# 24 x 24, so the library forms it densely (24 HVPs per step); on a large
# model
# ``saddle_free_newton_step(..., method="lanczos")`` works in a Krylov
# subspace instead. Newton's step uses the pseudo-inverse, since every
# critical point of this loss is degenerate along the symmetry
# :math:`W_1 \to C W_1,\ W_2 \to W_2 C^{-1}`.

NUM_ITER = 400
value_and_grad = jax.jit(jax.value_and_grad(loss))
loss_jit = jax.jit(loss)


def backtrack(x, value, direction, step=1.0):
    """x + step * direction, the step halved from 1 until the loss decreases."""
    while True:
        trial = jax.tree.map(lambda a, d, s=step: a + s * d, x, direction)
        if float(loss_jit(trial, sigma_sqrt)) < value or step < 1e-6:
            return trial, step
        step /= 2


def gradient_descent(x, num_iter, lr=0.12, escape=False):
    optimiser = optax.sgd(lr)
    state = optimiser.init(x)
    path, escapes = [x], []
    for t in range(num_iter):
        value, grad = value_and_grad(x, sigma_sqrt)
        if escape and float(optax.tree.norm(grad)) < 1e-2:
            esc = ht.escape_direction(loss, x, sigma_sqrt)
            if float(esc.curvature) < -0.05:
                x, step = backtrack(x, float(value), esc.direction)
                escapes.append((t, float(esc.curvature), step))
                path.append(x)
                continue
        updates, state = optimiser.update(grad, state, x)
        x = optax.apply_updates(x, updates)
        path.append(x)
    return path, escapes


def saddle_free_newton(x, num_iter):
    path = [x]
    for _ in range(num_iter):
        step = ht.saddle_free_newton_step(loss, x, sigma_sqrt, damping=0.1)
        x, _ = backtrack(x, float(loss_jit(x, sigma_sqrt)), step)
        path.append(x)
    return path


def newton(x, num_iter):
    path = [x]
    for _ in range(num_iter):
        h = ht.hessian(loss, x, sigma_sqrt)
        g = ravel_pytree(value_and_grad(x, sigma_sqrt)[1])[0]
        x = unravel(ravel_pytree(x)[0] - jnp.linalg.pinv(h, rtol=1e-10, hermitian=True) @ g)
        path.append(x)
    return path


gd_path, _ = gradient_descent(start, NUM_ITER)
nc_path, escapes = gradient_descent(start, NUM_ITER, escape=True)
paths = {
    "gradient descent": gd_path,
    "GD + negative-curvature step": nc_path,
    "saddle-free Newton": saddle_free_newton(start, 40),
    "Newton": newton(start, 40),
}
curves = {
    name: np.array([float(loss_jit(x, sigma_sqrt)) for x in path]) for name, path in paths.items()
}
for t, curvature, step in escapes[:5]:
    print(f"negative-curvature step at iteration {t}: curvature {curvature:.3f}, length {step}")
for name, curve in curves.items():
    final = paths[name][-1]
    cp = ht.classify(loss, final, sigma_sqrt)
    print(
        f"{name:>29}: loss after {len(curve) - 1:3d} iterations {curve[-1]:.10f}, "
        f"ends at a {cp.kind}"
    )

# %%
# What the curves show, checked: gradient descent sits on the saddle's
# plateau (within 1% of its loss) for over 100 steps before it falls to
# the minimum; with the negative-curvature step it leaves the plateau
# within 10 steps; saddle-free Newton leaves it in under a fifth of
# gradient descent's iterations and reaches the minimum's loss to 8
# digits; Newton converges to the saddle and stays there.


def plateau_length(curve):
    """Iterations until the loss falls 1% below the saddle's."""
    below = np.flatnonzero(curve < 0.99 * saddle_loss)
    return int(below[0]) if below.size else len(curve)


plateaus = {name: plateau_length(curve) for name, curve in curves.items()}
print("iterations on the plateau:", plateaus)
assert plateaus["gradient descent"] > 100
assert plateaus["GD + negative-curvature step"] <= 10 and escapes[0][0] == 0
assert plateaus["saddle-free Newton"] < plateaus["gradient descent"] / 5
assert plateaus["Newton"] == len(curves["Newton"])
for name in ("gradient descent", "GD + negative-curvature step", "saddle-free Newton"):
    assert abs(curves[name][-1] - min_loss) < 1e-8, (name, curves[name][-1])
newton_end = ht.classify(loss, paths["Newton"][-1], sigma_sqrt)
assert newton_end.kind == "saddle" and abs(float(newton_end.value) - saddle_loss) < 1e-10

fig, ax = plt.subplots(figsize=(7, 4))
styles = {"Newton": dict(ls="--", color="0.3")}
for name, curve in curves.items():
    label = name + (" (stays at the saddle)" if name == "Newton" else "")
    ax.plot(curve - min_loss, label=label, **styles.get(name, {}))
ax.axhline(saddle_loss - min_loss, color="tab:orange", lw=0.8, ls=":", label="the saddle's loss")
ax.set_yscale("log")
ax.set_ylim(1e-13, 3)
ax.set_xlabel("iteration")
ax.set_ylabel("loss - minimum loss")
ax.set_title("From near a saddle: loss against iteration")
ax.legend(fontsize="small", loc="lower right")
fig.tight_layout()

# %%
# The paths on a 2-D slice
# ------------------------
# The plane through the saddle spanned by the escape direction :math:`e`
# at the saddle and by the way from the saddle to where saddle-free Newton
# ends (made orthogonal to :math:`e`), computed with
# :func:`hessian_tools.landscape.slice_2d`. The paths are projected on it;
# the paths leave the plane a little (the minima form a continuum, so
# each optimiser ends at a different point of it), and we print how far.

e = ravel_pytree(ht.escape_direction(loss, saddle_params, sigma_sqrt).direction)[0]
w = ravel_pytree(paths["saddle-free Newton"][-1])[0] - flat_saddle
w = w - (w @ e) * e
w = w / jnp.linalg.norm(w)
coords = {}
for name, path in paths.items():
    rel = np.stack([np.asarray(ravel_pytree(x)[0] - flat_saddle) for x in path])
    coords[name] = np.stack([rel @ np.asarray(e), rel @ np.asarray(w)], axis=1)
    off = np.linalg.norm(rel - coords[name] @ np.stack([e, w]), axis=1)
    print(f"{name:>29}: distance from the plane at most {off.max():.3f}")

xs = np.linspace(-1.0, 2.0, 46)
ys = np.linspace(-0.5, 1.8, 36)
plane = ht.landscape.slice_2d(loss, saddle_params, (unravel(e), unravel(w)), xs, ys, sigma_sqrt)

fig, ax = plt.subplots(figsize=(7, 5.5))
ht.plotting.plot_slice_2d(plane, ax, levels=np.linspace(4.9, 8.0, 32), extend="max")
colors = {
    "gradient descent": "white",
    "GD + negative-curvature step": "tab:cyan",
    "saddle-free Newton": "tab:red",
    "Newton": "black",
}
for name, xy in coords.items():
    ht.plotting.plot_trajectory(xy, ax, color=colors[name], label=name)
ax.plot(0, 0, "X", color="tab:orange", ms=12, mec="black", label="saddle")
ax.set_xlabel("escape direction e (negative curvature)")
ax.set_ylabel("towards the minimum (orthogonal to e)")
ax.set_title("Four paths from near a saddle (projected)")
ax.legend(fontsize="small", loc="upper left", facecolor="0.85")
fig.tight_layout()

# %%
# At this scale the start and the saddle coincide (they are :math:`10^{-3}`
# apart). The negative-curvature step jumps out along :math:`e` at once;
# gradient descent creeps out along :math:`e` and then follows the valley
# down to the minimum, and the negative-curvature run, once out, follows
# the same valley. Newton stays at the saddle. Saddle-free Newton takes
# its own, shorter route.
#
# Near the saddle the rates can be read off the quadratic model: along an
# eigenvector of eigenvalue :math:`\lambda < 0`, gradient descent
# multiplies the distance by :math:`1 + \eta|\lambda|` per step, Newton
# by 0 (its step from distance :math:`\delta` is :math:`-\delta`), and
# saddle-free Newton by 2 (its step is :math:`+\delta`), whatever
# :math:`|\lambda|`. Checked on the coordinates along :math:`e`:

rate_gd = np.abs(coords["gradient descent"][51:151, 0] / coords["gradient descent"][50:150, 0])
rate_sfn = np.abs(coords["saddle-free Newton"][3:9, 0] / coords["saddle-free Newton"][2:8, 0])
predicted_gd = 1 + 0.12 * abs(float(saddle.eigenvalues[0]))
print(f"gradient descent, steps 50-150: {rate_gd.min():.4f}-{rate_gd.max():.4f} per step")
print(f"  predicted 1 + lr |lambda_min| = {predicted_gd:.4f}")
print(f"saddle-free Newton, steps 2-8: {rate_sfn.round(3)} per step (predicted 2)")
assert np.allclose(rate_gd, predicted_gd, rtol=2e-3)
assert np.allclose(rate_sfn, 2.0, rtol=0.02)

# %%
# What this does not show: the problem is small and the saddle has index
# 1, so one escape direction suffices. On a large network neither
# saddle-free Newton nor the escape direction forms the Hessian; both run
# on HVPs (Lanczos), and each step costs tens of HVPs rather than one
# gradient. Saddle-free Newton's advantage here is per iteration, not per
# unit of compute.
