"""
Loss-landscape slices and critical points
=========================================

Three views of a loss with :mod:`hessian_tools.landscape` and
:mod:`hessian_tools.plotting`:

1. a 2-D toy function (Himmelblau) contoured with its critical points, one
   marker per kind;
2. 1-D slices of a small neural network's loss along a filter-normalised
   random direction (Li et al. 2018) and along the top Hessian eigenvector;
3. the network's optimisation path drawn over a 2-D slice in the PCA plane
   of its trajectory, and the Hessian spectrum at the end of training.

Every plotting function takes ``ax=`` and returns it; nothing is shown or
saved by the library.
"""

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from hessian_tools import landscape, plotting
from hessian_tools.critical import classify
from hessian_tools.eigen import eigenpairs
from hessian_tools.operators import HessianOperator
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
# A 2-16-16-1 tanh MLP fitted to a noisy sine by full-batch gradient descent.
# Its parameters are a dict of Flax-style (in, out) kernels and biases.

rng = np.random.default_rng(0)
inputs = jnp.asarray(rng.uniform(-2, 2, size=(128, 2)), jnp.float32)
targets = jnp.sin(2 * inputs[:, 0]) * jnp.cos(inputs[:, 1]) + 0.05 * jnp.asarray(
    rng.normal(size=128), jnp.float32
)


def init(key, sizes=(2, 16, 16, 1)):
    keys = jax.random.split(key, len(sizes) - 1)
    return {
        f"layer{i}": {
            "kernel": jax.random.normal(k, (m, n)) / np.sqrt(m),
            "bias": jnp.zeros(n),
        }
        for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True))
    }


def loss(params, x, y):
    h = x
    for i in range(len(params)):
        layer = params[f"layer{i}"]
        h = h @ layer["kernel"] + layer["bias"]
        if i < len(params) - 1:
            h = jnp.tanh(h)
    return jnp.mean((h[:, 0] - y) ** 2)


params = init(jax.random.PRNGKey(0))
step = jax.jit(lambda p, x, y: jax.tree.map(lambda w, g: w - 0.1 * g, p, jax.grad(loss)(p, x, y)))
trajectory = [params]
for _ in range(300):
    params = step(params, inputs, targets)
    trajectory.append(params)
print(f"loss after training: {float(loss(params, inputs, targets)):.4f}")

# %%
# 1-D slices: random versus sharpest direction
# --------------------------------------------
# A filter-normalised random direction (biases zeroed, Li et al.'s default)
# against the top eigenvector of the Hessian. The sharpest direction curves
# up much faster than a random one. The weights here are plain ``x @ w``
# matrices, ``(in, out)``, so their filters (output units) lie along the last
# axis: ``filter_axis=-1`` (Flax ``kernel`` and Equinox ``weight`` leaves are
# recognised by name).

op = HessianOperator(loss, params, inputs, targets)
(top,) = landscape.eigen_directions(op, 1)
random_dir = landscape.random_direction(jax.random.PRNGKey(1), params, filter_axis=-1)
alphas = np.linspace(-1, 1, 41)
slices = [landscape.slice_1d(loss, params, d, alphas, inputs, targets) for d in (random_dir, top)]
fig, ax = plt.subplots(figsize=(6, 4))
plotting.plot_slice_1d(slices, ax, labels=["filter-normalised random", "top eigenvector"], log=True)
ax.set_title("1-D slices through the trained network")

# %%
# The training path in its PCA plane
# ----------------------------------
# Random directions are nearly orthogonal to an optimisation path, so the
# path is drawn in the plane of its two principal components (Li et al.
# 2018, section 7). The explained variance says how much of the path the
# picture shows.

plane = landscape.pca_directions(trajectory)
lo, hi = plane.coords.min(0), plane.coords.max(0)
pad = 0.3 * (hi - lo)
xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 41)
ys = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 31)
surface = landscape.slice_2d(loss, plane.origin, plane.directions, xs, ys, inputs, targets)

fig, ax = plt.subplots(figsize=(6, 5))
plotting.plot_slice_2d(surface, ax, log=True, trajectory=plane, cmap="viridis")
ev = plane.explained_variance
ax.set_xlabel(f"PC1 ({100 * ev[0]:.1f}% of variance)")
ax.set_ylabel(f"PC2 ({100 * ev[1]:.1f}% of variance)")
ax.set_title("Gradient-descent path over the PCA-plane slice")

# %%
# The Hessian spectrum at the end of training
# -------------------------------------------
# All eigenvalues of the (small) network's Hessian, largest first; the few
# negative ones are highlighted.

spectrum = eigenpairs(op, op.n, which="largest")
fig, ax = plt.subplots(figsize=(6, 3.5))
plotting.plot_eigenvalues(spectrum, ax, style="bar")
ax.set_yscale("symlog", linthresh=1e-3)
ax.set_title(f"Hessian eigenvalues (n = {op.n})")
