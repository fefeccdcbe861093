"""
Saddles of a linear autoencoder
===============================

A linear autoencoder :math:`x \\mapsto W_2 W_1 x` with a code layer of width
:math:`p` is the simplest neural network whose critical points are all
known (Baldi & Hornik 1989). With loss
:math:`\\tfrac12 \\|(I - W_2 W_1)\\Sigma^{1/2}\\|_F^2` and data covariance
:math:`\\Sigma` with distinct eigenvalues :math:`\\lambda_1 > \\dots >
\\lambda_d`, every critical point makes :math:`W_2 W_1` the orthogonal
projection onto a set :math:`I` of at most :math:`p` eigenvectors, with loss
:math:`\\tfrac12 \\sum_{i \\notin I} \\lambda_i`. Only the top-:math:`p`
projection is a minimum; all the others are saddles.

This is the picture Dauphin et al. (2014, "Identifying and attacking the
saddle point problem in high-dimensional non-convex optimization") drew for
neural networks in general: in high dimensions saddles outnumber minima,
and the index (the number of descent directions) rises with the loss. We
check it here: the closed-form critical points of
:func:`hessian_tools.problems.linear_autoencoder`, classified from their
Hessians, and the critical points that Newton-MR finds from random starts.
"""

import itertools

import jax

# Float64 for this script; the library never flips this switch itself.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt

import hessian_tools as ht

loss = ht.problems.linear_autoencoder
eigenvalues = [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]  # the spectrum of Sigma, d = 6
d, p = len(eigenvalues), 2
n = 2 * p * d  # parameters: W1 is (p, d), W2 is (d, p)
print(f"d = {d}, p = {p}, n = {n} parameters")

# %%
# The closed-form critical points
# -------------------------------
# One per index set :math:`I` with :math:`|I| \le p`: here
# :math:`1 + 6 + 15 = 22` of them. Each is classified from its dense Hessian
# (24 x 24). The symmetry :math:`W_1 \to C W_1`, :math:`W_2 \to W_2 C^{-1}`
# for any invertible :math:`p \times p` matrix :math:`C` makes every
# critical point one of a continuum, so the Hessian has zero eigenvalues
# along those directions: the minimum is classified "degenerate" with a
# positive semidefinite Hessian (the second-order test cannot certify it),
# while the saddles have negative eigenvalues and are saddles regardless.

closed_form = []
print(f"{'I':>8} {'loss':>6} {'predicted':>9} {'kind':>10} {'index':>5} {'zeros':>5}  definiteness")
for size in range(p + 1):
    for subset in itertools.combinations(range(d), size):
        params, sigma_sqrt, predicted = ht.problems.linear_autoencoder_critical_point(
            eigenvalues, subset, p, dtype=jnp.float64
        )
        cp = ht.classify(loss, params, sigma_sqrt)
        closed_form.append(cp)
        print(
            f"{subset!s:>8} {float(cp.value):6.2f} {predicted:9.2f} {cp.kind:>10} "
            f"{cp.index:>5} {cp.num_zero:>5}  {cp.definiteness}"
        )

kinds = [cp.kind for cp in closed_form]
print(
    f"\n{kinds.count('saddle')} saddles, {kinds.count('degenerate')} (degenerate) minimum, "
    f"{kinds.count('maximum')} maxima"
)

# %%
# Critical points from random starts
# ----------------------------------
# 300 random starts at three scales: small weights lead Newton-MR to the
# high-loss saddles near :math:`W = 0`, larger ones to the low-loss points.
# All starts run at once; the results are deduplicated up to ``dedup_tol``,
# but the symmetry leaves many distinct points on each level of the loss.

key_1, key_2 = jax.random.split(jax.random.PRNGKey(0))
num_starts = 300
scale = jnp.repeat(jnp.array([0.05, 0.3, 1.0]), num_starts // 3)[:, None, None]
starts = {
    "W1": scale * jax.random.normal(key_1, (num_starts, p, d), jnp.float64),
    "W2": scale * jax.random.normal(key_2, (num_starts, d, p), jnp.float64),
}
found = ht.find_critical_points(loss, starts, sigma_sqrt, dedup_tol=1e-3)

levels: dict[float, list] = {}
for cp in found:
    levels.setdefault(round(float(cp.value), 6), []).append(cp)
print(f"{len(found)} distinct critical points on {len(levels)} loss levels")
for value, points in sorted(levels.items()):
    labels = sorted({(cp.kind, cp.index) for cp in points})
    print(f"  loss {value:5.2f}: {len(points):3d} points, (kind, index) {labels}")

# %%
# Loss against index
# ------------------
# :func:`hessian_tools.plotting.plot_index_vs_loss` puts each critical point
# at (index / n, loss). The points line up: the lowest loss has index 0, and
# every step up in loss adds descent directions. Random starts land on the
# same levels as the closed form.

fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
ht.plotting.plot_index_vs_loss(closed_form, axes[0], s=60)
axes[0].set_title(f"closed form: all {len(closed_form)} critical points")
ht.plotting.plot_index_vs_loss(found, axes[1], s=60, alpha=0.5)
axes[1].set_title(f"Newton-MR from {num_starts} random starts")
axes[1].set_ylabel("")
fig.suptitle(f"Linear autoencoder, d = {d}, p = {p}: the index rises with the loss")
fig.tight_layout()

# %%
# Hessian spectra
# ---------------
# At the minimum all eigenvalues are :math:`\ge 0`, with :math:`p^2 = 4`
# zeros from the symmetry; at the best saddle one is negative; at
# :math:`W = 0` (nothing encoded) half of them are.

picks = [closed_form[7], closed_form[8], closed_form[0]]  # I = (0, 1), (0, 2), ()
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
for ax, cp in zip(axes, picks, strict=True):
    ht.plotting.plot_eigenvalues(cp.eigenvalues, ax, style="bar")
    ax.set_title(f"{cp.kind}, index {cp.index}, loss {float(cp.value):.1f}", fontsize="medium")
fig.tight_layout()
