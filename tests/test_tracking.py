"""Tracking the spectrum along training (hessian_tools.tracking): warm
starts spend fewer HVPs for the same certificate, and reuse compiled code."""

import jax
import jax.numpy as jnp
import numpy as np
from _util import TraceCounter, dense_reference, mlp_loss, mlp_problem, select_reference

import hessian_tools as ht


def test_warm_starts_along_gradient_descent_are_cheaper_and_certified():
    # float32, the default rtol 1e-4: a checkpoint's top eigenvector starts the next
    params, x, y = mlp_problem((16, 12, 4), samples=60, dtype=jnp.float32)
    as64 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float64), t)
    loss = TraceCounter(mlp_loss)
    grad = jax.jit(jax.grad(mlp_loss))
    record, cold, warm = None, [], []
    for step in range(40):
        params = jax.tree.map(lambda p, g: p - 0.5 * g, params, grad(params, x, y))
        if step % 8 == 7:
            fresh = ht.track_spectrum(loss, params, x, y, k=1, key=jax.random.PRNGKey(step))
            record = ht.track_spectrum(
                loss,
                params,
                x,
                y,
                k=1,
                previous=record,
                key=jax.random.PRNGKey(step),
                trace_matvecs=20,
            )
            dense = ht.hessian(mlp_loss, as64(params), as64(x), as64(y))
            exact = np.linalg.eigvalsh(np.asarray(dense))[-1]
            for r in (fresh, record):
                assert r.converged
                # the float32 products' own rounding comes on top of the bound
                slack = 100 * np.finfo(np.float32).eps * exact
                assert abs(float(r.values[0]) - exact) <= float(r.error_bounds[0]) + slack
            cold.append(int(fresh.num_matvecs))
            warm.append(int(record.num_matvecs) - record.trace.num_matvecs)
            if step == 7:
                traced = loss.count
    # a cold start of this small model needs 6 HVPs and its completeness check
    # 6 more. A warm start used to stop after 3-4 on a quadratic bound its
    # 3-4-column space could not support (issue 19); now the quadratic term
    # needs 6 columns of its own, and the warm start saves only where the
    # cold solve needs more than that: it must never cost more
    assert sum(warm[1:]) <= sum(cold[1:]), (warm, cold)
    assert loss.count == traced  # the later calls compiled nothing new


def test_track_spectrum_under_jit():
    params, x, y = mlp_problem((8, 6, 3), samples=30, dtype=jnp.float64)

    @jax.jit
    def measure(params, x, y):
        r = ht.track_spectrum(mlp_loss, params, x, y, k=2, trace_matvecs=10, density_matvecs=24)
        return r.values, r.error_bounds, r.trace.value, r.density.nodes

    values, bounds, tr, nodes = measure(params, x, y)
    eager = ht.track_spectrum(mlp_loss, params, x, y, k=2, trace_matvecs=10, density_matvecs=24)
    # eager start vectors are drawn on the host, under jit in the program:
    # two certified solves, within the sum of their bounds of each other and
    # each within its bound of the dense Hessian's eigenvalues
    truth = select_reference(
        np.linalg.eigvalsh(dense_reference(mlp_loss, params, x, y)), 2, "largest"
    )
    np.testing.assert_array_less(np.abs(values - eager.values), bounds + eager.error_bounds)
    for got, bound in ((values, bounds), (eager.values, eager.error_bounds)):
        np.testing.assert_array_less(np.abs(np.asarray(got) - truth), np.asarray(bound))
    np.testing.assert_allclose(tr, eager.trace.value, rtol=1e-10)
    np.testing.assert_allclose(nodes, eager.density.nodes, rtol=1e-8, atol=1e-12)
