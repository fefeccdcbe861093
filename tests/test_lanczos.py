"""Lanczos tridiagonalisation against dense float64 eigh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _util import TraceCounter, mlp_loss, mlp_problem, nested_params, quad_loss, sym_with_spectrum
from hypothesis import given
from hypothesis import strategies as st

import hessian_tools as ht
from hessian_tools.lanczos import lanczos
from hessian_tools.operators import HessianOperator


@given(seed=st.integers(0, 10_000), n=st.sampled_from([6, 25]))  # few shapes: few compiles
def test_full_run_reproduces_spectrum(seed, n):
    rng = np.random.default_rng(seed)
    w = np.concatenate([rng.normal(size=n - 3), [-3.0, -3.0 + 1e-9, 7.0]])  # negative, clustered
    a = sym_with_spectrum(w, seed)
    res = lanczos(a, n, key=jax.random.PRNGKey(seed))
    theta = res.ritz()[0]
    # repeated/clustered eigenvalues: a single start vector sees one copy, so
    # compare the set of Ritz values with the set of eigenvalues
    ev = np.linalg.eigvalsh(np.asarray(a))
    assert np.all(np.min(np.abs(np.asarray(theta)[:, None] - ev[None]), axis=1) < 1e-9 * 7)
    q = np.asarray(res.basis[: res.num_steps])
    np.testing.assert_allclose(q @ q.T, np.eye(res.num_steps), atol=1e-12)
    t = np.asarray(res.tridiagonal())
    np.testing.assert_allclose(q @ np.asarray(a) @ q.T, t, atol=1e-10 * 7)


def test_partial_run_extreme_ritz_values_converge():
    w = np.concatenate([[10.0, 9.0, 8.5], np.linspace(-2, 2, 297)])
    a = sym_with_spectrum(w)
    res = lanczos(a, 40)
    theta, vecs, resid = res.ritz()
    assert res.num_steps == 40 and res.num_matvecs == 40 and not res.breakdown
    np.testing.assert_allclose(np.asarray(theta)[-3:], [8.5, 9.0, 10.0], rtol=1e-10)
    assert np.all((np.asarray(theta) >= -2 - 1e-12) & (np.asarray(theta) <= 10 + 1e-12))
    # residual estimates equal true residuals (Lanczos relation)
    true = np.linalg.norm(
        np.asarray(a) @ np.asarray(vecs) - np.asarray(vecs) * np.asarray(theta), axis=0
    )
    np.testing.assert_allclose(np.asarray(resid), true, atol=1e-10)


def test_no_ghost_copies_of_outlier_float32():
    rng = np.random.default_rng(1)
    w = np.concatenate([[50.0], rng.uniform(-1, 1, 999)])
    a = sym_with_spectrum(w, 1, np.float32)
    theta = np.asarray(lanczos(a, 90).ritz()[0])
    assert np.sum(theta > 49) == 1
    assert abs(theta[-1] - 50) < 1e-4 * 50
    # the test can fail: without reorthogonalisation ghosts appear
    plain = np.asarray(lanczos(a, 90, reorthogonalize=False).ritz()[0])
    assert np.sum(plain > 49) > 1


def test_low_rank_breakdown_masks_remaining_steps():
    rng = np.random.default_rng(2)
    b = rng.normal(size=(100, 4))
    a = jnp.asarray(b @ b.T)
    res = lanczos(a, 30)
    assert res.breakdown and res.num_steps <= 6
    assert res.num_matvecs == res.num_steps
    assert np.all(np.asarray(res.alphas[res.num_steps :]) == 0)
    assert np.all(np.asarray(res.betas[res.num_steps - 1 :]) == 0)
    assert np.all(np.isfinite(np.asarray(res.basis)))
    theta = np.sort(np.asarray(res.ritz()[0]))[-4:]
    np.testing.assert_allclose(theta, np.linalg.eigvalsh(np.asarray(a))[-4:], rtol=1e-9)


def test_zero_matrix():
    res = lanczos(jnp.zeros((12, 12)), 5)
    assert res.breakdown and res.num_steps == 1
    assert np.all(np.asarray(res.alphas) == 0) and np.all(np.isfinite(np.asarray(res.basis)))
    assert float(res.ritz()[0][0]) == 0.0


def test_float64_accumulation_of_float32_operator():
    a = sym_with_spectrum(np.linspace(-1, 3, 50), 3, np.float32)
    res = lanczos(a, 10, accumulate_dtype=jnp.float64)
    assert res.alphas.dtype == jnp.float64 and res.basis.dtype == jnp.float32
    q = np.asarray(res.basis, np.float64)
    exact = np.einsum("ij,jk,ik->i", q, np.asarray(a, np.float64), q)
    np.testing.assert_allclose(np.asarray(res.alphas), exact, rtol=1e-6)


def test_hessian_operator_with_nested_params_and_v0():
    n = 30
    a = sym_with_spectrum(np.linspace(-4, 5, n), 4)
    params = nested_params(n)
    op = HessianOperator(quad_loss, params, a)
    v0 = jax.tree.map(jnp.ones_like, params)
    res = lanczos(op, n, v0=v0)
    np.testing.assert_allclose(np.sort(np.asarray(res.ritz()[0])), np.linspace(-4, 5, n), atol=1e-9)
    flat = lanczos(op, 5, v0=jnp.ones(n))
    np.testing.assert_allclose(np.asarray(flat.alphas), np.asarray(res.alphas[:5]), rtol=1e-12)


def test_new_operator_for_same_loss_does_not_recompile():
    n = 20
    a = sym_with_spectrum(np.linspace(1, 2, n), 5)
    loss = TraceCounter(quad_loss)
    lanczos(HessianOperator(loss, nested_params(n, 0), a), 6)
    traced = loss.count
    for seed in (1, 2):  # new params and data of the same shapes: no new trace
        lanczos(HessianOperator(loss, nested_params(n, seed), a * seed), 6)
    assert loss.count == traced


def test_batches_run_in_the_compiled_loop_and_agree():
    n = 20
    rng = np.random.default_rng(6)
    xs = jnp.asarray(rng.normal(size=(9, n)))

    def loss(p, x):
        return jnp.mean(jnp.tanh(x @ p) ** 2) + 0.1 * jnp.sum(p**2)

    p = jnp.asarray(rng.normal(size=n)) * 0.3
    full = lanczos(HessianOperator(loss, p, xs), 8)
    # two equal batches and a remainder: two stacked groups, weighted 4/9, 4/9, 1/9
    batched = HessianOperator(loss, p, batches=[(xs[:4],), (xs[4:8],), (xs[8:],)])
    res = lanczos(batched, 8)
    np.testing.assert_allclose(np.asarray(res.alphas), np.asarray(full.alphas), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(res.betas), np.asarray(full.betas), rtol=1e-9)


def test_nan_in_product_raises_naming_the_step():
    # the product turns NaN once the vector has a large first entry, which
    # happens at the third step from this start
    a = jnp.diag(jnp.arange(1.0, 11.0))
    mv = lambda v, a: jnp.where(jnp.abs(v[0]) > 0.3, jnp.nan, 1.0) * (a @ v)
    op = ht.MatvecOperator(mv, jnp.zeros(10), a)
    v0 = jnp.ones(10).at[0].set(0.1)
    with pytest.raises(FloatingPointError, match=r"step \d"):
        lanczos(op, 6, v0=v0)
    # |x|^1.5 has a finite value and gradient but an infinite second
    # derivative at 0
    op = HessianOperator(lambda x: jnp.sum(jnp.abs(x) ** 1.5), jnp.zeros(5))
    with pytest.raises(FloatingPointError, match="step 0"):
        lanczos(op, 3)


def test_kernel_under_jit_with_a_pytree_basis():
    n = 30
    a = sym_with_spectrum(np.linspace(-4, 5, n), 4)
    params = nested_params(n)

    @jax.jit
    def run(params, a):
        op = HessianOperator(quad_loss, params, a)
        res = lanczos(op, n, v0=jax.tree.map(jnp.ones_like, params))
        return res.alphas, res.betas, res.tree_basis, res.num_steps

    alphas, betas, basis, steps = run(params, a)
    # the basis keeps the params' structure, one leading axis per vector
    assert jax.tree.structure(basis) == jax.tree.structure(params)
    assert basis["layer"]["w"].shape == (n, 4, 5) and basis["b"].shape == (n, n - 20)
    eager = lanczos(
        HessianOperator(quad_loss, params, a), n, v0=jax.tree.map(jnp.ones_like, params)
    )
    np.testing.assert_allclose(np.asarray(alphas), np.asarray(eager.alphas), rtol=1e-12, atol=1e-12)
    assert int(steps) == eager.num_steps
    t = (
        np.diag(np.asarray(alphas))
        + np.diag(np.asarray(betas)[:-1], 1)
        + np.diag(np.asarray(betas)[:-1], -1)
    )
    np.testing.assert_allclose(np.linalg.eigvalsh(t), np.linspace(-4, 5, n), atol=1e-9)


def test_bad_input():
    a = jnp.eye(4)
    with pytest.raises(ValueError, match="num_matvecs must be >= 1"):
        lanczos(a, 0)
    with pytest.raises(ValueError, match="num_matvecs must be <= n = 4"):
        lanczos(a, 5)
    with pytest.raises(TypeError, match="integer"):
        lanczos(a, 2.5)
    with pytest.raises(ValueError, match="square"):
        lanczos(jnp.ones((3, 4)), 2)
    with pytest.raises(ValueError, match="nonzero"):
        lanczos(a, 2, v0=jnp.zeros(4))
    with pytest.raises(ValueError, match="length n = 4"):
        lanczos(a, 2, v0=jnp.ones(5))
    with pytest.raises(TypeError, match="num_steps"):  # no deprecation shims before 1.0
        lanczos(jnp.diag(jnp.arange(1.0, 5.0)), num_steps=2)
    with pytest.raises(FloatingPointError, match="NaN"):
        lanczos(a.at[0, 0].set(jnp.nan), 2)
    with pytest.raises(ValueError, match="floating"):
        lanczos(a, 2, accumulate_dtype=jnp.int32)


# --------------------------------------------------------------------------
# jaxlib 0.10.2 miscompiled HVP reductions in jitted loops on CPU (see the
# README); check the Lanczos alphas of the jitted loop against a Python loop
# of HVPs.


@pytest.mark.slow
@pytest.mark.default_xla  # a miscompilation guard
@pytest.mark.parametrize("linearize", [False, True])
def test_jitted_loop_alphas_match_python_loop_on_85k_mlp(linearize):
    params, x, y = mlp_problem()
    op = HessianOperator(mlp_loss, params, x, y)
    assert op.n >= 85_000
    res = lanczos(op, 8, linearize=linearize)
    q = np.asarray(res.basis, np.float64)
    ref = np.array(
        [q[j] @ np.asarray(op.matvec(res.basis[j]), np.float64) for j in range(res.num_steps)]
    )
    np.testing.assert_allclose(np.asarray(res.alphas, np.float64), ref, rtol=1e-4)
