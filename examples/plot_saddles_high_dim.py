"""
Saddles outnumber minima in high dimension
==========================================

Dauphin et al. (2014, "Identifying and attacking the saddle point problem
in high-dimensional non-convex optimization") argued that the critical
points of a neural network's loss are mostly saddles, and that their
index (the fraction of directions of negative curvature) rises with the
loss: in high dimension, a critical point with a high loss almost surely
has some direction that leads down, and the ones with no such direction,
the minima, sit near the bottom. Their Fig. 1 plots the index of critical
points against their loss.

We draw that figure twice:

* for the **linear autoencoder**, whose critical points are all known in
  closed form (Baldi & Hornik 1989): every one but the global minimum is a
  saddle, and the index rises with the loss;
* for a **small tanh network**, whose critical points we find with
  :func:`hessian_tools.find_critical_points` (Newton-MR, which is attracted
  to critical points of any index) from random starts, and classify by the
  signs of their Hessian's eigenvalues.

Each classification is checked against an independent reference: the
eigenvalues of the Hessian from :func:`jax.hessian`, by a float64
``eigh``.
"""

import itertools

import jax

# Float64 for this script: critical points to ~12 digits. The library never
# flips this switch itself; it follows the dtype of its inputs.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy.stats import spearmanr

import hessian_tools as ht


def check_against_eigh(f, cp, *args):
    """Check the index and kind of ``cp`` against an independent dense
    Hessian; return how many eigenvalues lie near the zero threshold."""
    flat, unravel = ravel_pytree(cp.x)
    grad = jax.grad(lambda z: f(unravel(z), *args))(flat)
    eigs = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda z: f(unravel(z), *args))(flat)))
    tol = np.sqrt(np.finfo(np.float64).eps) * np.abs(eigs).max()
    index, zeros = int(np.sum(eigs < -tol)), int(np.sum(np.abs(eigs) <= tol))
    kind = "saddle" if index else ("minimum" if not zeros else "degenerate")
    # critical to ~10 digits: |grad| below eps^0.6 ||H|| max(1, ||x||), the library's contract
    grad_tol = (
        np.finfo(np.float64).eps ** 0.6
        * np.abs(eigs).max()
        * max(1.0, float(jnp.linalg.norm(flat)))
    )
    assert float(jnp.linalg.norm(grad)) < grad_tol, float(jnp.linalg.norm(grad))
    assert (cp.index, cp.num_zero, cp.kind) == (index, zeros, kind), (cp, index, zeros)
    # eigenvalues within a factor 10 of the threshold: labels that hang on the tolerance
    return int(np.sum((np.abs(eigs) > tol / 10) & (np.abs(eigs) < 10 * tol)))


# %%
# The linear autoencoder: every critical point
# --------------------------------------------
# :math:`x \mapsto W_2 W_1 x` with a code of width :math:`p = 2`, data in
# :math:`d = 6` dimensions with covariance eigenvalues 6, 5, ..., 1, so
# :math:`n = 2pd = 24` parameters; the loss is
# :math:`\tfrac12 \|(I - W_2 W_1)\Sigma^{1/2}\|_F^2`. Every critical point
# makes :math:`W_2 W_1` the projection onto a set :math:`I` of at most
# :math:`p` eigenvectors, with loss :math:`\tfrac12 \sum_{i \notin I}
# \lambda_i`: :math:`1 + 6 + 15 = 22` of them. The symmetry
# :math:`W_1 \to C W_1,\ W_2 \to W_2 C^{-1}` makes each one of a continuum,
# with :math:`p^2 = 4` zero eigenvalues, so the minimum comes out
# "degenerate" (positive semidefinite: the second-order test cannot
# certify it); the saddles have negative eigenvalues and are saddles
# regardless.

autoencoder = ht.problems.linear_autoencoder
spectrum = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
d, p = len(spectrum), 2
closed_form = []
for size in range(p + 1):
    for subset in itertools.combinations(range(d), size):
        params, sigma_sqrt, predicted = ht.problems.linear_autoencoder_critical_point(
            spectrum, subset, p, dtype=jnp.float64
        )
        cp = ht.classify(autoencoder, params, sigma_sqrt)
        assert abs(float(cp.value) - predicted) < 1e-12
        check_against_eigh(autoencoder, cp, sigma_sqrt)
        closed_form.append(cp)

closed_form.sort(key=lambda cp: float(cp.value))
kinds = [cp.kind for cp in closed_form]
rho_ae = spearmanr([cp.index for cp in closed_form], [float(cp.value) for cp in closed_form])[0]
print(
    f"linear autoencoder, n = {2 * p * d}: {len(closed_form)} critical points, "
    f"{kinds.count('saddle')} saddles; rank correlation of index and loss {rho_ae:.2f}"
)
for cp in closed_form[:4]:
    print(f"  loss {float(cp.value):5.2f}: {cp.kind}, index {cp.index}")
print(
    f"  ... the highest, W = 0: loss {float(closed_form[-1].value)}, index {closed_form[-1].index}"
)
assert kinds.count("saddle") == len(closed_form) - 1
assert closed_form[0].kind == "degenerate" and closed_form[0].index == 0
assert float(closed_form[0].value) == 5.0 and rho_ae > 0.8
assert closed_form[-1].index == p * d  # W = 0: half of the 24 directions lead down

# %%
# A small tanh network: the critical points Newton-MR finds
# ---------------------------------------------------------
# A student network :math:`x \mapsto w_2^\top \tanh(W_1^\top x + b_1) +
# b_2` with 4 hidden units (:math:`n = 17`) fits a teacher of the same form
# with 8 hidden units on 64 points in the plane (squared error), so it
# cannot fit exactly. 120 starts, at three scales of the weights, run at
# once; the end points are deduplicated and classified.

kx, kt1, kt2, ks = jax.random.split(jax.random.PRNGKey(0), 4)
x = jax.random.normal(kx, (64, 2), jnp.float64)


def net(params, x):
    return jnp.tanh(x @ params["W1"] + params["b1"]) @ params["w2"] + params["b2"]


def loss(params, x, y):
    return 0.5 * jnp.mean((net(params, x) - y) ** 2)


teacher = {
    "W1": jax.random.normal(kt1, (2, 8), jnp.float64),
    "b1": jnp.zeros(8),
    "w2": jax.random.normal(kt2, (8,), jnp.float64),
    "b2": jnp.zeros(()),
}
y = net(teacher, x)

hidden, num_starts = 4, 120
scale = jnp.repeat(jnp.array([0.25, 0.5, 1.0]), num_starts // 3)
shapes = {"W1": (2, hidden), "b1": (hidden,), "w2": (hidden,), "b2": ()}
keys = dict(zip(shapes, jax.random.split(ks, len(shapes)), strict=True))
starts = {
    name: scale.reshape(-1, *[1] * len(shape))
    * jax.random.normal(keys[name], (num_starts, *shape), jnp.float64)
    for name, shape in shapes.items()
}
found = ht.find_critical_points(loss, starts, x, y, max_iter=100)
borderline = [check_against_eigh(loss, cp, x, y) for cp in found]

n = sum(int(np.prod(s)) for s in shapes.values())
counts = {
    kind: sum(cp.kind == kind for cp in found) for kind in ("minimum", "saddle", "degenerate")
}
rho_tanh = spearmanr([cp.index for cp in found], [float(cp.value) for cp in found])[0]
print(f"\ntanh network, n = {n}: {len(found)} distinct critical points from {num_starts} starts")
print(f"  by kind: {counts}")
print(f"  fraction of saddles: {counts['saddle'] / len(found):.2f}")
print(f"  rank correlation of index and loss: {rho_tanh:.2f}")
print(f"  zero eigenvalues per point: {sorted({cp.num_zero for cp in found})}")
print(
    f"  {sum(b > 0 for b in borderline)} points have eigenvalues within a factor 10 of the "
    "zero threshold"
)
print(f"  {'loss':>8} {'kind':>10} {'index':>5} {'zeros':>5}")
for cp in found[:8]:
    print(f"  {float(cp.value):8.4f} {cp.kind:>10} {cp.index:>5} {cp.num_zero:>5}")

# %%
# What the counts say, checked: at least 10 distinct critical points, of
# which at least a third are saddles, and no strict minimum at all: every
# point without a direction of negative curvature has flat ones, many of
# them.

assert len(found) >= 10
assert counts["saddle"] >= len(found) / 3 and counts["minimum"] == 0, counts
assert all(cp.num_zero >= 2 for cp in found if cp.kind == "degenerate")

# %%
# Index against loss
# ------------------
# :func:`hessian_tools.plotting.plot_index_vs_loss` puts each critical point
# at (index / n, loss), as in Dauphin et al.'s Fig. 1.

fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
ht.plotting.plot_index_vs_loss(closed_form, axes[0], s=60)
axes[0].set_title(
    f"linear autoencoder (n = {2 * p * d}): all {len(closed_form)} critical points "
    "(some coincide)\n"
    f"rank correlation {rho_ae:.2f}",
    fontsize="medium",
)
ht.plotting.plot_index_vs_loss(found, axes[1], s=50, alpha=0.7)
axes[1].set_title(
    f"tanh network (n = {n}): {len(found)} found from {num_starts} starts\n"
    f"{counts['saddle']} saddles, rank correlation {rho_tanh:.2f}",
    fontsize="medium",
)
fig.tight_layout()

# %%
# The number of flat directions at each point found, against its loss:

fig, ax = plt.subplots(figsize=(6.5, 4))
for kind in ("saddle", "degenerate"):
    pts = [cp for cp in found if cp.kind == kind]
    style = ht.plotting.KIND_STYLES[kind]
    ax.scatter(
        [float(cp.value) for cp in pts],
        [cp.num_zero for cp in pts],
        marker=style["marker"],
        color=style["color"],
        edgecolors="black",
        label=f"{kind} ({len(pts)})",
    )
ax.set_xlabel("loss")
ax.set_ylabel(f"zero eigenvalues (of n = {n})")
ax.set_title("tanh network: how degenerate the critical points are")
ax.legend()
fig.tight_layout()

# %%
# What the small network shows, and what it does not
# --------------------------------------------------
# The linear autoencoder is the clean case: all but one critical point is
# a saddle, and the index climbs with the loss in lockstep (several
# critical points share a loss and an index, so their markers coincide).
#
# The tanh network, with 17 parameters, is far from the high-dimensional
# regime Dauphin et al. had in mind, and the picture is blurred. Saddles are
# about half of the points found, and the lowest-loss points found are
# saddles with one or two directions down, close in loss to a minimum (as
# Dauphin et al. describe low-loss saddles); but the index does not rise
# with the loss (rank correlation near zero). What does rise with the loss
# is the number of exactly flat directions (rank correlation about 0.5,
# checked below). These are the singular points of small networks (Fukumizu
# & Amari 2000, "Local minima and plateaus in hierarchical structures of
# multilayer perceptrons"): a hidden unit whose output weight is zero, or
# two units that compute the same thing, leave directions along which the
# loss does not change at all; the high-loss points are smaller networks in
# disguise. At a point with flat directions and no negative ones the
# second-order test cannot tell a minimum from a higher-order saddle, and
# the library reports "degenerate" rather than guess: no point found here is
# a certified minimum. Nor are the counts a census: Newton-MR from random
# starts samples the critical points with a bias of its own, and most starts
# end nowhere critical within the step budget and are dropped.

rho_flat = spearmanr([cp.num_zero for cp in found], [float(cp.value) for cp in found])[0]
print(f"rank correlation of the number of zero eigenvalues and the loss: {rho_flat:.2f}")
values = np.array([float(cp.value) for cp in found])
zeros = np.array([cp.num_zero for cp in found])
upper, lower = zeros[values > np.median(values)], zeros[values <= np.median(values)]
print(
    f"median number of zero eigenvalues: {np.median(lower)} below the median loss, "
    f"{np.median(upper)} above"
)
assert found[0].kind == "saddle" and found[0].index <= 2 and abs(rho_tanh) < 0.4
assert rho_flat > 0.3 and np.median(upper) >= np.median(lower) + 3, (rho_flat, lower, upper)
