"""
Loss landscape of a trained network
===================================

Views of a loss with :mod:`hessian_tools.landscape` and
:mod:`hessian_tools.plotting`:

1. a 2-D toy function (Himmelblau) contoured with its critical points, one
   marker per kind;
2. 1-D slices of a trained ReLU network's loss on digits along the top
   Hessian eigenvector, a filter-normalised random direction (Li et al.
   2018, "Visualizing the loss landscape of neural nets") and the gradient,
   each checked against what the Hessian and the gradient predict;
3. a 2-D contour over a filter-normalised random plane;
4. the optimisation path drawn over a 2-D slice in the PCA plane of its
   trajectory;
5. Dinh et al.'s (2017, "Sharp minima can generalize for deep nets")
   rescaling: the same function with a different :math:`\\lambda_{max}`,
   and a filter-normalised slice that does not change.

Every plotting function takes ``ax=`` and returns it; nothing is shown or
saved by the library.
"""

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

import hessian_tools as ht
from hessian_tools import landscape, plotting
from hessian_tools.critical import classify
from hessian_tools.problems import TOY_2D

# %%
# A toy function and its critical points
# --------------------------------------
# Himmelblau's function has four minima, four saddles and one maximum. We
# classify the known critical points from the Hessian's inertia and draw
# them over a log-scale contour (shifted by 1 so the minima, at value 0,
# stay on a log scale).

problem = TOY_2D["himmelblau"]
points = [classify(problem.f, jnp.asarray(x, jnp.float32)) for x, _ in problem.critical_points]
print({kind: sum(p.kind == kind for p in points) for kind in plotting.KIND_STYLES})

fig, ax = plt.subplots(figsize=(6, 5))
plotting.plot_function_2d(
    lambda x: problem.f(x) + 1.0, *problem.bounds, ax=ax, log=True, critical_points=points
)
ax.set_title("Himmelblau: critical points by kind")

# %%
# A small network and its training path
# -------------------------------------
# A 64-32-32-10 ReLU MLP (n = 3,466) fitted to 500 digits by full-batch
# gradient descent with momentum (:func:`optax.sgd`), the parameters after
# every step kept for the PCA plane below. The parameters are a dict of
# Flax-style ``kernel`` ``(in, out)`` matrices and biases: the filter
# (output-unit) axis of a ``kernel`` is the last one, and the landscape
# functions read it off the name.

digits = load_digits()
inputs = jnp.asarray(digits.data[:500] / 16.0, jnp.float32)
labels = jnp.asarray(digits.target[:500])
SIZES = (64, 32, 32, 10)


def init(key):
    keys = jax.random.split(key, len(SIZES) - 1)
    return {
        f"layer{i}": {
            "kernel": jax.random.normal(k, (m, n)) * np.sqrt(2 / m),
            "bias": jnp.zeros(n),
        }
        for i, (k, m, n) in enumerate(zip(keys, SIZES[:-1], SIZES[1:], strict=True))
    }


def forward(params, x):
    h = x
    for i in range(len(SIZES) - 1):
        layer = params[f"layer{i}"]
        h = h @ layer["kernel"] + layer["bias"]
        if i < len(SIZES) - 2:
            h = jax.nn.relu(h)
    return h


def loss(params, x, y):
    """Softmax cross-entropy, mean over the samples."""
    logp = jax.nn.log_softmax(forward(params, x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


optimiser = optax.sgd(0.05, momentum=0.9)
NUM_STEPS = 300


@jax.jit
def train(params, x, y):
    def step(carry, _):
        params, state = carry
        grads = jax.grad(loss)(params, x, y)
        updates, state = optimiser.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    _, path = jax.lax.scan(step, (params, optimiser.init(params)), None, length=NUM_STEPS)
    return path


params0 = init(jax.random.PRNGKey(0))
path = train(params0, inputs, labels)  # every leaf has a leading (step) axis
params = jax.tree.map(lambda a: a[-1], path)
trained_loss = float(loss(params, inputs, labels))
accuracy = float(jnp.mean(jnp.argmax(forward(params, inputs), axis=1) == labels))
print(f"after {NUM_STEPS} steps: loss {trained_loss:.4f}, training accuracy {accuracy:.3f}")
assert trained_loss < 0.05 and accuracy > 0.99

# %%
# 1-D slices: sharpest, random and gradient directions
# ----------------------------------------------------
# The top eigenvector :math:`v` (unit norm) is the sharpest cross-section:
# to second order the loss along it is :math:`f + \alpha g^\top v +
# \tfrac12 \lambda_{max} \alpha^2`. Along the unit gradient the slope at
# 0 is :math:`\|g\|`. The filter-normalised direction has filters as long
# as the network's own, so its :math:`\alpha` is relative: at
# :math:`\alpha = 1` every filter has moved by its own length.
#
# The slope along the gradient, fitted on the slice, matches
# :math:`\|g\|` to 2%. The curvature along :math:`v` is more than ten
# times that along a random unit direction, but it does not match
# :math:`\lambda_{max}` = 2.78 exactly, and cannot: a ReLU network's
# loss is only piecewise smooth. The Hessian is that of the smooth piece
# the point lies on, while a slice crosses kinks where ReLUs switch, and
# each crossing adds curvature: second differences along :math:`v` in
# float64 give 2.99, 3.68 and 6.4 for steps of 1e-2, 1e-3 and 1e-4 (the
# parabola fitted here gives about 3.4). The dotted quadratic model below
# holds only near 0: by :math:`\alpha = \pm 1` the loss along :math:`v`
# is several times what it predicts, while along the gradient the loss
# barely moves over the same distance.

op = ht.HessianOperator(loss, params, inputs, labels)
top = ht.eigenpairs(op, 2, key=jax.random.PRNGKey(1))
lam_max = float(top.values[0])
v = jax.tree.map(lambda a: a[0], top.tree_vectors)
grad_dir = landscape.gradient_direction(loss, params, inputs, labels)
grad_norm = float(optax.global_norm(jax.grad(loss)(params, inputs, labels)))
random_dir = landscape.random_direction(jax.random.PRNGKey(2), params)
print(
    f"lambda_max {lam_max:.4f} +- {float(top.error_bounds[0]):.1e} ({int(top.num_matvecs)} HVPs); "
    f"|grad| {grad_norm:.2e}"
)

# parabolas fitted by least squares to 21 points in [-0.05, 0.05]
near = np.linspace(-0.05, 0.05, 21)
unit_random = landscape.random_direction(jax.random.PRNGKey(5), params, normalization="model")
unit_random = jax.tree.map(lambda a: a / optax.global_norm(unit_random), unit_random)
fits = {
    name: np.polyfit(near, landscape.slice_1d(loss, params, d, near, inputs, labels).values, 2)
    for name, d in (("top", v), ("gradient", grad_dir), ("random unit", unit_random))
}
curv = {name: 2 * fit[0] for name, fit in fits.items()}
print(
    "fitted curvature:",
    {k: round(float(c), 4) for k, c in curv.items()},
    f"slope along g {fits['gradient'][1]:.2e}",
)
assert abs(fits["gradient"][1] / grad_norm - 1) < 0.05
assert curv["top"] > 10 * curv["random unit"] > 0
assert curv["top"] > 0.9 * lam_max

unit_alphas = np.linspace(-1.0, 1.0, 41)
rel_alphas = np.linspace(-0.5, 0.5, 41)
sl_top = landscape.slice_1d(loss, params, v, unit_alphas, inputs, labels)
sl_grad = landscape.slice_1d(loss, params, grad_dir, unit_alphas, inputs, labels)
sl_random = landscape.slice_1d(loss, params, random_dir, rel_alphas, inputs, labels)
# a minimum-like point: the loss rises along every one of the three lines
for sl in (sl_top, sl_random):
    assert sl.values[0] > trained_loss and sl.values[-1] > trained_loss

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
plotting.plot_slice_1d([sl_top, sl_grad], axes[0], labels=["top eigenvector", "gradient"], log=True)
axes[0].plot(
    unit_alphas,
    trained_loss + 0.5 * lam_max * unit_alphas**2,
    "k:",
    lw=1,
    label=r"$f + \frac{1}{2}\lambda_{max}\alpha^2$",
)
axes[0].set_ylim(top=2 * sl_top.values.max())
axes[0].legend()
axes[0].set_xlabel(r"$\alpha$ (unit directions)")
axes[0].set_title("unit-norm directions")
plotting.plot_slice_1d(sl_random, axes[1], log=True, color="tab:green")
axes[1].set_xlabel(r"$\alpha$ (relative to each filter's norm)")
axes[1].set_title("a filter-normalised random direction")
fig.tight_layout()

# %%
# A 2-D contour
# -------------
# Two filter-normalised random directions span a plane through the trained
# network (Li et al.'s contour plots); the trained point sits in a basin.

random_dir2 = landscape.random_direction(jax.random.PRNGKey(3), params)
coords = np.linspace(-0.5, 0.5, 21)
plane = landscape.slice_2d(loss, params, (random_dir, random_dir2), coords, coords, inputs, labels)
centre = plane.values[10, 10]
assert np.isclose(centre, trained_loss, rtol=1e-4)
assert centre < np.percentile(plane.values, 5)

fig, ax = plt.subplots(figsize=(6, 5))
plotting.plot_slice_2d(plane, ax, log=True, cmap="viridis")
ax.plot(0, 0, "w*", ms=12, mec="k")
ax.set_xlabel("filter-normalised direction 1")
ax.set_ylabel("filter-normalised direction 2")
ax.set_title("loss over a random plane through the trained network")

# %%
# The training path in its PCA plane
# ----------------------------------
# Random directions are nearly orthogonal to an optimisation path, so the
# path is drawn in the plane of its two principal components (Li et al.
# 2018, section 7). The explained variance says how much of the path the
# picture shows.

trajectory = jax.tree.map(lambda a0, p: jnp.concatenate([a0[None], p]), params0, path)
pca = landscape.pca_directions(trajectory, stacked=True)
ev = pca.explained_variance
print(f"PCA plane: {100 * ev.sum():.1f}% of the path's variance")
assert ev.sum() > 0.8
lo, hi = pca.coords.min(0), pca.coords.max(0)
pad = 0.3 * (hi - lo)
xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 31)
ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 23)
surface = landscape.slice_2d(loss, pca.origin, pca.directions, xs, ys, inputs, labels)

fig, ax = plt.subplots(figsize=(6, 5))
plotting.plot_slice_2d(surface, ax, log=True, trajectory=pca, cmap="viridis")
ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f}% of variance)")
ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}% of variance)")
ax.set_title("gradient-descent path over the PCA-plane slice")

# %%
# Sharpness is not a property of the function
# -------------------------------------------
# ReLU is positively homogeneous, :math:`\mathrm{relu}(c z) = c\,
# \mathrm{relu}(z)` for :math:`c > 0`, so multiplying the first layer's
# weights and biases by :math:`c` and dividing the second layer's weights by
# :math:`c` changes no output. Dinh et al. (2017) used this to make any
# minimum as sharp as wanted: :math:`\lambda_{max}` changes with
# :math:`c`, although every prediction, and so every generalisation
# measure of the function, stays the same. Li et al.'s filter normalisation
# undoes the rescaling: a random direction's filters are scaled to the
# filters of the point, so the slice at the rescaled network is the same
# curve (with the same random draw).


def rescale(params, c):
    out = jax.tree.map(lambda a: a, params)
    out["layer0"] = {"kernel": c * params["layer0"]["kernel"], "bias": c * params["layer0"]["bias"]}
    out["layer1"] = {"kernel": params["layer1"]["kernel"] / c, "bias": params["layer1"]["bias"]}
    return out


scales = (0.25, 0.5, 1.0, 2.0, 4.0)
sharpness, slices_fn, slices_unit = [], [], []
for c in scales:
    p_c = rescale(params, c)
    assert np.allclose(forward(p_c, inputs), forward(params, inputs), atol=1e-4)
    ep = ht.eigenpairs(ht.HessianOperator(loss, p_c, inputs, labels), 2, key=jax.random.PRNGKey(1))
    sharpness.append(float(ep.values[0]))
    d_c = landscape.random_direction(jax.random.PRNGKey(2), p_c)
    slices_fn.append(landscape.slice_1d(loss, p_c, d_c, rel_alphas, inputs, labels))
    slices_unit.append(landscape.slice_1d(loss, p_c, unit_random, unit_alphas * 4, inputs, labels))
print(
    "lambda_max under rescaling:",
    {c: round(lam, 3) for c, lam in zip(scales, sharpness, strict=True)},
)
assert max(sharpness) > 5 * min(sharpness)
for sl in slices_fn:  # the filter-normalised slice does not move
    assert np.allclose(sl.values, slices_fn[2].values, rtol=1e-3)
spread_unit = max(np.max(np.abs(sl.values - slices_unit[2].values)) for sl in slices_unit)
assert spread_unit > 0.1 * slices_unit[2].values.max()  # a plain unit direction does

fig, axes = plt.subplots(1, 3, figsize=(14, 4))
axes[0].plot(scales, sharpness, "o-")
axes[0].set_xscale("log", base=2)
axes[0].set_yscale("log")
axes[0].set_xlabel("rescaling c")
axes[0].set_ylabel(r"$\lambda_{max}$")
axes[0].set_title("same function, different sharpness")
colors = plt.cm.viridis(np.linspace(0, 0.9, len(scales)))
for c, sl_u, sl_f, color in zip(scales, slices_unit, slices_fn, colors, strict=True):
    axes[1].plot(sl_u.alphas, sl_u.values, color=color, label=f"c = {c}")
    axes[2].plot(
        sl_f.alphas,
        sl_f.values,
        color=color,
        lw=3 if c == 1 else 1.5,
        ls="-" if c == 1 else "--",
        label=f"c = {c}",
    )
axes[1].set_yscale("log")
axes[1].set_xlabel(r"$\alpha$ (unit random direction)")
axes[1].set_title("plain random direction: the slice changes")
axes[1].legend(fontsize="small")
axes[2].set_yscale("log")
axes[2].set_xlabel(r"$\alpha$ (filter-normalised)")
axes[2].set_title("filter-normalised: one curve")
axes[2].legend(fontsize="small")
fig.tight_layout()
