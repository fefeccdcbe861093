"""Gauss-Newton and empirical Fisher curvature operators.

For a loss written as ``loss(model(params, x), y)`` (model outputs, then a
loss on the outputs that is a *mean* over the samples of the batch):

* ``GGNOperator``: the generalised Gauss-Newton matrix ``J^T H_L J``, with J
  the Jacobian of the outputs w.r.t. params and ``H_L`` the Hessian of the
  loss w.r.t. the outputs (Schraudolph 2002, "Fast curvature matrix-vector
  products for second-order gradient descent"). It drops the second
  derivatives of the model from the Hessian, so it is positive semidefinite
  whenever the loss is convex in the outputs (squared error, softmax
  cross-entropy), and equals the Hessian for a model linear in params.
* ``EmpiricalFisherOperator``: ``(1/N) sum_i g_i g_i^T`` with ``g_i`` the
  gradient of sample i's loss.

Both products are compiled once per (model, loss) and shapes, with params and
data passed as arguments (never closed over), and share the operator
interface of ``HessianOperator`` (``op @ v``, ``to_dense``,
``as_linear_operator``, ``batches=``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
from jax.flatten_util import ravel_pytree

from hessian_tools.operators import (
    CurvatureOperator,
    PyTree,
    map_columns,
    require_finite,
)

__all__ = ["EmpiricalFisherOperator", "GGNOperator"]

Model = Callable[[PyTree, Any], Any]
OutputLoss = Callable[[Any, Any], jax.Array]


# --------------------------------------------------------------------------
# Products, as factories: make(operands) -> (v_flat -> C v_flat), used inside jit


def _flat_model(model: Model, params: PyTree, x: Any) -> tuple[Callable, jax.Array]:
    flat, unravel = ravel_pytree(params)
    return (lambda p: model(unravel(p), x)), flat


@functools.cache
def _ggn_factory(model: Model, loss: OutputLoss) -> Callable:
    def make(operands):
        params, x, y = operands
        fn, flat = _flat_model(model, params, x)
        out, jvp = jax.linearize(fn, flat)  # one forward pass, J v thereafter
        vjp = jax.linear_transpose(jvp, flat)  # J^T u
        loss_grad = jax.grad(lambda o: loss(o, y))

        def mv(v):
            hjv = jax.jvp(loss_grad, (out,), (jvp(v),))[1]  # H_L J v
            return vjp(hjv)[0]

        return mv

    return make


def _per_sample_losses(model: Model, loss: OutputLoss, params: PyTree, x: Any, y: Any):
    # loss of each sample alone: a batch of one, so a per-batch mean is its loss
    one = lambda xi, yi: loss(
        model(params, jax.tree.map(lambda a: a[None], xi)), jax.tree.map(lambda a: a[None], yi)
    )
    return jax.vmap(one)(x, y)


@functools.cache
def _fisher_factory(model: Model, loss: OutputLoss) -> Callable:
    def make(operands):
        params, x, y = operands
        flat, unravel = ravel_pytree(params)
        losses = lambda p: _per_sample_losses(model, loss, unravel(p), x, y)
        per_sample, jvp = jax.linearize(losses, flat)  # G v: the (N,) products g_i . v
        vjp = jax.linear_transpose(jvp, flat)  # G^T u
        count = per_sample.shape[0]

        def mv(v):
            return vjp(jvp(v) / count)[0]

        return mv

    return make


@functools.partial(jax.jit, static_argnums=0)
def _jit_matmat(make, operands, vs):
    # vs: (k, n); the linearisation is shared by the k products
    return map_columns(make(operands), vs)


@functools.partial(jax.jit, static_argnums=0)
def _jit_matvec(make, operands, v):
    return make(operands)(v)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jit_loss(model, loss, params, x, y):
    return loss(model(params, x), y)


# --------------------------------------------------------------------------
# Operators


class _OutputLossOperator(CurvatureOperator):
    """Shared data handling: ``(x, y)`` or ``batches=`` of ``(x, y)`` tuples,
    each batch weighted by ``size_b / N`` (the mean over all samples)."""

    _factory: Callable

    def __init__(
        self,
        model: Model,
        loss: OutputLoss,
        params: PyTree,
        x: Any = None,
        y: Any = None,
        *,
        batches: Iterable | None = None,
        check_finite: bool = True,
    ):
        super().__init__(params)
        self.model, self.loss = model, loss
        if batches is not None and (x is not None or y is not None):
            raise ValueError("pass the data either as x, y or as batches=, not both.")
        if batches is None and (x is None or y is None):
            raise ValueError("give the data as x and y, or as batches= of (x, y) tuples.")
        first = self._set_data(() if batches is not None else (x, y), batches)
        if len(first) != 2:
            raise ValueError(f"each batch must be an (x, y) pair, got {len(first)} items.")
        self.x, self.y = x, y
        out = jax.eval_shape(lambda p, a, b: loss(model(p, a), b), params, *first)
        if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
            raise ValueError(
                "loss(model(params, x), y) must be a scalar (the mean over the batch); got "
                f"shape {getattr(out, 'shape', type(out).__name__)}."
            )
        if check_finite:
            for _, (bx, by) in self._weighted():
                require_finite("loss", _jit_loss(model, loss, params, bx, by))
        self._make = type(self)._factory(model, loss)

    def _matvec_flat(self, v: jax.Array) -> jax.Array:
        return self._accumulate(lambda a: _jit_matvec(self._make, (self.params, *a), v))

    def _matmat_flat(self, vs: jax.Array) -> jax.Array:
        return self._accumulate(lambda a: _jit_matmat(self._make, (self.params, *a), vs))

    def jittable(self, linearize: bool = True) -> tuple[Callable, PyTree] | None:
        """``(make_matvec, operands)`` like ``HessianOperator.jittable``: inside
        jit, ``make_matvec(operands)`` gives ``v_flat -> C v_flat`` (always
        linearised). None for ``batches=`` operators."""
        del linearize
        if self.batches is not None:
            return None
        return self._make, (self.params, self.x, self.y)


class GGNOperator(_OutputLossOperator):
    """The generalised Gauss-Newton matrix ``J^T H_L J`` as a linear operator.

    ``J`` is the Jacobian of ``model(params, x)`` w.r.t. params and ``H_L``
    the Hessian of ``loss(outputs, y)`` w.r.t. the outputs (Schraudolph 2002;
    Martens 2020, "New insights and perspectives on the natural gradient
    method"). Positive semidefinite when the loss is convex in the outputs;
    equal to the Hessian when the model is linear in params. Each product
    costs about one HVP (a JVP, an output-space HVP and a VJP, after one
    shared forward pass per call).

    Args:
        model: ``model(params, x) -> outputs`` (an array or pytree). Static
            argument of the compiled product: reuse the same function object.
        loss: ``loss(outputs, y) -> scalar``, the *mean* over the batch's
            samples (e.g. mean softmax cross-entropy).
        params: the point, any pytree of floating arrays.
        x, y: inputs and targets; leading axis = samples.
        batches: instead of x and y, a re-iterable of ``(x, y)`` tuples. The
            operator is then the GGN of the mean loss over all samples:
            batch b is weighted by ``size_b / N``.
        check_finite: evaluate the loss once per batch at construction and
            raise ``FloatingPointError`` if it is NaN or inf.

    Example:
        >>> op = GGNOperator(mlp, cross_entropy, params, x, y)
        >>> op @ v  # pytree like params; op.to_dense() for small models
    """

    _factory = staticmethod(_ggn_factory)


class EmpiricalFisherOperator(_OutputLossOperator):
    """The empirical Fisher ``F = (1/N) sum_i g_i g_i^T`` as a linear operator.

    ``g_i`` is the gradient w.r.t. params of sample i's loss,
    ``loss(model(params, x_i[None]), y_i[None])`` (the loss on a batch of one;
    ``loss`` is a per-batch mean, so this is the per-sample loss), and N is
    the number of samples (over all batches). A product costs one JVP and one
    VJP through the per-sample losses, about one HVP; the per-sample
    gradients are never stored.

    Caveats (Kunstner, Balles & Hennig 2019, "Limitations of the empirical
    Fisher approximation for natural gradient descent"): the empirical Fisher
    is not the Fisher information (which samples targets from the model) nor
    a Gauss-Newton matrix; it matches the Hessian only under strong
    assumptions (a well-specified model at the optimum with plenty of data),
    is rank <= N, and away from a minimum it is dominated by the mean
    gradient's outer product. Use ``GGNOperator`` for a curvature proxy.

    Args:
        model: ``model(params, x) -> outputs``; must accept a batch of one.
        loss: ``loss(outputs, y) -> scalar``, the mean over the batch.
        params: the point, any pytree of floating arrays.
        x, y: inputs and targets; leading axis = samples.
        batches: instead of x and y, a re-iterable of ``(x, y)`` tuples;
            batch b contributes ``(1/N) sum_{i in b} g_i g_i^T``.
        check_finite: evaluate the loss once per batch at construction.
    """

    _factory = staticmethod(_fisher_factory)
