"""
Hessian spectrum of a small network on digits
=============================================

A 64-32-10 ReLU multilayer perceptron (an :class:`equinox.nn.MLP`,
n = 2,410 parameters) trained with Adam (:func:`optax.adam`) on
scikit-learn's bundled digits data (1,797 images of 8 x 8 pixels). From
Hessian-vector products only, we look at

* the bulk and the outliers of its spectrum: the top eigenvalues by
  Lanczos (:func:`hessian_tools.eigenpairs`) over the eigenvalue density
  by stochastic Lanczos quadrature (:func:`hessian_tools.spectral_density`);
* how the number of outliers follows the number of classes (Sagun et al.
  2017, "Empirical analysis of the Hessian of over-parametrized neural
  networks"; Papyan 2019, 2020);
* how much of the gradient lies in the top eigenspace during training
  (Gur-Ari, Roberts & Dyer 2018, "Gradient descent happens in a tiny
  subspace");
* what the certified error bars of :class:`hessian_tools.Eigenpairs` are
  worth, against the exact eigenvalues of the dense Hessian.
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
import scipy.linalg
from sklearn.datasets import load_digits

import hessian_tools as ht

digits = load_digits()
inputs = jnp.asarray(digits.data / 16.0, jnp.float32)
labels = jnp.asarray(digits.target)
print(f"digits: {inputs.shape[0]} samples, {inputs.shape[1]} features")

# %%
# The network, its loss and its training
# --------------------------------------
# The loss is the softmax cross-entropy averaged over the samples whose
# weight is 1. Selecting a subset of classes by weights rather than by
# slicing the data keeps every array the same shape, so one compiled
# Hessian-vector product and one compiled Lanczos loop serve every run
# below. The parameters are the Equinox module itself: its floating-point
# arrays are the variables, its activation function is held fixed.


def loss(model, x, y, weights):
    logits = jax.vmap(model)(x)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]
    return jnp.sum(weights * nll) / jnp.sum(weights)


@eqx.filter_jit
def train(model, weights, optimiser, num_steps, batch_size=None, key=None):
    """Train with an optax optimiser, full-batch or on random mini-batches;
    return the model after every step (leaves with a leading time axis)."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    if batch_size is None:  # every step sees all samples
        batches = jnp.broadcast_to(jnp.arange(labels.shape[0]), (num_steps, labels.shape[0]))
    else:
        batches = jax.random.randint(key, (num_steps, batch_size), 0, labels.shape[0])

    def step(carry, i):
        params, state = carry
        grads = jax.grad(lambda p: loss(eqx.combine(p, static), inputs[i], labels[i], weights[i]))(
            params
        )
        updates, state = optimiser.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    _, path = jax.lax.scan(step, (params, optimiser.init(params)), batches)
    return eqx.combine(path, static)


def at_step(path, t):
    return jax.tree.map(lambda a: a[t] if eqx.is_inexact_array(a) else a, path)


init = eqx.nn.MLP(64, 10, 32, 1, activation=jax.nn.relu, key=jax.random.PRNGKey(0))
all_classes = jnp.ones(labels.shape[0], jnp.float32)
adam = optax.adam(1e-2)
NUM_STEPS = 100
adam_path = train(init, all_classes, adam, 200)
model = at_step(adam_path, NUM_STEPS - 1)
accuracy = float(jnp.mean(jnp.argmax(jax.vmap(model)(inputs), axis=1) == labels))
print(
    f"after {NUM_STEPS} Adam steps: loss {float(loss(model, inputs, labels, all_classes)):.4f}, "
    f"training accuracy {accuracy:.3f}"
)

# %%
# Bulk and outliers
# -----------------
# ``HessianOperator`` takes the data as arguments, never as constants, so the
# compiled product is reused by every operator below. Lanczos gives the top
# 14 eigenvalues, each with a certified error bound; SLQ gives the density of
# all 2,410 (12 probes of 64 Lanczos steps).

K = 14
op = ht.HessianOperator(loss, model, inputs, labels, all_classes)
start = time.perf_counter()
top = ht.eigenpairs(op, K, key=jax.random.PRNGKey(1))
density = ht.spectral_density(op, key=jax.random.PRNGKey(2), num_matvecs=768)
print(f"top {K}: {np.asarray(top.values).round(4)}")
print(f"  {int(top.num_matvecs)} HVPs, converged {bool(top.converged)}")
print(f"density: {density.num_matvecs} HVPs; {time.perf_counter() - start:.1f} s for both")
neg, neg_err = density.negative_fraction()
print(f"fraction of negative eigenvalues: {neg:.3f} +/- {neg_err:.3f}")

values = np.asarray(top.values)
ratios = values[:-1] / values[1:]
num_outliers = int(np.argmax(ratios)) + 1
print(f"largest gap after eigenvalue {num_outliers}: ratio {ratios.max():.1f}")
assert bool(top.converged)
assert num_outliers == 9 and ratios.max() > 2.5, ratios
# the outliers sit far out of the bulk: under 1% of the spectrum lies beyond the gap
beyond_gap = 1 - float(density.cdf(np.sqrt(values[num_outliers - 1] * values[num_outliers])))
print(f"fraction of the spectrum beyond the gap: {beyond_gap:.4f} (9 / n = {9 / op.n:.4f})")
assert beyond_gap < 0.01

# %%
# Nine eigenvalues stand clear of the rest (rug marks along the bottom; the
# log-scale density shows the bulk piled up at zero, with a thin tail).

fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
ht.plotting.plot_spectral_density(density, axes[0], eigenvalues=values)
axes[0].set_ylim(bottom=1e-6)
axes[0].set_title("eigenvalue density (SLQ) and the top 14 (Lanczos)")
ht.plotting.plot_eigenvalues(top, axes[1])
axes[1].axvline(num_outliers - 0.5, color="0.5", ls="--")
axes[1].set_yscale("log")
axes[1].set_title(f"top {K}: {num_outliers} outliers, then the bulk edge")
fig.tight_layout()

# %%
# The number of outliers against the number of classes
# ----------------------------------------------------
# The same network trained on the digits 0 to C-1 only, for C = 2, ..., 10
# (the weights select the samples; the ten outputs stay). The outliers are
# counted at the largest ratio between consecutive eigenvalues among the
# top 14. Sagun et al. (2017) report about as many outliers as classes.
# Here there are exactly C - 1 of them, every time: the Hessian of the
# cross-entropy with respect to the logits has rank C - 1 (adding a
# constant to every logit changes nothing), and the outliers come from the
# class means of the logits' gradients (Papyan 2019, "Measurements of
# three-level hierarchical structure in the outliers in the spectrum of
# deepnet Hessians"; Papyan 2020, "Traces of class/cross-class structure
# pervade deep learning spectra").

num_classes = np.arange(2, 11, 2)
counts, spectra = [], []
for c in num_classes:
    weights = (labels < c).astype(jnp.float32)
    trained = at_step(train(init, weights, adam, 200), NUM_STEPS - 1)
    ep = ht.eigenpairs(
        ht.HessianOperator(loss, trained, inputs, labels, weights), K, key=jax.random.PRNGKey(1)
    )
    v = np.asarray(ep.values)
    counts.append(int(np.argmax(v[:-1] / v[1:])) + 1)
    spectra.append(v)
    print(f"C = {c:2d}: {counts[-1]} outliers, top {K} {v.round(3)}")
assert counts == list(num_classes - 1), counts

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
colors = plt.cm.viridis(np.linspace(0, 0.9, len(num_classes)))
for c, v, color in zip(num_classes, spectra, colors, strict=True):
    axes[0].plot(np.arange(1, K + 1), v / v[0], "o-", color=color, ms=4, label=f"C = {c}")
axes[0].set_yscale("log")
axes[0].set_xlabel("rank")
axes[0].set_ylabel(r"$\lambda_i / \lambda_1$")
axes[0].set_title("top eigenvalues, trained on C classes")
axes[0].legend(fontsize="small")
axes[1].plot(num_classes, counts, "o", ms=8, label="outliers counted")
axes[1].plot(num_classes, num_classes, "--", color="0.6", label="C")
axes[1].plot(num_classes, num_classes - 1, ":", color="k", label="C - 1")
axes[1].set_xlabel("number of classes C")
axes[1].set_ylabel("number of outliers")
axes[1].legend()
axes[1].set_title("outliers against classes")
fig.tight_layout()

# %%
# Does the gradient live in the top eigenspace?
# ---------------------------------------------
# Gur-Ari et al. (2018): soon after training starts, the gradient lies
# almost entirely in the span of the top Hessian eigenvectors, as many as
# there are classes. We measure the overlap
# :math:`\|P_k g\|^2 / \|g\|^2` of the full-batch gradient with the top
# :math:`k = 10` eigenvectors every 10 steps of three training runs from
# the same start: SGD with momentum on mini-batches of 64 (their setting),
# full-batch gradient descent, and Adam. The spectrum is tracked with
# :func:`hessian_tools.track_spectrum`: each measurement starts Lanczos
# from the previous eigenvectors. A random vector has overlap
# :math:`k / n = 0.004`.

sgd_momentum = optax.sgd(0.05, momentum=0.9)
paths = {
    "SGD, momentum 0.9, batches of 64": train(
        init, all_classes, sgd_momentum, 200, 64, jax.random.PRNGKey(5)
    ),
    "full-batch gradient descent, lr 0.5": train(init, all_classes, optax.sgd(0.5), 200),
    "Adam, lr 0.01, full batch": adam_path,  # the run above
}
checkpoints = np.arange(0, 200, 10)
overlaps, sharpness = {}, {}
for name, path in paths.items():
    record, row, cost, top_values = None, [], [], []
    for t in checkpoints:
        point = at_step(path, t)
        record = ht.track_spectrum(
            loss,
            point,
            inputs,
            labels,
            all_classes,
            previous=record,
            k=K,
            key=jax.random.PRNGKey(3),
        )
        op_t = ht.HessianOperator(loss, point, inputs, labels, all_classes)
        g = op_t.ravel(op_t.value_and_grad()[1])
        basis = op_t.layout.ravel(jax.tree.map(lambda a: a[:10], record.tree_vectors))  # (10, n)
        row.append(float(jnp.sum((basis @ g) ** 2) / jnp.sum(g**2)))
        cost.append(int(record.num_matvecs))
        top_values.append(float(record.values[0]))
    overlaps[name], sharpness[name] = np.array(row), np.array(top_values)
    print(f"{name}: overlap {overlaps[name].round(2)}")
    print(f"  lambda_max {sharpness[name].round(2)}")
    print(f"  HVPs per measurement: first {cost[0]}, then {np.mean(cost[1:]):.0f} on average")

late = checkpoints >= 100
sgd, gd, adam_overlap = overlaps.values()
gd_sharpness = sharpness["full-batch gradient descent, lr 0.5"]
assert np.all(sgd[late] > 0.7), sgd
assert np.all(adam_overlap[late] < 0.1), adam_overlap
# gradient descent: in the bulk, except while its sharpness sits at 2 / lr = 4
assert np.median(gd[late]) < 0.1 and np.all(gd_sharpness[gd > 0.3] > 0.95 * 4), gd

# %%
# With SGD and momentum the overlap climbs within a few dozen steps to about
# 0.9, as Gur-Ari et al. found: the gradient is dominated by its components
# along the outliers, 1/200 of the directions. The other two runs show
# that this is not a property of the loss alone. Full-batch gradient
# descent multiplies the gradient's component along an eigenvector of
# eigenvalue :math:`\lambda` by about :math:`1 - \eta\lambda` per step, so
# it damps the top components fastest and leaves the gradient in the bulk
# except for a burst around step 100: there its sharpness has grown to
# :math:`2/\eta = 4`, where :math:`|1 - \eta\lambda_{\max}| = 1` and the top
# component no longer decays, it oscillates (see the edge-of-stability
# example). Adam, which rescales every coordinate, keeps the gradient in
# the bulk throughout.

fig, ax = plt.subplots(figsize=(6.5, 4))
for name, row in overlaps.items():
    ax.plot(checkpoints, row, "o-", ms=4, label=name)
ax.axhline(10 / op.n, color="0.5", ls=":", label="a random vector (k / n)")
ax.set_xlabel("training step")
ax.set_ylabel(r"$\|P_{10}\, g\|^2 / \|g\|^2$")
ax.set_ylim(-0.02, 1.02)
ax.legend(fontsize="small")
ax.set_title("The full-batch gradient in the top-10 eigenspace")
fig.tight_layout()

# %%
# Certified error bars
# --------------------
# Each eigenvalue comes with a bound on its error, ``error_bounds``
# (:math:`\min(r, r^2/\delta)` from its residual :math:`r` and the gap
# :math:`\delta` to the other Ritz values). To see what they are worth we
# ask for a loose relative accuracy, ``rtol=1e-2``, and compare with the
# exact top eigenvalues of the dense Hessian (2,410 HVPs, then a float64
# ``eigh``). Every error lies below its bound; where the bound is loose it
# says so honestly, and the outliers, well separated, come out far more
# accurate than asked.

loose = ht.eigenpairs(op, K, key=jax.random.PRNGKey(4), rtol=1e-2)
dense = np.asarray(op.to_dense(), np.float64)
exact = scipy.linalg.eigh(dense, eigvals_only=True, subset_by_index=[op.n - K, op.n - 1])[::-1]
rows = [("rtol=1e-4 (default)", top), ("rtol=1e-2", loose)]
for name, ep in rows:
    error = np.abs(np.asarray(ep.values, np.float64) - exact)
    bound = np.asarray(ep.error_bounds, np.float64)
    print(f"{name}: {int(ep.num_matvecs)} HVPs, max error / bound {np.max(error / bound):.2f}")
    # the float32 HVPs themselves round at ~1e-7 ||H||: allow that much on top
    assert np.all(error <= bound + 1e-6 * exact[0]), (name, error, bound)

fig, ax = plt.subplots(figsize=(6.5, 4))
ranks = np.arange(1, K + 1)
for (name, ep), marker in zip(rows, "os", strict=True):
    error = np.abs(np.asarray(ep.values, np.float64) - exact)
    (line,) = ax.plot(ranks, ep.error_bounds, marker + "-", label=f"bound, {name}")
    ax.plot(ranks, np.maximum(error, 1e-9), marker, mfc="none", color=line.get_color(), ms=9)
ax.plot([], [], "ko", mfc="none", label="actual error (hollow)")
ax.set_yscale("log")
ax.set_xlabel("rank")
ax.set_ylabel(r"$|\lambda - \lambda_{\mathrm{exact}}|$")
ax.set_title("error bounds against the dense Hessian")
ax.legend(fontsize="small")
fig.tight_layout()

# %%
# A caution on what is certified: a residual bound says that *some*
# eigenvalue lies within :math:`r` of each Ritz value, not that it is the
# i-th largest. Until Lanczos has found every eigenvalue above the ones it
# reports, a missed one shifts the ranks. Stopped early
# (``max_matvecs=20``, so ``converged`` is False), the 12th Ritz value
# is near the 13th eigenvalue, the 12th (0.092) not yet found, and the
# errors against the i-th eigenvalues exceed their bounds (up to about six
# times here: the bounds are residual bounds while the Krylov space is this
# small, and hold for *an* eigenvalue). Read the bounds as bounds on the
# i-th eigenvalue only when ``converged`` is True, which also needs the
# completeness check to have found nothing beyond the returned values.

early = ht.eigenpairs(op, K, key=jax.random.PRNGKey(0), max_matvecs=20)
error = np.abs(np.asarray(early.values, np.float64) - exact)
excess = error / np.asarray(early.error_bounds, np.float64)
print(f"max_matvecs=20: converged {bool(early.converged)}, max error / bound {excess.max():.0f}")
assert not bool(early.converged) and excess.max() > 1
# the 12th Ritz value sits on the 13th eigenvalue, far from the 12th
assert (
    abs(float(early.values[11]) - exact[12])
    < 1e-3
    < 3e-3
    < abs(float(early.values[11]) - exact[11])
)
