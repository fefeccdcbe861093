"""
Hessian spectrum of a small network on digits
=============================================

A 64-32-10 multilayer perceptron (n = 2,410 parameters) trained briefly on
scikit-learn's bundled digits data (1,797 images of 8 x 8 pixels), once
with tanh and once with ReLU activations. For each we compute, from
Hessian-vector products only:

* the top eigenvalues (:func:`hessian_tools.eigenpairs` with
  ``which="largest"``: algebraically largest, never mixed with negative
  ones) and the most negative ones (``which="smallest"``), by Lanczos;
* the whole eigenvalue density by stochastic Lanczos quadrature
  (:func:`hessian_tools.density.spectral_density`, Ghorbani, Krishnan &
  Xiao 2019).

Then we reparameterise the ReLU network without changing the function it
computes and watch its "sharpness" change (Dinh et al. 2017).
"""

import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from hessian_tools import plotting
from hessian_tools.density import spectral_density
from hessian_tools.eigen import eigenpairs
from hessian_tools.operators import HessianOperator

digits = load_digits()
inputs = jnp.asarray(digits.data / 16.0, jnp.float32)
labels = jnp.asarray(digits.target)
print(f"digits: {inputs.shape[0]} samples, {inputs.shape[1]} features")

# %%
# The network and its training
# ----------------------------
# Parameters are a dict of (in, out) kernels and biases. The loss is the
# mean softmax cross-entropy over the whole data set; the activation is an
# argument, so one function serves both networks. A few lines of Adam
# (Kingma & Ba 2015), 300 full-batch steps from the same initialisation.


def init(key, sizes=(64, 32, 10)):
    keys = jax.random.split(key, len(sizes) - 1)
    return {
        f"layer{i}": {
            "kernel": jax.random.normal(k, (m, n)) * np.sqrt(2.0 / m),
            "bias": jnp.zeros(n),
        }
        for i, (k, m, n) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True))
    }


ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def make_loss(activation):
    act = ACTIVATIONS[activation]

    def loss(params, x, y):
        h = act(x @ params["layer0"]["kernel"] + params["layer0"]["bias"])
        logits = h @ params["layer1"]["kernel"] + params["layer1"]["bias"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    return loss


def train(loss, params, num_steps=300, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8):
    @jax.jit
    def step(params, m, v, t, x, y):
        g = jax.grad(loss)(params, x, y)
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g**2, v, g)
        scale = jnp.sqrt(1 - b2**t) / (1 - b1**t)
        params = jax.tree.map(
            lambda p, m, v: p - lr * scale * m / (jnp.sqrt(v) + eps), params, m, v
        )
        return params, m, v

    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    for t in range(1, num_steps + 1):
        params, m, v = step(params, m, v, t, inputs, labels)
    return params


def accuracy(loss_name, params):
    act = ACTIVATIONS[loss_name]
    h = act(inputs @ params["layer0"]["kernel"] + params["layer0"]["bias"])
    logits = h @ params["layer1"]["kernel"] + params["layer1"]["bias"]
    return float(jnp.mean(jnp.argmax(logits, axis=1) == labels))


losses = {name: make_loss(name) for name in ACTIVATIONS}
params0 = init(jax.random.PRNGKey(0))
trained = {}
for name, loss in losses.items():
    trained[name] = train(loss, params0)
    print(
        f"{name}: loss {float(loss(trained[name], inputs, labels)):.4f}, "
        f"training accuracy {accuracy(name, trained[name]):.3f}"
    )

# %%
# Extreme eigenvalues and the spectral density
# --------------------------------------------
# ``HessianOperator`` takes the data as arguments, so the compiled HVP is
# reused for every product. With n = 2,410 > 1,500, ``eigenpairs`` runs
# thick-restart Lanczos, which stops when every wanted Ritz residual is
# below its tolerance; ``num_matvecs`` counts the HVPs spent. The density
# uses 8 Rademacher probes of 64 Lanczos steps each (512 HVPs; the defaults,
# 16 probes of 80 steps, resolve it better at 2.5 times the cost).

results = {}
for name, loss in losses.items():
    op = HessianOperator(loss, trained[name], inputs, labels)
    start = time.perf_counter()
    top = eigenpairs(op, 10, which="largest", key=jax.random.PRNGKey(1))
    bottom = eigenpairs(op, 5, which="smallest", key=jax.random.PRNGKey(2))
    density = spectral_density(op, key=jax.random.PRNGKey(3), num_matvecs=512, num_probes=8)
    seconds = time.perf_counter() - start
    neg, neg_err = density.negative_fraction()
    results[name] = (top, bottom, density)
    print(f"{name} (n = {op.n}), {seconds:.1f} s:")
    print(f"  top 10:      {np.array2string(np.asarray(top.values), precision=4)}")
    print(f"               {top.num_matvecs} HVPs, converged {top.converged}")
    print(f"  smallest 5:  {np.array2string(np.asarray(bottom.values), precision=4)}")
    print(f"               {bottom.num_matvecs} HVPs, converged {bottom.converged}")
    print(
        f"  density: {density.num_matvecs} HVPs, fraction of negative eigenvalues "
        f"{neg:.3f} +/- {neg_err:.3f}"
    )

# %%
# The density is drawn on a log scale (it spans many decades); the computed
# extreme eigenvalues are the rug marks along the bottom, negative ones in
# red. Both spectra have a bulk near zero and a handful of outliers, of the
# order of the number of classes (Sagun et al. 2017; Papyan 2019), but the
# two activations give Hessians of different scale and shape. Both have
# small negative eigenvalues: after 300 steps neither network sits at an
# exact minimum.

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for ax, (name, (top, bottom, density)) in zip(axes, results.items(), strict=True):
    extremes = np.concatenate([np.asarray(top.values), np.asarray(bottom.values)])
    plotting.plot_spectral_density(density, ax, eigenvalues=extremes)
    ax.set_title(f"{name}: Hessian eigenvalue density (SLQ)")
    ax.set_ylim(bottom=1e-6)
fig.tight_layout()

fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for name, (top, bottom, _) in results.items():
    axes[0].plot(np.arange(1, 11), np.asarray(top.values), "o-", label=name)
    axes[1].plot(np.arange(1, 6), np.asarray(bottom.values), "o-", label=name)
axes[0].set_yscale("log")
axes[0].set_title('Top 10 eigenvalues (which="largest")')
axes[1].set_title('5 most negative eigenvalues (which="smallest")')
for ax, k in zip(axes, (10, 5), strict=True):
    ax.set_xticks(np.arange(1, k + 1))
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue")
    ax.legend()
fig.tight_layout()

# %%
# Same function, different Hessian
# --------------------------------
# ReLU is positively homogeneous: scaling the first layer by
# :math:`\alpha > 0` and the second layer's kernel by :math:`1/\alpha`
# leaves every output, and so the loss, unchanged. The Hessian does change:
# its first-layer block scales by :math:`1/\alpha^2` and its second-layer
# block by :math:`\alpha^2`. So the top eigenvalue, a common measure of
# "sharpness", can be made as large as we like at the same minimum (Dinh,
# Pascanu, Bengio & Bengio 2017, "Sharp minima can generalize for deep
# nets"). Flatness is a property of a parameterisation, not of the function.


def rescale(params, alpha):
    return {
        "layer0": jax.tree.map(lambda w: alpha * w, params["layer0"]),
        "layer1": {
            "kernel": params["layer1"]["kernel"] / alpha,
            "bias": params["layer1"]["bias"],
        },
    }


relu_loss = losses["relu"]
alphas = np.array([0.25, 0.5, 1.0, 2.0, 4.0])
sharpness, values = [], []
for alpha in alphas:
    p = rescale(trained["relu"], alpha)
    values.append(float(relu_loss(p, inputs, labels)))
    op = HessianOperator(relu_loss, p, inputs, labels)
    sharpness.append(float(eigenpairs(op, 1, key=jax.random.PRNGKey(4)).values[0]))
    print(f"alpha {alpha:4.2f}: loss {values[-1]:.6f}, top eigenvalue {sharpness[-1]:9.3f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(alphas, sharpness, "o-", label="top Hessian eigenvalue")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel(r"rescaling $\alpha$ (layer 1 $\times\alpha$, layer 2 $\div\alpha$)")
ax.set_ylabel("top eigenvalue")
ax.set_title(f"ReLU network: loss {values[2]:.4f} at every alpha, sharpness varies")
ax.legend()
fig.tight_layout()
