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
    with pytest.raises(ValueError, match="key must be a PRNG key; got None"):
        _checks.as_key(None)


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
