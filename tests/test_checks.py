"""Validators (hessian_tools._checks): one message style, NumPy integers,
deprecated spellings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessian_tools import _checks


def test_check_int_accepts_numpy_integers_and_names_the_bound():
    assert _checks.check_int("k", np.int64(3), low=1) == 3
    with pytest.raises(TypeError, match=r"k must be an integer; got 2\.5"):
        _checks.check_int("k", 2.5)
    with pytest.raises(TypeError, match="integer"):
        _checks.check_int("k", True)
    with pytest.raises(ValueError, match="k must be >= 1; got 0"):
        _checks.check_int("k", 0, low=1)
    with pytest.raises(ValueError, match="k must be <= 4; got 5"):
        _checks.check_int("k", 5, high=4)


def test_choice_positive_and_key():
    assert _checks.check_choice("which", "both", ("largest", "both")) == "both"
    with pytest.raises(ValueError, match="which must be 'largest' or 'both'; got 'top'"):
        _checks.check_choice("which", "top", ("largest", "both"))
    assert _checks.check_positive("rtol", None) is None
    with pytest.raises(ValueError, match="rtol must be a positive, finite number"):
        _checks.check_positive("rtol", -1.0)
    with pytest.raises(ValueError, match="rtol"):
        _checks.check_positive("rtol", float("nan"))
    np.testing.assert_array_equal(_checks.as_key(3), jax.random.PRNGKey(3))
    np.testing.assert_array_equal(_checks.as_key(None), jax.random.PRNGKey(0))  # the default
    typed = jax.random.key(5)
    assert _checks.as_key(typed) is typed
    with pytest.raises(TypeError, match=r"PRNG key \(jax.random.key\(0\)\).*int seed; got float"):
        _checks.as_key(1.5)
    with pytest.raises(TypeError, match="got bool"):
        _checks.as_key(True)


def test_one_key_policy_across_the_library():
    # every function that takes key= accepts an int, a legacy uint32 key and a
    # typed key, and the int gives the same result as its uint32 key
    import hessian_tools as ht

    a = jnp.diag(jnp.arange(1.0, 13.0))
    loss = lambda p, a: 0.5 * p @ a @ p
    x = jnp.ones(12)
    calls = {
        "trace": lambda k: ht.trace(a, key=k, num_matvecs=6).value,
        "diagonal": lambda k: ht.diagonal(a, key=k, num_matvecs=6).value,
        "spectral_density": lambda k: (
            ht.spectral_density(a, key=k, num_matvecs=12, num_probes=2).nodes
        ),
        "lanczos": lambda k: ht.lanczos(a, 4, key=k).alphas,
        "random_direction": lambda k: ht.landscape.random_direction(
            k, {"w": jnp.ones((3, 2))}, filter_axis=-1
        )["w"],
        "block_spectra": lambda k: ht.block_spectra(loss, x, a, key=k)[0].trace.value,
        "random_symmetric": lambda k: ht.problems.random_symmetric([1.0, 2.0], key=k),
    }
    for name, call in calls.items():
        by_int = np.asarray(call(7))
        np.testing.assert_array_equal(by_int, np.asarray(call(jax.random.PRNGKey(7))), err_msg=name)
        assert np.all(np.isfinite(np.asarray(call(jax.random.key(7))))), name


def test_structure_scalar_and_finite_checks():
    with pytest.raises(ValueError, match="structure"):
        _checks.check_same_structure({"a": 1.0}, {"b": 1.0})
    with pytest.raises(ValueError, match=r"\['a'\] must have shape \(2,\)"):
        _checks.check_same_structure({"a": jnp.ones(2)}, {"a": jnp.ones(3)})
    with pytest.raises(ValueError, match="must return a scalar; got shape"):
        _checks.check_scalar_output("the loss", lambda x: x, jnp.ones(2))
    with pytest.raises(FloatingPointError, match=r"gradient \['w'\] is not finite"):
        _checks.require_finite("gradient", {"w": jnp.array([1.0, jnp.inf])})
    # under jit the values are not known: no check, no error
    jax.jit(lambda x: (_checks.require_finite("loss", x), x)[1])(jnp.nan)
    with pytest.raises(TypeError, match="floating dtype"):
        _checks.check_params({"w": jnp.arange(3)})
    with pytest.raises(ValueError, match="at least one array leaf"):
        _checks.check_params({})


# --------------------------------------------------------------------------
# Named errors: the mistake and its fix, caught when the operator is built


def _mlp_loss(params, x, y):
    pred = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"][None])
    return jnp.mean((pred - y) ** 2)


_PARAMS = {"dense": {"kernel": jnp.ones((8, 2)), "bias": jnp.zeros(2)}}
_X, _Y = jnp.ones((16, 8)), jnp.ones((16, 2))


def test_swapped_data_arguments_are_named_with_their_shapes():
    import hessian_tools as ht

    with pytest.raises(TypeError) as info:
        ht.HessianOperator(_mlp_loss, _PARAMS, _Y, _X)  # targets where inputs belong
    message = str(info.value)
    assert "x: float64[16, 2], y: float64[16, 8]" in message
    assert "inputs and targets swapped?" in message and "dot_general" in message


def test_a_missing_data_argument_names_what_the_loss_takes():
    import hessian_tools as ht

    with pytest.raises(TypeError, match=r"takes 2 data argument\(s\) after params \(x, y\); 1"):
        ht.HessianOperator(_mlp_loss, _PARAMS, _X)


def test_a_python_if_on_a_traced_value_names_jnp_where():
    import hessian_tools as ht

    def loss(params, x, y):
        value = _mlp_loss(params, x, y)
        if value > 1.0:  # a Python branch on a traced value
            return value
        return 2 * value

    with pytest.raises(TypeError, match=r"branches in Python on a traced value.*jnp\.where"):
        ht.HessianOperator(loss, _PARAMS, _X, _Y)


@pytest.mark.parametrize("item", [_X, {"x": _X, "y": _Y}], ids=["array", "dict"])
def test_batch_items_that_are_not_tuples_say_what_a_batch_is(item):
    import hessian_tools as ht

    with pytest.raises(TypeError, match=r"batches=\[\(x1, y1\), \(x2, y2\), \.\.\.\]; got items"):
        ht.HessianOperator(_mlp_loss, _PARAMS, batches=[item, item])


def test_a_wrt_that_selects_nothing_lists_the_key_paths():
    import hessian_tools as ht

    with pytest.raises(
        ValueError, match=r"paths are: \['dense'\]\['bias'\], \['dense'\]\['kernel'\]"
    ):
        ht.HessianOperator(_mlp_loss, _PARAMS, _X, _Y, wrt=lambda path: "dense1" in path)


@pytest.mark.parametrize(
    ("which", "hint"),
    [
        ("LA", "For 'LA' write which='largest'"),
        ("SA", "For 'SA' write which='smallest'"),
        ("top", "For 'top' write which='largest'"),
        ("BE", "For 'BE' write which='both'"),
        ("LM", "by magnitude"),
    ],
)
def test_other_spellings_of_which_point_to_ours(which, hint):
    import hessian_tools as ht

    with pytest.raises(ValueError, match="which must be 'largest', 'smallest' or 'both'") as info:
        ht.eigenpairs(jnp.eye(4), 1, which=which)
    assert hint in str(info.value)


def test_host_draws_follow_the_key_policy():
    # an int, its legacy key and the typed key of the same seed seed one
    # numpy stream (the solvers' host-drawn start vectors)
    draws = [
        _checks.host_rng(k).standard_normal(4)
        for k in (7, jax.random.PRNGKey(7), jax.random.key(7), np.int64(7))
    ]
    for d in draws[1:]:
        np.testing.assert_array_equal(d, draws[0])
    np.testing.assert_array_equal(
        _checks.host_rng(None).standard_normal(3), _checks.host_rng(0).standard_normal(3)
    )
    assert not np.array_equal(
        _checks.host_rng(8).standard_normal(4), draws[0]
    )  # another seed, another stream
    assert np.all(np.isfinite(_checks.host_rng(-3).standard_normal(2)))
    with pytest.raises(TypeError, match="PRNG key"):
        _checks.host_rng(True)
