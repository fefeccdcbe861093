"""
Low-rank attention: a factorisation adds flat directions and saddles
====================================================================

An attention layer scores token :math:`i` against token :math:`j` by
:math:`x_i^\\top W x_j`. Transformers never learn :math:`W` itself: they
learn queries and keys, :math:`W = Q K^\\top` with :math:`Q, K \\in
\\mathbb{R}^{d \\times r}`, a low-rank factorisation (Vaswani et al. 2017,
"Attention is all you need"; Bhojanapalli et al. 2020, "Low-rank bottleneck
in multi-head attention models"). The factorised layer computes the same
kind of function with fewer parameters, but its loss has a different
geometry:

* the factorisation has a continuous symmetry, :math:`(Q, K) \\to (Q M,
  K M^{-\\top})` for any invertible :math:`r \\times r` matrix :math:`M`,
  which leaves :math:`W` unchanged. Every minimum lies on an
  :math:`r^2`-dimensional manifold of equally good minima, and the Hessian
  has :math:`r^2` zero eigenvalues there: the minima are *degenerate*;
* :math:`Q = K = 0` is a critical point (both gradients carry a factor of
  the other), a saddle that the unfactorised loss does not have;
* the curvature at a minimum depends on which point of the manifold the
  optimiser reached, although every one computes the same function.

A tiny synthetic task shows all three: sequences of :math:`T = 8` random
tokens in :math:`d = 6` dimensions, and targets made by a teacher layer of
rank 2. The students, written as :class:`equinox.Module` s, are trained by
Adam (:func:`optax.adam`), polished to machine precision by Newton-MR
(:func:`hessian_tools.find_critical_points`) and classified
(:func:`hessian_tools.classify`) from all their Hessian eigenvalues.
"""

import jax

# Float64: the zero eigenvalues of the symmetry must be told apart from the
# small positive ones. The library never flips this switch itself.
jax.config.update("jax_enable_x64", True)

import equinox as eqx
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import hessian_tools as ht

D, T, NUM_SEQ, RANK = 6, 8, 64, 2


class FullAttention(eqx.Module):
    """Scores x W x^T with a full d x d matrix W (d^2 = 36 parameters)."""

    w: jax.Array

    def scores(self, x):
        return x @ self.w @ x.T


class LowRankAttention(eqx.Module):
    """Scores (x Q)(x K)^T with d x r queries and keys (2 d r = 24 parameters)."""

    q: jax.Array
    k: jax.Array

    def scores(self, x):
        return (x @ self.q) @ (x @ self.k).T


def attend(layer, x):
    """Single-head self-attention with the tokens themselves as values."""
    return jax.nn.softmax(layer.scores(x), axis=-1) @ x


def loss(layer, x, y):
    """Half the squared error, summed over tokens and features, mean over sequences."""
    out = jax.vmap(lambda s: attend(layer, s))(x)
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=(1, 2)))


keys = jax.random.split(jax.random.PRNGKey(0), 3)
x = jax.random.normal(keys[0], (NUM_SEQ, T, D))
w_teacher = jax.random.normal(keys[1], (D, RANK)) @ jax.random.normal(keys[2], (D, RANK)).T
w_teacher = w_teacher / np.sqrt(D)
y = jax.vmap(lambda s: attend(FullAttention(w_teacher), s))(x)

optimiser = optax.adam(1e-2)


@eqx.filter_jit
def train(layer, x, y):
    def step(carry, _):
        layer, state = carry
        grads = jax.grad(loss)(layer, x, y)
        updates, state = optimiser.update(grads, state, layer)
        return (optax.apply_updates(layer, updates), state), None

    (layer, _), _ = jax.lax.scan(step, (layer, optimiser.init(layer)), None, length=1500)
    return layer


def stack(layers):
    """A batch of layers for find_critical_points: every leaf gets a leading axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *layers)


NUM_SEEDS = 4
full_init, low_init = [], []
for seed in range(NUM_SEEDS):
    k1, k2 = jax.random.split(jax.random.PRNGKey(10 + seed))
    full_init.append(FullAttention(0.1 * jax.random.normal(k1, (D, D))))
    low_init.append(LowRankAttention(*(0.3 * jax.random.normal(k, (D, RANK)) for k in (k1, k2))))

# %%
# Solutions: Adam, then Newton-MR
# -------------------------------
# Adam brings the loss from about 4 to below 1e-6; Newton-MR, started from
# the Adam solutions, drives the gradient to rounding level, so that the
# second-order test applies. The task is realisable, so every minimum has
# loss 0.

solutions = {}
for name, inits in (("full", full_init), ("low rank", low_init)):
    adam = [train(layer, x, y) for layer in inits]
    print(f"{name}: loss after Adam {[f'{float(loss(a, x, y)):.1e}' for a in adam]}")
    found = ht.find_critical_points(loss, stack(adam), x, y, dedup_tol=0.0)
    assert len(found) == NUM_SEEDS and all(cp.value < 1e-20 for cp in found)
    solutions[name] = found
for name, found in solutions.items():
    for cp in found:
        eigs = np.asarray(cp.eigenvalues)
        print(
            f"{name:>8}: {cp.kind:>10}, index {cp.index}, {cp.num_zero} zero eigenvalues "
            f"(|lambda| <= {cp.tol:.1e}), "
            f"smallest nonzero {eigs[np.abs(eigs) > cp.tol].min():.4f}, "
            f"largest {eigs.max():.4f}"
        )

# %%
# The full layer's minimum is an ordinary, strict one: all 36 eigenvalues
# positive, and the same spectrum from every start (it is one point,
# :math:`W = W_{teacher}`). The low-rank layer's minima have index 0 and
# exactly :math:`r^2 = 4` zero eigenvalues, the dimension of the symmetry:
# ``classify`` calls them degenerate (positive semidefinite), rightly, since
# the second-order test cannot tell a minimum from a saddle along flat
# directions. Here we know better: the flat directions are the tangents
# :math:`(Q E, -K E^\top)` of the symmetry orbit (:math:`E` running over
# the four 2 x 2 matrix units), and the Hessian maps each to zero.

full_spectra = np.stack([np.asarray(cp.eigenvalues) for cp in solutions["full"]])
for cp in solutions["full"]:
    assert cp.kind == "minimum" and cp.index == 0 and cp.num_zero == 0
    assert np.allclose(cp.x.w, w_teacher, atol=1e-8)
assert np.allclose(full_spectra, full_spectra[0], rtol=1e-8, atol=1e-10)

low_spectra = np.stack([np.asarray(cp.eigenvalues) for cp in solutions["low rank"]])
for cp in solutions["low rank"]:
    assert cp.kind == "degenerate" and cp.definiteness == "positive semidefinite"
    assert cp.index == 0 and cp.num_zero == RANK**2
    assert np.allclose(cp.x.q @ cp.x.k.T, w_teacher, atol=1e-8)  # the same function
    for i in range(RANK):
        for j in range(RANK):
            e = jnp.zeros((RANK, RANK)).at[i, j].set(1.0)
            tangent = LowRankAttention(cp.x.q @ e, -cp.x.k @ e.T)
            h_t = ht.hvp(loss, cp.x, tangent, x, y)
            assert float(jnp.linalg.norm(jnp.concatenate([h_t.q.ravel(), h_t.k.ravel()]))) < 1e-8

# %%
# The nonzero spectrum at the low-rank minima differs from start to start:
# the optimiser ends at different points of the manifold of minima, where
# :math:`Q` and :math:`K` are balanced differently. Rescaling
# :math:`(Q, K) \to (c Q, K / c)` moves along the manifold and changes the
# sharpness without changing a single output.

spread = low_spectra[:, -1].max() / low_spectra[:, -1].min()
print(f"largest eigenvalue at the 4 low-rank minima: {low_spectra[:, -1].round(3)}")
assert spread > 1.01
cp = solutions["low rank"][0]
rescaled = {}
for c in (0.5, 1.0, 2.0):
    layer = LowRankAttention(c * cp.x.q, cp.x.k / c)
    assert float(loss(layer, x, y)) < 1e-20
    rescaled[c] = float(ht.eigenpairs(ht.HessianOperator(loss, layer, x, y), 1).values[0])
print("lambda_max along (cQ, K/c):", {c: round(v, 3) for c, v in rescaled.items()})
assert rescaled[2.0] > 2 * rescaled[1.0] and rescaled[0.5] > 2 * rescaled[1.0]

fig, ax = plt.subplots(figsize=(7, 4))
for spectrum, color, label in (
    (full_spectra[0], "tab:blue", "full W (n = 36): all positive"),
    (low_spectra[0], "tab:orange", rf"$Q K^\top$, r = 2 (n = 24): {RANK**2} zero"),
):
    ranks = np.arange(1, spectrum.size + 1)
    ax.plot(ranks, np.sort(spectrum)[::-1], "o-", ms=4, color=color, label=label)
ax.set_yscale("symlog", linthresh=1e-3)
ax.axhline(0, color="black", lw=0.6)
ax.set_xlabel("rank")
ax.set_ylabel("Hessian eigenvalue")
ax.set_title("spectra at a minimum, full against factorised scores")
ax.legend()

# %%
# The saddle at the origin
# ------------------------
# At :math:`Q = K = 0` both gradients vanish. The Hessian there is
# :math:`\begin{pmatrix} 0 & G \\ G^\top & 0 \end{pmatrix}` in the
# factorised coordinates, with :math:`G = \partial L / \partial W` at
# :math:`W = 0` acting on each of the :math:`r` columns: its eigenvalues
# are :math:`\pm\sigma_i(G)`, each :math:`r` times. So it is a saddle of
# index :math:`r \cdot \mathrm{rank}(G) = 12`. The full layer's loss is not
# even critical at :math:`W = 0`: its gradient there is :math:`G`.

origin = ht.classify(loss, LowRankAttention(jnp.zeros((D, RANK)), jnp.zeros((D, RANK))), x, y)
g_full = jax.grad(loss)(FullAttention(jnp.zeros((D, D))), x, y).w
sv = np.linalg.svd(np.asarray(g_full), compute_uv=False)
expected = np.sort(np.concatenate([sv, -sv]).repeat(RANK))
print(
    f"origin: {origin.kind}, index {origin.index}; "
    f"eigenvalues {np.asarray(origin.eigenvalues).round(3)}"
)
assert origin.kind == "saddle" and origin.index == RANK * D
assert np.allclose(np.asarray(origin.eigenvalues), expected, rtol=1e-8, atol=1e-10)
assert ht.classify(loss, FullAttention(jnp.zeros((D, D))), x, y).kind == "not_critical"

fig, ax = plt.subplots(figsize=(7, 3.5))
ht.plotting.plot_eigenvalues(origin.eigenvalues, ax, style="bar")
ax.set_title(
    rf"Hessian at $Q = K = 0$: a saddle of index {origin.index}, eigenvalues $\pm\sigma_i(G)$"
)
fig.tight_layout()

# %%
# What this shows, and what it does not
# -------------------------------------
# On a realisable toy task the factorised layer reaches the same function as
# the full one, with 24 parameters instead of 36; its minima are a
# manifold, flat in :math:`r^2` directions, with a sharpness that depends
# on the balance of :math:`Q` and :math:`K`, and its loss has saddles that
# the full layer's does not. None of these saddles trapped Adam here,
# started near the origin. Started far from it, with large queries and
# keys, the softmax saturates and the loss has near-flat plateaus of its
# own; we leave those out. The
# task is far from a transformer: one head, no value or output
# projections, random tokens, a teacher of the student's rank. With a
# teacher of higher rank than :math:`r` the factorised layer could not fit
# it at all (Bhojanapalli et al.'s bottleneck), and its minima would no
# longer have loss 0.
