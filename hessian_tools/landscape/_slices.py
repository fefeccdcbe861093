"""Loss-landscape slices: the loss along a line or over a plane in parameter space.

``slice_1d`` evaluates ``f(params + alpha * d)`` and ``slice_2d`` evaluates
``f(params + x * d1 + y * d2)`` on a grid, after Li et al. (2018),
"Visualizing the Loss Landscape of Neural Nets". The grid follows the
``np.meshgrid(xs, ys)`` / ``plt.contour(xs, ys, values)`` convention:
``values[i, j]`` is the loss at ``(xs[j], ys[i])``, so ``values`` has shape
``(len(ys), len(xs))``. Coordinate 0 is the given ``params``, which are
never modified.

Evaluation runs a compiled ``lax.map`` over small ``vmap``-ed chunks of
grid points (a few points at a time keep each point's activations in cache:
on XLA CPU this is 1.6x faster than one wide ``vmap`` for an MLP on
digits and 1.3x for a CNN), compiled once per loss, metrics and shapes:
params, directions and data are arguments of the compiled function, never
constants. Long 2-D grids can be
checkpointed row by row and resumed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools._checkpoint import load_slice_checkpoint, save_slice_checkpoint
from hessian_tools._checks import check_scalar_output
from hessian_tools._chunks import chunks, fit
from hessian_tools._compile import jit
from hessian_tools._data import Data
from hessian_tools._hessian import wrapped_loss
from hessian_tools._params import Partition
from hessian_tools._progress import progress_bar
from hessian_tools._tree import Layout
from hessian_tools.landscape._directions import as_direction

PyTree = Any

__all__ = ["Slice1D", "Slice2D", "slice_1d", "slice_2d"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Slice1D:
    """The loss along a line ``params + alpha * direction``.

    Attributes:
        alphas: (m,) coordinates along the direction (0 is params).
        values: (m,) loss values, the batch-weighted mean with ``batches=``.
        metrics: name -> (m,) values of each extra metric.
    """

    alphas: np.ndarray
    values: np.ndarray
    metrics: dict = dataclasses.field(default_factory=dict)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Slice2D:
    """The loss over a plane ``params + x * d1 + y * d2``.

    Attributes:
        xs: (nx,) coordinates along d1.
        ys: (ny,) coordinates along d2.
        values: (ny, nx) loss values; ``values[i, j]`` is at
            ``(xs[j], ys[i])`` (the ``np.meshgrid(xs, ys)`` convention, ready
            for ``plt.contour(xs, ys, values)``).
        metrics: name -> (ny, nx) values of each extra metric.
    """

    xs: np.ndarray
    ys: np.ndarray
    values: np.ndarray
    metrics: dict = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------
# Input checks


def _coords(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of coordinates, got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: give at least one coordinate.")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf.")
    return arr.astype(np.float64)


def _check_metrics(metrics: Mapping[str, Callable] | None) -> dict[str, Callable]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError("metrics must be a dict mapping names to functions of (params, *args).")
    for name, fn in metrics.items():
        if not isinstance(name, str) or not callable(fn):
            raise TypeError(f"metrics entry {name!r} must map a str name to a callable.")
    return dict(metrics)


# --------------------------------------------------------------------------
# Vectorised evaluation


#: points vmapped together by default, and points per compiled call
_CHUNK, _GROUP = 4, 256


@functools.partial(jax.jit, static_argnums=(0, 1))  # losses: _compile
def _eval_points(fns, partition, variables, fixed, directions, coeffs, data: Data):
    """(g, c, len(fns)) values of each fn at params + sum_k coeffs[..., k] d_k
    (the directions move the variables; fixed leaves stay), averaged over
    the batches: a ``lax.map`` over the g chunks, each chunk of c points
    vmapped (inside, a scan over batches)."""

    def at(c, args):
        def move(x, *ds):
            out = x
            for k, d in enumerate(ds):
                out = out + c[k].astype(x.dtype) * d
            return out

        point = partition.combine(jax.tree.map(move, variables, *directions), fixed)
        outs = [jnp.asarray(fn(point, *args)) for fn in fns]
        dtype = jnp.result_type(*[o.dtype for o in outs], jnp.float32)
        return jnp.stack([o.astype(dtype) for o in outs])

    def chunk(cs):
        return data.mean(lambda *args: jax.vmap(lambda c: at(c, args))(cs))

    return jax.lax.map(chunk, coeffs)


class _Evaluator:
    """Evaluates loss and metrics at points ``params + coeffs @ directions``,
    ``chunk_size`` points vmapped at a time, up to ``_GROUP`` points per
    compiled call, averaged over batches."""

    def __init__(self, f, params, directions, args, batches, metrics, chunk_size):
        self.partition = Partition.of(params)
        self.variables, self.fixed = self.partition.split(params)
        layout = Layout.of(self.variables)
        self.params = params
        self.directions = tuple(
            as_direction(params, d, "direction" if len(directions) == 1 else f"directions[{i}]")
            for i, d in enumerate(directions)
        )
        self.data = Data.create(args, batches)
        first = self.data.example_args()
        self.metrics = _check_metrics(metrics)
        for name, fn in {
            "the loss f": f,
            **{f"metric {k!r}": g for k, g in self.metrics.items()},
        }.items():
            wrapped = wrapped_loss(fn, self.partition)
            check_scalar_output(name, wrapped, self.variables, self.fixed, *first)
        self.f = f
        self.fns = (f, *self.metrics.values())
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or None; got {chunk_size!r}.")
        self.chunk_size = chunk_size
        self.coeff_dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
        self.bytes_per_point = max(1, layout.n * layout.dtype.itemsize)

    def _chunk(self, m: int) -> int:
        if self.chunk_size is not None:
            return min(m, self.chunk_size)
        # each vmapped point holds a perturbed copy of params plus the loss's
        # own activations: a few points at a time keep those in cache (on a
        # 2-core CPU, 441 points of an 85k-parameter MLP on 1,797 digits take
        # 0.84 s in chunks of 4 and 1.39 s vmapped 197 at a time; a CNN 2.3 s
        # vs 3.1 s); copies stay under ``_chunks.CHUNK_BYTES``.
        return min(m, fit(self.bytes_per_point, cap=_CHUNK))

    def __call__(self, coeffs: np.ndarray, bar: Any = None) -> np.ndarray:
        """(m, 1 + num_metrics) float64 values at the m points ``coeffs``;
        ``bar`` (a progress bar) is advanced by the points done."""
        m = coeffs.shape[0]
        chunk = self._chunk(m)
        # up to _GROUP points per compiled call (a lax.map over chunks), the
        # groups as even as the chunks allow, so padding wastes < 1 chunk each
        num_chunks = -(-m // chunk)
        calls = -(-num_chunks // max(1, _GROUP // chunk))
        per_call = -(-num_chunks // calls)
        group = per_call * chunk
        out = []
        # one compiled shape: the last group is padded with the origin (zeros)
        for _, take, block in chunks(coeffs, group, shorten=False):
            pad = group - take
            block = jnp.asarray(block.reshape(per_call, chunk, -1), self.coeff_dtype)
            vals = _eval_points(
                self.fns,
                self.partition,
                self.variables,
                self.fixed,
                self.directions,
                block,
                self.data,
            )
            vals = np.asarray(vals, np.float64).reshape(group, -1)
            out.append(vals[: group - pad])
            if bar is not None:
                bar.update(group - pad)
        return np.concatenate(out)

    def fingerprint(self, extra: str) -> str:
        """Hash of the problem: params, directions, data, loss and metric names."""
        h = hashlib.sha256(extra.encode())
        h.update(repr(getattr(self.f, "__qualname__", type(self.f).__name__)).encode())
        h.update(repr(sorted(self.metrics)).encode())
        for tree in (self.variables, self.fixed, self.directions, self.data):
            h.update(str(jax.tree.structure(tree)).encode())
            for leaf in jax.tree.leaves(tree):
                if not hasattr(leaf, "shape"):  # not array data: its repr, never its address
                    h.update(repr(leaf).encode())
                    continue
                h.update(f"{jnp.result_type(leaf)}{jnp.shape(leaf)}".encode())
                h.update(np.asarray(_digest(jnp.asarray(leaf))).tobytes())
        return h.hexdigest()


@jit
def _digest(x: jax.Array) -> jax.Array:
    """Four weighted sums of the bits of ``x`` (modulo 2^32), computed where
    ``x`` lives: a fingerprint of its values that never gathers the array to
    one host (a data set spread over processes stays where it is). The
    weights are odd, so a change to any one entry, even of its last bit,
    always changes every sum."""
    item = jnp.dtype(x.dtype).itemsize
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    elif item >= 4:  # 64-bit entries become two 32-bit words
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    else:
        bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * item}")).astype(jnp.uint32)
    idx = jnp.arange(bits.size, dtype=jnp.uint32).reshape(bits.shape)
    return jnp.stack(
        [
            jnp.sum(bits * ((idx * jnp.uint32(c)) | jnp.uint32(1)))
            for c in (2, 97, 40503, 2654435761)
        ]
    )


def _warn_non_finite(values: np.ndarray, what: str) -> None:
    bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if bad:
        warnings.warn(
            f"{bad} of {np.size(values)} {what} values are NaN or inf (the loss diverges "
            "there?); they are kept as they are in the result.",
            RuntimeWarning,
            stacklevel=3,
        )


def slice_1d(
    f: Callable[..., jax.Array],
    params: PyTree,
    direction: PyTree,
    alphas: Sequence[float] | np.ndarray,
    *args: Any,
    batches: Iterable | None = None,
    metrics: Mapping[str, Callable] | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
) -> Slice1D:
    """The loss along a line: ``values[i] = f(params + alphas[i] * direction)``.

    Args:
        f: loss ``f(params, *args) -> scalar``; the same function object
            reuses the compilation.
        params: the centre (alpha = 0); any pytree of floating arrays. Never
            modified.
        direction: pytree like params (see ``random_direction``,
            ``eigen_directions``, ``gradient_direction``, ``interpolation``).
        alphas: 1-D array of coordinates, in any order.
        *args: data for ``f`` and the metrics.
        batches: instead of ``*args``, a re-iterable of argument tuples: each
            value is the mean over all samples, ``sum_b (size_b / N) f(., *b)``
            (same convention as ``HessianOperator``); metrics are averaged
            the same way.
        metrics: name -> function ``(params, *args) -> scalar`` evaluated at
            the same points (accuracy, a norm, ``extreme_eigenvalue_metric``).
        chunk_size: points evaluated together by ``vmap`` (bounds memory);
            chunks run one after another in a compiled ``lax.map``, up to
            256 points per call. Default: 4 (fewer if the perturbed copies
            of params would pass 64 MB); larger chunks trade cache locality
            for parallelism, which can pay on an accelerator.
        progress: show a progress bar (tqdm) over the points.

    Returns:
        A ``Slice1D`` (numpy float64 arrays). Costs one loss evaluation per
        point and batch (no HVPs, unless a metric uses them). Non-finite
        values are kept and reported with a ``RuntimeWarning``.
    """
    alphas = _coords("alphas", alphas)
    ev = _Evaluator(f, params, (direction,), args, batches, metrics, chunk_size)
    with progress_bar(alphas.size, "slice_1d", enabled=progress, unit="point") as bar:
        out = ev(alphas[:, None], bar)
    _warn_non_finite(out[:, 0], "loss")
    names = list(ev.metrics)
    return Slice1D(alphas, out[:, 0], {n: out[:, 1 + k] for k, n in enumerate(names)})


def slice_2d(
    f: Callable[..., jax.Array],
    params: PyTree,
    directions: Sequence[PyTree],
    xs: Sequence[float] | np.ndarray,
    ys: Sequence[float] | np.ndarray,
    *args: Any,
    batches: Iterable | None = None,
    metrics: Mapping[str, Callable] | None = None,
    chunk_size: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = False,
) -> Slice2D:
    """The loss over a plane: ``values[i, j] = f(params + xs[j] * d1 + ys[i] * d2)``.

    The ``np.meshgrid(xs, ys)`` convention: ``values`` has shape
    ``(len(ys), len(xs))`` and ``plt.contour(xs, ys, values)`` draws it the
    right way round (Li et al.'s tool stores (len(x), len(y)) in meshgrid
    order, which scrambles non-square grids).

    Args:
        f: loss ``f(params, *args) -> scalar``.
        params: the centre, at (0, 0); never modified.
        directions: ``(d1, d2)``, pytrees like params.
        xs: 1-D coordinates along d1 (columns of ``values``).
        ys: 1-D coordinates along d2 (rows of ``values``).
        *args: data for ``f`` and the metrics.
        batches: as in ``slice_1d``.
        metrics: as in ``slice_1d``; each gives an (ny, nx) array.
        chunk_size: as in ``slice_1d``.
        checkpoint: path of an ``.npz`` file. Finished rows (one y each) are
            written to it atomically after each row; if it exists, its rows
            are reused and the rest computed, so a crash or Ctrl-C loses
            only the row in progress. A checkpoint from another grid or
            problem (params, directions, data, loss name, metrics) raises
            ``ValueError``. The file is left in place when done.
        progress: show a progress bar (tqdm) over the grid points.

    Returns:
        A ``Slice2D``. Costs one loss evaluation per grid point and batch.
    """
    if isinstance(directions, Mapping) or len(directions) != 2:
        raise ValueError("directions must be a pair (d1, d2) of pytrees like params.")
    xs, ys = _coords("xs", xs), _coords("ys", ys)
    ev = _Evaluator(f, params, tuple(directions), args, batches, metrics, chunk_size)
    names = list(ev.metrics)
    nx, ny = xs.size, ys.size

    bar = progress_bar(nx * ny, "slice_2d", enabled=progress, unit="point")
    with bar:
        if checkpoint is None:
            gx, gy = np.meshgrid(xs, ys)  # row-major: point i * nx + j is (xs[j], ys[i])
            rows = [ev(np.stack([gx.ravel(), gy.ravel()], axis=1), bar).reshape(ny, nx, -1)]
        else:
            path = os.fspath(checkpoint)
            fingerprint = ev.fingerprint(f"{xs.tobytes().hex()}|{ys.tobytes().hex()}")
            done = np.zeros((0, nx, 1 + len(names)))
            if os.path.exists(path):
                done = load_slice_checkpoint(path, xs, ys, fingerprint, names)
            bar.update(done.shape[0] * nx)
            rows = [done]
            for i in range(done.shape[0], ny):
                rows.append(ev(np.stack([xs, np.full(nx, ys[i])], axis=1), bar)[None])
                save_slice_checkpoint(path, xs, ys, fingerprint, names, np.concatenate(rows))
    out = np.concatenate(rows)
    _warn_non_finite(out[..., 0], "loss")
    return Slice2D(xs, ys, out[..., 0], {n: out[..., 1 + k] for k, n in enumerate(names)})
