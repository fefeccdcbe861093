"""
The reparameterisation trick
============================

A Gaussian :math:`q = N(\\mu, \\sigma^2)` is fitted to a double-well
density :math:`p(z) \\propto e^{-f(z)}`, :math:`f(z) = a (z^2 - 1)^2`, by
minimising the variational free energy (the Kullback-Leibler divergence
:math:`KL(q \\| p)` up to a constant)

.. math::

    L(\\mu, s) = E_{z \\sim q}[f(z)] - H(q), \\qquad s = \\log \\sigma,
    \\quad H(q) = s + \\text{const}.

Training needs the gradient of an expectation over a distribution that
itself depends on the parameters. Two unbiased Monte-Carlo estimators:

* the **score function** (REINFORCE, Williams 1992):
  :math:`\\nabla_\\theta E_q[f] = E_q[f(z) \\nabla_\\theta \\log q(z)]`. It
  needs only values of :math:`f`, so it works for any :math:`f`,
  discrete :math:`z` included;
* the **reparameterisation** :math:`z = \\mu + \\sigma \\varepsilon`,
  :math:`\\varepsilon \\sim N(0, 1)` (Kingma & Welling 2014, "Auto-encoding
  variational Bayes"; Rezende, Mohamed & Wierstra 2014):
  :math:`\\nabla_\\theta E_q[f] = E_\\varepsilon[f'(z) \\nabla_\\theta z]`.
  It needs a differentiable :math:`f`, and uses its slope.

We measure the variance of both against the number of samples, then look
at the landscape of :math:`L` in :math:`(\\mu, \\log \\sigma)`: its critical
points, found with :func:`hessian_tools.find_critical_points` and
classified by the signs of the Hessian's eigenvalues, and the paths that
Adam (:func:`optax.adam`) takes on it with reparameterised gradients.
"""

import jax

# Float64: the critical points are checked against closed-form values to
# 1e-8. The library never flips this switch itself.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import hessian_tools as ht

A = 4.0  # depth of the wells: a(z^2 - 1)^2, minima at z = -1 and z = 1


def f(z):
    return A * (z**2 - 1) ** 2


def expected_f(theta):
    """E[f(z)] for z ~ N(mu, sigma^2), in closed form from the Gaussian
    moments E z^2 = mu^2 + v and E z^4 = mu^4 + 6 mu^2 v + 3 v^2 (v = sigma^2)."""
    mu, s = theta[0], theta[1]
    v = jnp.exp(2 * s)
    return A * (mu**4 + 6 * mu**2 * v + 3 * v**2 - 2 * mu**2 - 2 * v + 1)


def free_energy(theta):
    """KL(q || p) up to a constant: E_q[f] minus the entropy, s + const."""
    return expected_f(theta) - theta[1]


# %%
# Two estimators of one gradient
# ------------------------------
# At :math:`\theta = (\mu, s) = (0.6, \log 0.4)` both estimators average
# :math:`N` per-sample terms; their exact mean is the gradient of the
# closed-form :math:`E_q[f]`. Per sample, with
# :math:`z = \mu + \sigma \varepsilon`:
#
# * score function:
#   :math:`f(z) \, (\varepsilon / \sigma, \; \varepsilon^2 - 1)`;
# * reparameterisation: :math:`f'(z) \, (1, \; \sigma \varepsilon)`.


def score_terms(theta, eps, baseline=0.0):
    mu, s = theta
    sigma = jnp.exp(s)
    fz = f(mu + sigma * eps) - baseline
    return jnp.stack([fz * eps / sigma, fz * (eps**2 - 1)], axis=-1)


def reparam_terms(theta, eps):
    mu, s = theta
    sigma = jnp.exp(s)
    slope = jax.vmap(jax.grad(f))(mu + sigma * eps)
    return jnp.stack([slope, slope * sigma * eps], axis=-1)


theta0 = jnp.array([0.6, np.log(0.4)])
exact = np.asarray(jax.grad(expected_f)(theta0))
eps = jax.random.normal(jax.random.PRNGKey(0), (1_000_000,))
per_sample = {}
for name, terms in (("score function", score_terms), ("reparameterisation", reparam_terms)):
    t = np.asarray(terms(theta0, eps))
    mean, stderr = t.mean(0), t.std(0) / np.sqrt(t.shape[0])
    # unbiased: a million samples land within 5 standard errors of the gradient
    assert np.all(np.abs(mean - exact) < 5 * stderr), (name, mean, exact, stderr)
    per_sample[name] = t.var(0).sum()  # trace of the per-sample covariance
    print(
        f"{name:>19}: mean {mean.round(4)} (exact {exact.round(4)}), per-sample variance "
        f"{per_sample[name]:.1f}"
    )
ratio = per_sample["score function"] / per_sample["reparameterisation"]
print(f"variance ratio, score function / reparameterisation: {ratio:.1f}")

# %%
# The variance of the average over :math:`N` samples, measured over 2,000
# repeats for each :math:`N`, against the per-sample variance divided by
# :math:`N`. Both fall as :math:`1/N`, as any average of independent terms
# does; what differs is the constant: at this point the score function
# needs about four times as many samples for the same accuracy.

sample_sizes = np.array([1, 4, 16, 64, 256, 1024])
repeats = 2000
measured = {name: [] for name in per_sample}
for i, n in enumerate(sample_sizes):
    e = jax.random.normal(jax.random.PRNGKey(1 + i), (repeats, int(n)))
    for name, terms in (("score function", score_terms), ("reparameterisation", reparam_terms)):
        estimates = np.asarray(jax.vmap(lambda row, terms=terms: terms(theta0, row).mean(0))(e))
        sq = ((estimates - estimates.mean(0)) ** 2).sum(1)
        var, var_stderr = sq.mean(), sq.std() / np.sqrt(repeats)
        # the measured variance is the per-sample variance / N, to within 5
        # standard errors of its own estimate (the terms are heavy-tailed)
        assert abs(var - per_sample[name] / n) < 5 * var_stderr, (name, n, var, var_stderr)
        measured[name].append(var)
for name in measured:
    measured[name] = np.asarray(measured[name])
    slope = np.polyfit(np.log(sample_sizes), np.log(measured[name]), 1)[0]
    print(f"{name:>19}: log-log slope {slope:.3f}")
    assert abs(slope + 1) < 0.1
assert 3 < ratio < 6 and np.all(measured["score function"] > 2 * measured["reparameterisation"])

# %%
# The score function's variance depends on the values of :math:`f`, not only
# on how they vary: per sample it is about
# :math:`f(\mu)^2 / \sigma^2` in :math:`\mu` as :math:`\sigma \to 0`,
# while the reparameterised estimator tends to the exact
# :math:`(f'(\mu), 0)`. So the gap opens as the fit narrows, as it does
# during training. Subtracting a baseline :math:`b` from :math:`f` keeps
# the estimator unbiased (:math:`E_q[\nabla \log q] = 0`) and removes
# most of it; here :math:`b = E_q[f]`, known in closed form (in practice
# it is estimated, e.g. by the mean of the other samples).


def baseline_terms(theta, eps):
    return score_terms(theta, eps, baseline=expected_f(theta))


sigmas = np.geomspace(0.02, 1.0, 12)
eps_sweep = eps[:200_000]
sweep = {"score function": [], "score function, baseline": [], "reparameterisation": []}
for sigma in sigmas:
    theta = jnp.array([0.6, np.log(sigma)])
    for name, terms in zip(sweep, (score_terms, baseline_terms, reparam_terms), strict=True):
        sweep[name].append(float(np.asarray(terms(theta, eps_sweep)).var(0).sum()))
sweep = {name: np.asarray(v) for name, v in sweep.items()}
small = sigmas < 0.1
slope_small = np.polyfit(np.log(sigmas[small]), np.log(sweep["score function"][small]), 1)[0]
print(
    f"score-function variance ~ sigma^{slope_small:.2f} for sigma < 0.1; "
    f"ratio to reparameterisation at sigma = {sigmas[0]}: "
    f"{sweep['score function'][0] / sweep['reparameterisation'][0]:.0f}"
)
assert abs(slope_small + 2) < 0.2
assert sweep["score function"][0] > 1000 * sweep["reparameterisation"][0]
assert np.all(sweep["score function, baseline"] < sweep["score function"])

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
colors = {
    "score function": "tab:red",
    "score function, baseline": "tab:orange",
    "reparameterisation": "tab:blue",
}
for name, var in measured.items():
    axes[0].loglog(sample_sizes, var, "o", color=colors[name], label=f"{name} (measured)")
    axes[0].loglog(
        sample_sizes,
        per_sample[name] / sample_sizes,
        "--",
        color=colors[name],
        lw=1,
        label="per-sample variance / N",
    )
axes[0].set_xlabel("number of samples N")
axes[0].set_ylabel("variance of the gradient estimate (trace)")
axes[0].set_title(rf"at $\mu$ = 0.6, $\sigma$ = 0.4: same 1/N rate, {ratio:.1f}x apart")
axes[0].legend(fontsize="small")
for name, var in sweep.items():
    axes[1].loglog(sigmas, var, "o-", ms=4, color=colors[name], label=name)
axes[1].set_xlabel(r"$\sigma$ (at $\mu$ = 0.6)")
axes[1].set_ylabel("per-sample variance (trace)")
axes[1].set_title("the gap opens as the fit narrows")
axes[1].legend(fontsize="small")
fig.tight_layout()

# %%
# The landscape in :math:`(\mu, \log \sigma)` and its critical points
# ---------------------------------------------------------------------
# Newton-MR from a 12 x 10 grid of starts finds every zero of the gradient
# and classifies it by the Hessian's eigenvalues. With :math:`v = \sigma^2`
# the stationarity conditions are polynomial and can be solved by hand:
# :math:`\partial_\mu L = 4 a \mu (\mu^2 + 3 v - 1) = 0` and
# :math:`\partial_v L = a (6 \mu^2 + 6 v - 2) - 1 / (2 v) = 0`. So either
# :math:`\mu = 0` and :math:`12 a v^2 - 4 a v - 1 = 0`, or
# :math:`\mu^2 = 1 - 3 v` and :math:`24 a v^2 - 8 a v + 1 = 0`: five
# critical points for :math:`a = 4`.

grid = np.stack(np.meshgrid(np.linspace(-1.5, 1.5, 12), np.linspace(-2.5, 0.5, 10)), -1)
found = ht.find_critical_points(free_energy, jnp.asarray(grid.reshape(-1, 2)))
for cp in found:
    print(
        f"{cp.kind:>8} at mu = {float(cp.x[0]):+.6f}, sigma = {float(jnp.exp(cp.x[1])):.6f}: "
        f"L = {float(cp.value):.6f}, eigenvalues {np.asarray(cp.eigenvalues).round(3)}"
    )

v_centre = max(np.roots([12 * A, -4 * A, -1]))
v_sides = np.roots([24 * A, -8 * A, 1])  # two real roots for a > 1.5
known = [((0.0, v_centre), "minimum")]
for v in v_sides:
    kind = "minimum" if v < 1 / 6 else "saddle"  # the narrow fit sits in a well
    known += [((m, v), kind) for m in (-np.sqrt(1 - 3 * v), np.sqrt(1 - 3 * v))]
assert len(found) == len(known) == 5
for (mu, v), kind in known:
    x_known = np.array([mu, 0.5 * np.log(v)])
    dist = [np.linalg.norm(np.asarray(cp.x) - x_known) for cp in found]
    nearest = found[int(np.argmin(dist))]
    assert min(dist) < 1e-8 and nearest.kind == kind, (x_known, kind, nearest)

# %%
# Three minima and two saddles. Two minima are narrow Gaussians sitting in
# one well each, :math:`\mu \approx \pm 0.95`, :math:`\sigma \approx
# 0.19` (the mode-seeking fits for which :math:`KL(q \| p)` is known);
# the third is a broad Gaussian over both wells, :math:`\mu = 0`,
# :math:`\sigma \approx 0.62`, and is a worse fit (higher :math:`L`).
# The saddles, index 1, sit on the passes between the broad minimum and
# the narrow ones. The contour is of :math:`\log(L - L_{min} + 0.05)`.

l_min = min(float(cp.value) for cp in found)


def shifted(theta):
    return free_energy(theta) - l_min + 0.05


fig, ax = plt.subplots(figsize=(7, 5))
ht.plotting.plot_function_2d(
    shifted, (-1.6, 1.6), (-2.6, 0.4), ax=ax, log=True, critical_points=found
)
ax.set_xlabel(r"$\mu$")
ax.set_ylabel(r"$s = \log \sigma$")
ax.set_title(r"free energy $KL(q\,\|\,p)$ + const in $(\mu, \log\sigma)$")

# %%
# Stochastic training with the reparameterised gradient
# -----------------------------------------------------
# Adam on 64 reparameterised samples per step (the entropy's gradient,
# :math:`(0, -1)`, is exact), from six starts, with the step size decayed
# by cosine annealing. Where a path ends depends on where it starts: the
# broad minimum has a basin of its own, and a start between the wells can
# end in it. Every path ends within 0.1 of one of the three minima.


def mc_free_energy(theta, eps):
    """The Monte-Carlo free energy: E_q[f] by the reparameterised average."""
    return jnp.mean(f(theta[0] + jnp.exp(theta[1]) * eps)) - theta[1]


num_steps = 1500
optimiser = optax.adam(optax.cosine_decay_schedule(0.05, num_steps))


@jax.jit
def train(theta, key):
    def step(carry, k):
        theta, state = carry
        grads = jax.grad(mc_free_energy)(theta, jax.random.normal(k, (64,)))
        updates, state = optimiser.update(grads, state, theta)
        theta = optax.apply_updates(theta, updates)
        return (theta, state), theta

    keys = jax.random.split(key, num_steps)
    _, path = jax.lax.scan(step, (theta, optimiser.init(theta)), keys)
    return jnp.concatenate([theta[None], path])


starts = jnp.array([[-1.4, 0.2], [-0.3, 0.3], [0.1, -2.2], [0.5, -0.2], [1.4, -0.6], [-1.2, -2.3]])
paths = [np.asarray(train(x, jax.random.PRNGKey(10 + i))) for i, x in enumerate(starts)]
minima = [np.asarray(cp.x) for cp in found if cp.kind == "minimum"]
reached = []
for path in paths:
    dist = [np.linalg.norm(path[-1] - m) for m in minima]
    reached.append(int(np.argmin(dist)))
    assert min(dist) < 0.1, (path[0], path[-1], dist)
print("minimum reached from each start:", reached)
assert len(set(reached)) == 3  # all three basins are visited

fig, ax = plt.subplots(figsize=(7, 5))
ht.plotting.plot_function_2d(
    shifted, (-1.6, 1.6), (-2.6, 0.4), ax=ax, log=True, critical_points=found
)
for path in paths:
    ht.plotting.plot_trajectory(path, ax, label=None, markersize=0, linewidth=0.8)
ax.set_xlabel(r"$\mu$")
ax.set_ylabel(r"$s = \log \sigma$")
ax.set_title("Adam with 64 reparameterised samples per step")

# %%
# The Monte-Carlo objective has a Hessian too
# -------------------------------------------
# With :math:`\varepsilon_1, \dots, \varepsilon_N` drawn once and held
# fixed, :math:`\hat L_N(\mu, s) = \frac1N \sum_i f(\mu + e^s
# \varepsilon_i) - s` is an ordinary differentiable function of
# :math:`(\mu, s)`: the reparameterisation turns the expectation into a
# deterministic loss, whose critical points :mod:`hessian_tools` can find and
# classify like any other (the score function gives an estimator of the
# gradient, not a function to differentiate). With :math:`N = 4000` fixed
# samples the same five points come out, of the same kinds, within 0.05 of
# the exact ones.

eps_fixed = jax.random.normal(jax.random.PRNGKey(99), (4000,))
found_mc = ht.find_critical_points(mc_free_energy, jnp.asarray(grid.reshape(-1, 2)), eps_fixed)
# From a few starts Newton-MR runs off towards sigma -> 0 (s -> -inf), where
# the gradient tends to (f'(mu), -1) but never vanishes; only the points in
# the box of the starts are kept.
found_mc = [cp for cp in found_mc if -3 < float(cp.x[1]) < 1]
print("Monte-Carlo objective:", [(cp.kind, np.asarray(cp.x).round(3).tolist()) for cp in found_mc])
assert len(found_mc) == 5
for cp in found:
    dist = [np.linalg.norm(np.asarray(mc.x) - np.asarray(cp.x)) for mc in found_mc]
    nearest = found_mc[int(np.argmin(dist))]
    assert min(dist) < 0.05 and nearest.kind == cp.kind, (cp, nearest)

# %%
# What this shows, and what it does not
# -------------------------------------
# Both estimators are unbiased and both converge at the Monte-Carlo rate
# :math:`1/N`; the reparameterised one has a much smaller constant here,
# for a smooth :math:`f` of one Gaussian variable. That is the usual case
# (and why variational auto-encoders train), not a theorem: for some
# :math:`f` (rapidly oscillating ones) the reparameterised estimator can be
# the worse of the two, and for discrete :math:`z` it does not exist. The
# parameterisation by :math:`\log \sigma` keeps :math:`\sigma > 0`
# without a constraint; it moves the critical points' coordinates but not
# their number or kinds, since :math:`s \mapsto e^s` is a diffeomorphism
# onto :math:`\sigma > 0`.
