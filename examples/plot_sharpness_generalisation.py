"""
Training risk against true risk: sharpness and the generalisation gap
=====================================================================

Keskar et al. (2017, "On large-batch training for deep learning:
generalization gap and sharp minima") observed that networks trained with
large batches generalise worse than those trained with small ones, and
that they end in *sharper* minima of the training loss: a minimum whose
loss rises steeply is more sensitive to the shift between the training
loss and the loss on unseen data. We repeat the experiment in miniature:
a 64-64-10 ReLU network (an :class:`equinox.nn.MLP`, n = 4,810) on 500
digits, with the other 1,297 held out, trained by SGD (:func:`optax.sgd`)
with batches of 16 and with the full batch, for the same number of steps
at the same step size, from the same three initialisations.

At each solution we measure the sharpness (:math:`\\lambda_{max}` of the
training loss's Hessian, :func:`hessian_tools.eigenpairs`), the gap between
held-out and training loss, and the loss of both sets along lines through
the solutions (:func:`hessian_tools.landscape.slice_1d`, the held-out loss
as a ``metrics=`` entry, so both are evaluated at the same points).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

import hessian_tools as ht

digits = load_digits()
order = np.random.default_rng(0).permutation(len(digits.target))
NUM_TRAIN = 500
x_train = jnp.asarray(digits.data[order[:NUM_TRAIN]] / 16.0, jnp.float32)
y_train = jnp.asarray(digits.target[order[:NUM_TRAIN]])
x_test = jnp.asarray(digits.data[order[NUM_TRAIN:]] / 16.0, jnp.float32)
y_test = jnp.asarray(digits.target[order[NUM_TRAIN:]])


def loss(model, x, y):
    """Softmax cross-entropy, mean over the samples."""
    logits = jax.vmap(model)(x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def accuracy(model, x, y):
    return float(jnp.mean(jnp.argmax(jax.vmap(model)(x), axis=1) == y))


def held_out_loss(model):
    return loss(model, x_test, y_test)


NUM_STEPS, LEARNING_RATE = 2000, 0.5
optimiser = optax.sgd(LEARNING_RATE)


@eqx.filter_jit
def train(model, batches):
    """SGD over the given (NUM_STEPS, batch_size) sample indices."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def step(carry, idx):
        params, state = carry
        grads = jax.grad(lambda p: loss(eqx.combine(p, static), x_train[idx], y_train[idx]))(params)
        updates, state = optimiser.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, optimiser.init(params)), batches)
    return eqx.combine(params, static)


results = {"small batch (16)": [], "full batch (500)": []}
for seed in range(3):
    init = eqx.nn.MLP(64, 10, 64, 1, activation=jax.nn.relu, key=jax.random.PRNGKey(seed))
    small = jax.random.randint(jax.random.PRNGKey(100 + seed), (NUM_STEPS, 16), 0, NUM_TRAIN)
    full = jnp.broadcast_to(jnp.arange(NUM_TRAIN), (NUM_STEPS, NUM_TRAIN))
    for name, batches in zip(results, (small, full), strict=True):
        model = train(init, batches)
        top = ht.eigenpairs(ht.HessianOperator(loss, model, x_train, y_train), 2)
        assert bool(top.converged)
        train_loss, test_loss = float(loss(model, x_train, y_train)), float(held_out_loss(model))
        results[name].append(
            dict(
                model=model,
                sharpness=float(top.values[0]),
                top=top,
                train_loss=train_loss,
                gap=test_loss - train_loss,
                train_acc=accuracy(model, x_train, y_train),
                test_acc=accuracy(model, x_test, y_test),
            )
        )
        r = results[name][-1]
        print(
            f"seed {seed}, {name}: lambda_max {r['sharpness']:.3f} "
            f"({int(top.num_matvecs)} HVPs), train loss {train_loss:.4f}, "
            f"held-out loss {test_loss:.4f}, gap {r['gap']:.4f}, "
            f"accuracy {r['train_acc']:.3f} / {r['test_acc']:.3f}"
        )

# %%
# Sharpness against the generalisation gap
# ----------------------------------------
# Every run fits its 500 training digits exactly (training accuracy 1).
# The full-batch solutions are about twice as sharp as the small-batch
# ones, and their held-out loss exceeds their training loss by more: the
# relation that Keskar et al. reported, here with three seeds per batch
# size.

small, full = results["small batch (16)"], results["full batch (500)"]
assert all(r["train_acc"] == 1.0 for r in small + full)
assert min(r["sharpness"] for r in full) > 1.5 * max(r["sharpness"] for r in small)
assert min(r["gap"] for r in full) > max(r["gap"] for r in small)
mean = {
    name: {k: np.mean([r[k] for r in rs]) for k in ("gap", "test_acc")}
    for name, rs in results.items()
}
print("mean over seeds:", mean)

fig, ax = plt.subplots(figsize=(6, 4.5))
for (name, rs), marker, color in zip(results.items(), "os", ("tab:blue", "tab:red"), strict=True):
    ax.scatter(
        [r["sharpness"] for r in rs],
        [r["gap"] for r in rs],
        marker=marker,
        s=60,
        color=color,
        label=f"{name}: held-out accuracy {100 * mean[name]['test_acc']:.1f}%",
    )
ax.set_xlabel(r"sharpness $\lambda_{max}$ of the training loss")
ax.set_ylabel("held-out loss - training loss")
ax.set_title("three seeds per batch size")
ax.legend(fontsize="small")

# %%
# Loss of both sets along lines through the solutions
# ---------------------------------------------------
# Left: the line through the small-batch (0) and the full-batch (1)
# solutions of the first seed, which start from the same initialisation
# (Keskar et al.'s figure 3). Right: a filter-normalised random direction
# (Li et al. 2018) through each solution, the same random draw for both.
# The held-out loss lies above the training loss everywhere. Between the
# two solutions the training loss has a low barrier and its minimum is not
# exactly at either end (the small-batch run still moves with its gradient
# noise); along the random direction the full-batch solution's training
# loss rises about twice as fast.

line = ht.landscape.interpolation(small[0]["model"], full[0]["model"])
alphas = np.linspace(-0.5, 1.5, 41)
between = ht.landscape.slice_1d(
    loss,
    small[0]["model"],
    line.directions[0],
    alphas,
    x_train,
    y_train,
    metrics={"held-out": lambda m, x, y: held_out_loss(m)},
)
assert np.all(between.metrics["held-out"] > between.values)

steps = np.linspace(-1, 1, 41)
along = {}
for name, rs in results.items():
    d = ht.landscape.random_direction(jax.random.PRNGKey(7), rs[0]["model"])
    along[name] = ht.landscape.slice_1d(
        loss,
        rs[0]["model"],
        d,
        steps,
        x_train,
        y_train,
        metrics={"held-out": lambda m, x, y: held_out_loss(m)},
    )
rise = {
    name: s.values[-1] + s.values[0] - 2 * s.values[steps.size // 2] for name, s in along.items()
}
print("training-loss rise at alpha = +-1 along the random direction:", rise)
assert rise["full batch (500)"] > rise["small batch (16)"]

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
axes[0].plot(alphas, between.values, color="k", label="training loss")
axes[0].plot(alphas, between.metrics["held-out"], color="k", ls="--", label="held-out loss")
for x, name in ((0, "small batch"), (1, "full batch")):
    axes[0].axvline(x, color="0.6", lw=0.8)
    axes[0].annotate(name, (x, 0.5), xycoords=("data", "axes fraction"), ha="center")
axes[0].set_yscale("log")
axes[0].set_xlabel("alpha (0: small-batch solution, 1: full-batch solution)")
axes[0].set_ylabel("loss")
axes[0].legend(loc="upper left", fontsize="small")
for (name, s), color in zip(along.items(), ("tab:blue", "tab:red"), strict=True):
    axes[1].plot(steps, s.values, color=color, label=f"{name}: training")
    axes[1].plot(steps, s.metrics["held-out"], color=color, ls="--", label=f"{name}: held-out")
axes[1].set_yscale("log")
axes[1].set_xlabel("alpha along a filter-normalised random direction")
axes[1].set_ylabel("loss")
axes[1].legend(fontsize="small")
fig.tight_layout()

# %%
# What this does and does not show
# --------------------------------
# It shows, on one small data set and three seeds, the association Keskar
# et al. reported: at the same step size and number of steps, full-batch
# training ends at sharper minima with a larger gap between held-out and
# training loss. The differences are small: a few hundredths in loss and
# well under a percentage point in held-out accuracy.
#
# It does not show that sharpness *causes* the gap. The two kinds of run
# differ in more than sharpness: the small-batch runs end at a slightly
# lower training loss, and with the cross-entropy both the sharpness and
# the gap change as the training loss falls (the logits grow). And
# :math:`\lambda_{max}` is not a property of the function the network
# computes: Dinh et al. (2017, "Sharp minima can generalize for deep nets")
# rescale a ReLU network's layers to make any minimum as sharp as wanted
# without changing a single prediction (the loss-landscape example does it).
# The filter-normalised slice above is immune to that rescaling and tells
# the same story here, so the difference is not a mere matter of weight
# scale; but a causal test would need interventions (changing sharpness
# alone, e.g. by a sharpness penalty) and many more runs and data sets.
