"""The digits MLP of ``hessian-tools demo``.

A 64-32-10 tanh MLP (2,410 parameters) on scikit-learn's bundled 8x8
digits (no download), at its seeded initialisation and after a short run of
full-batch gradient descent, each analysed as ``hessian-tools analyze``
does, with the sharpness tracked during training (``track_spectrum``,
warm-started from the last measurement).

``digits_mlp_init`` and ``digits_mlp_trained`` are factories for
``hessian-tools analyze hessian_tools.cli._demo_digits:digits_mlp_trained``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools.cli._html import Figure, Section, Table
from hessian_tools.cli._store import save_figure

#: full-batch gradient descent: its sharpness settles near the edge of
#: stability, 2 / LEARNING_RATE (Cohen et al. 2021)
LEARNING_RATE = 1.0
TRAIN_STEPS = 200
TRACK_EVERY = 10


def _digits(dtype: Any):
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # an optional dependency: the examples extra
        raise ImportError(
            "the digits demo needs scikit-learn (pip install 'hessian_tools[examples]'), "
            "or pass --skip digits."
        ) from err
    x, y = load_digits(return_X_y=True)  # bundled with scikit-learn: no download
    return jnp.asarray(x / 16.0, dtype), jnp.asarray(y)


def _logits(params: dict, x: jax.Array) -> jax.Array:
    # explicit [None] broadcasts: correct under jax_numpy_rank_promotion="raise"
    h = jnp.tanh(x @ params["dense1"]["kernel"] + params["dense1"]["bias"][None])
    return h @ params["dense2"]["kernel"] + params["dense2"]["bias"][None]


def mlp_loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of a one-hidden-layer tanh MLP."""
    logits = _logits(params, x)
    picked = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


def mlp_accuracy(params: dict, x: jax.Array, y: jax.Array) -> float:
    """Fraction of the samples classified right."""
    return float(jnp.mean(jnp.argmax(_logits(params, x), axis=-1) == y))


def mlp_init(key: jax.Array, dtype: Any, hidden: int = 32) -> dict:
    """64-hidden-10 parameters, Flax layout (``kernel`` is (in, out))."""
    k1, k2 = jax.random.split(key)
    return {
        "dense1": {
            "kernel": jax.random.normal(k1, (64, hidden), dtype) / 8.0,
            "bias": jnp.zeros(hidden, dtype),
        },
        "dense2": {
            "kernel": jax.random.normal(k2, (hidden, 10), dtype) / np.sqrt(hidden),
            "bias": jnp.zeros(10, dtype),
        },
    }


def train(params, x, y, steps=TRAIN_STEPS, every=TRACK_EVERY, lr=LEARNING_RATE, log=None):
    """Full-batch gradient descent (optax.sgd), the sharpness measured every
    ``every`` steps warm-started from the last: (params, track rows)."""
    try:
        import optax
    except ImportError as err:  # an optional dependency: the examples extra
        raise ImportError(
            "the digits demo trains with optax (pip install 'hessian_tools[examples]'), "
            "or pass --skip digits."
        ) from err

    import hessian_tools as ht

    opt = optax.sgd(lr)

    @jax.jit
    def step(params, state):
        grads = jax.grad(mlp_loss)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state, record, rows = opt.init(params), None, []
    for i in range(steps + 1):
        if i % every == 0 or i == steps:
            record = ht.track_spectrum(mlp_loss, params, x, y, previous=record)
            rows.append(
                {
                    "step": i,
                    "loss": float(mlp_loss(params, x, y)),
                    "accuracy": mlp_accuracy(params, x, y),
                    "sharpness": float(record.values[0]),
                    "error_bound": float(record.error_bounds[0]),
                    "num_matvecs": int(record.num_matvecs),
                }
            )
            if log:
                r = rows[-1]
                log(f"  step {i:4d}: loss {r['loss']:.4f}, sharpness {r['sharpness']:.4f}")
        if i < steps:
            params, state = step(params, state)
    return params, rows


def digits_mlp_init():
    """Factory: the digits MLP at its (seeded) initialisation."""
    import hessian_tools as ht

    dtype = jnp.float64 if jax.config.x64_enabled else jnp.float32
    x, y = _digits(dtype)
    params = mlp_init(jax.random.PRNGKey(0), dtype)
    return ht.Problem(mlp_loss, params, args=(x, y), name="digits MLP at initialisation")


def digits_mlp_trained(steps: int = TRAIN_STEPS):
    """Factory: the digits MLP after ``steps`` of gradient descent."""
    import hessian_tools as ht

    init = digits_mlp_init()
    params, _ = train(init.params, *init.args, steps=steps, every=steps)
    return ht.Problem(
        mlp_loss, params, args=init.args, name=f"digits MLP after {steps} steps of GD"
    )


def track_figure(rows, out, lr=LEARNING_RATE) -> Figure:
    """Sharpness and loss against the training step."""
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(steps, [r["sharpness"] for r in rows], "o-", label="sharpness (top eigenvalue)")
    ax.axhline(2 / lr, color="black", linestyle="--", linewidth=0.8, label="2 / learning rate")
    ax.set_xlabel("step")
    ax.set_ylabel("top eigenvalue")
    loss_ax = ax.twinx()
    loss_ax.plot(steps, [r["loss"] for r in rows], color="tab:gray", alpha=0.7, label="loss")
    loss_ax.set_ylabel("loss")
    handles = ax.get_legend_handles_labels()
    more = loss_ax.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize="small")
    fig.tight_layout()
    return Figure("sharpness_track.png", save_figure(fig, out / "sharpness_track.png"))


def track_section(rows, figure, num_samples, lr=LEARNING_RATE) -> Section:
    total = sum(r["num_matvecs"] for r in rows)
    text = (
        f"Full-batch gradient descent (learning rate {lr}) on the {num_samples:,} digits; "
        f"the top eigenvalue measured every {TRACK_EVERY} steps with track_spectrum, each "
        f"warm-started from the last: {total} HVPs in all. Gradient descent is stable "
        f"only while the sharpness stays below 2 / learning rate = {2 / lr:g} (Cohen et al. "
        "2021, the edge of stability)."
    )
    table = Table(
        ("step", "loss", "accuracy", "sharpness", "error bound", "HVPs"),
        [
            (
                r["step"],
                f"{r['loss']:.4f}",
                f"{r['accuracy']:.3f}",
                f"{r['sharpness']:.5g}",
                f"{r['error_bound']:.1e}",
                r["num_matvecs"],
            )
            for r in rows
        ],
    )
    return Section("Sharpness during training", [text, figure, table], 3)


def run_digits(
    settings: Any,
    out: Path,
    *,
    steps: int,
    resume: bool,
    log: Callable | None,
    progress: bool = False,
):
    """The digits MLP at initialisation and trained, analysed into
    ``out/digits_init`` and ``out/digits_trained``; the sharpness track."""
    import hessian_tools as ht
    from hessian_tools.cli._analysis import DEFAULT_PARTS
    from hessian_tools.cli._run import format_summary, run_analysis, sections

    # per-layer spectra ("blocks") would compile a solver per layer, a third
    # of the demo's time on 2 cores; ``analyze --parts all`` shows them
    parts = list(DEFAULT_PARTS)
    init = digits_mlp_init()
    x, y = init.args
    runs = {}
    for tag in ("init", "trained"):
        if tag == "trained":
            if log:
                log(f"training: {steps} steps of full-batch gradient descent")
            params, track = train(init.params, x, y, steps=steps, log=log)
            problem = ht.Problem(
                mlp_loss, params, (x, y), name=f"digits MLP after {steps} steps of GD"
            )
        else:
            problem = init
        if log:
            log(f"analysing the {problem.name}")
        runs[tag] = run_analysis(
            problem,
            settings,
            parts,
            out / f"digits_{tag}",
            resume=resume,
            progress=progress,
            log=log,
        )
        print(f"\n{problem.name}:\n{format_summary(runs[tag])}")
    accuracy = [mlp_accuracy(p, x, y) for p in (init.params, params)]
    intro = (
        f"A 64-32-10 tanh MLP ({runs['init']['num_params']:,} parameters) on scikit-learn's "
        f"bundled 8x8 digits ({x.shape[0]:,} images, no download), mean cross-entropy, at "
        f"initialisation (accuracy {accuracy[0]:.1%}) and after {steps} steps of "
        f"full-batch gradient descent (accuracy {accuracy[1]:.1%}). Each is analysed as "
        "hessian-tools analyze does; the full reports are in digits_init/ and digits_trained/. "
        "Per-layer spectra: hessian-tools analyze "
        "hessian_tools.cli._demo_digits:digits_mlp_trained --parts all."
    )
    page = [Section("Digits MLP", [intro])]
    for tag in ("init", "trained"):
        page += sections(runs[tag], out / f"digits_{tag}", prefix=f"digits_{tag}/", level=3)
    page.append(track_section(track, track_figure(track, out), x.shape[0]))
    report = {**runs, "accuracy": {"init": accuracy[0], "trained": accuracy[1]}, "track": track}
    return page, report
