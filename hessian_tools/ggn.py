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

from hessian_tools._checks import check_scalar_output, is_traced, require_finite
from hessian_tools._data import Data
from hessian_tools._hessian import PyTree, wrapped_loss
from hessian_tools._operator import LinearMap
from hessian_tools._params import Partition
from hessian_tools.operators import CurvatureOperator

__all__ = ["EmpiricalFisherOperator", "GGNOperator"]

Model = Callable[[PyTree, Any], Any]
OutputLoss = Callable[[Any, Any], jax.Array]


# --------------------------------------------------------------------------
# Products: (matvec, prepare) pairs, cached per (model, loss) so that compiled
# solvers are reused across operators


# ``model`` below is the model as a function of (variables, fixed, x)
# (``Partition.wrap``); the products are taken in the variables.


def _ggn_product(model: Callable, loss: OutputLoss, variables: PyTree, fixed, x: Any, y: Any):
    out, jvp = jax.linearize(lambda p: model(p, fixed, x), variables)  # one forward pass
    vjp = jax.linear_transpose(jvp, variables)  # J^T u
    loss_grad = jax.grad(lambda o: loss(o, y))

    def mv(v):
        hjv = jax.jvp(loss_grad, (out,), (jvp(v),))[1]  # H_L J v
        return vjp(hjv)[0]

    return mv


def _per_sample_losses(model: Callable, loss: OutputLoss, variables, fixed, x: Any, y: Any):
    # loss of each sample alone: a batch of one, so a per-batch mean is its loss
    one = lambda xi, yi: loss(
        model(variables, fixed, jax.tree.map(lambda a: a[None], xi)),
        jax.tree.map(lambda a: a[None], yi),
    )
    return jax.vmap(one)(x, y)


def _fisher_product(model: Callable, loss: OutputLoss, variables: PyTree, fixed, x: Any, y: Any):
    losses = lambda p: _per_sample_losses(model, loss, p, fixed, x, y)
    per_sample, jvp = jax.linearize(losses, variables)  # G v: the (N,) products g_i . v
    vjp = jax.linear_transpose(jvp, variables)  # G^T u
    count = per_sample.shape[0]
    return lambda v: vjp(jvp(v) / count)[0]


@functools.cache
def _products(kind: Callable, model: Model, loss: OutputLoss, partition: Partition):
    wrapped = wrapped_loss(model, partition)  # the model in (variables, fixed, x)

    def matvec(v, variables, fixed, data):
        return data.mean(lambda x, y: kind(wrapped, loss, variables, fixed, x, y)(v))

    def prepare(variables, fixed, data):
        return kind(wrapped, loss, variables, fixed, *data.groups[0])

    return matvec, prepare


@functools.cache
def _composed(model: Model, loss: OutputLoss) -> Callable:
    """``loss(model(params, x), y)``, one object per (model, loss) so that
    shape checks and compiled code are cached across operators."""
    return lambda params, x, y: loss(model(params, x), y)


@functools.partial(jax.jit, static_argnums=0)  # a loss: _compile
def _mean_loss(composed, variables, fixed, data):
    return data.mean(lambda x, y: composed(variables, fixed, x, y))


# --------------------------------------------------------------------------
# Operators


class _OutputLossOperator(CurvatureOperator):
    """Shared data handling: ``(x, y)`` or ``batches=`` of ``(x, y)`` tuples,
    each batch weighted by ``size_b / N`` (the mean over all samples)."""

    _kind: Callable

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
        wrt: Any = None,
    ):
        super().__init__(params, wrt)
        self.model, self.loss = model, loss
        if batches is not None and (x is not None or y is not None):
            raise ValueError("pass the data either as x, y or as batches=, not both.")
        if batches is None and (x is None or y is None):
            raise ValueError("give the data as x and y, or as batches= of (x, y) tuples.")
        self.data = Data.create(() if batches is not None else (x, y), batches)
        first = self.data.example_args()
        if len(first) != 2:
            raise ValueError(f"each batch must be an (x, y) pair; got {len(first)} items.")
        self.x, self.y = x, y
        composed = wrapped_loss(_composed(model, loss), self.partition)
        check_scalar_output(
            "loss(model(params, x), y)",
            composed,
            self.variables,
            self.fixed,
            *first,
            fix="It must be the mean over the batch.",
        )
        if check_finite and not is_traced(self.variables, self.data):
            require_finite("loss", _mean_loss(composed, self.variables, self.fixed, self.data))

    @property
    def num_batches(self) -> int:
        return self.data.num_batches

    def linear_map(self, linearize: bool = True) -> LinearMap:
        # both products share one forward pass per call; with batches= it is
        # taken batch by batch inside the scan
        matvec, prepare = _products(type(self)._kind, self.model, self.loss, self.partition)
        share = prepare if linearize and not self.data.batched else None
        return self._linear_map(matvec, (self.variables, self.fixed, self.data), share)


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
        wrt: the block of some variables only, as in ``HessianOperator``.

    Example:
        >>> op = GGNOperator(mlp, cross_entropy, params, x, y)
        >>> op @ v  # pytree like params; op.to_dense() for small models
    """

    _kind = staticmethod(_ggn_product)


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
        wrt: the block of some variables only, as in ``HessianOperator``.
    """

    _kind = staticmethod(_fisher_product)
