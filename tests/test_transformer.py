"""The transformer benchmark workload (issue 21): its top-5 and bottom-5
eigenvalues with certified bounds, against eigh of the dense float64
Hessian at the same point (the small variant, TFM-tiny)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import workloads as wl

# ~70 s on a loaded 2-core machine: a float64 dense Hessian (n = 2,148) and
# eigenpairs' compilation for a Flax NNX model; a pytest of its own on the
# other core (tests/_background.py)
pytestmark = [pytest.mark.slow, pytest.mark.other_core]


@pytest.fixture(scope="module")
def tiny():
    problem = wl.transformer_problem("TFM-tiny", cache=False)
    # float32 params cast to float64 (conftest turns float64 on), the
    # model rebuilt in float64 (its softmax too)
    params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), problem.params)
    loss64, _, rest64 = wl.transformer_loss(wl.TRANSFORMERS["TFM-tiny"], jnp.float64)
    hess = np.asarray(ht.hessian(loss64, params64, rest64, problem.args[1]))
    return problem, np.linalg.eigvalsh(hess)


def test_size(tiny):
    problem, ref = tiny
    op = ht.HessianOperator(problem.loss, problem.params, *problem.args)
    assert op.n == ref.size == wl.transformer_n(wl.TRANSFORMERS["TFM-tiny"])


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_extreme_eigenvalues_against_dense_float64(tiny, which):
    problem, ref = tiny
    op = ht.HessianOperator(problem.loss, problem.params, *problem.args)
    ep = ht.eigenpairs(op, 5, which=which, key=0)
    want = ref[::-1][:5] if which == "largest" else ref[:5]
    got, bounds = np.asarray(ep.values, np.float64), np.asarray(ep.error_bounds, np.float64)
    assert bool(ep.converged)
    # the certificate holds, with the float64 reference's own slack
    slack = np.sqrt(ref.size) * np.finfo(np.float64).eps * np.abs(ref).max()
    assert np.all(np.abs(got - want) <= bounds + slack), (got, want, bounds)
    # and it is a float32 answer: relative to the spectral norm, 1e-3 at worst
    assert np.all(np.abs(got - want) <= 1e-3 * np.abs(ref).max())
