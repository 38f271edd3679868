import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrules as jr


def test_B_of_sigmoid_is_seed_000():
    x = jnp.array([-2.0, 0.0, 3.0])
    ybar = jnp.array([1.0, 2.0, -1.0])
    (y,), (xbar,) = jr.B(jr.sigmoid, (x,), (ybar,))
    s = jax.nn.sigmoid(x)
    np.testing.assert_allclose(y, s)
    np.testing.assert_allclose(xbar, s * (1 - s) * ybar)


def test_pullback_of_any_jax_function_with_two_inputs_and_two_outputs():
    def f(a, b):
        return a * b, jnp.sin(a)
    a, b = jnp.array([1.0, 2.0]), jnp.array([3.0, -1.0])
    (p, s), back = jr.pullback(f, a, b)
    abar, bbar = back(jnp.ones(2), jnp.full(2, 2.0))
    np.testing.assert_allclose(abar, b + 2 * jnp.cos(a))
    np.testing.assert_allclose(bbar, a)


def test_pullback_checks_the_cotangents():
    _, back = jr.pullback(jr.tanh, jnp.ones(3))
    with pytest.raises(TypeError, match="expected 1 cotangent"):
        back(jnp.ones(3), jnp.ones(3))
    with pytest.raises(ValueError, match=r"cotangent 0 has shape \(2,\), but output 0 has shape \(3,\)"):
        back(jnp.ones(2))


def test_B_wants_tuples():
    with pytest.raises(TypeError, match=r"B\(f, \(x,\), \(y_bar,\)\)"):
        jr.B(jr.tanh, jnp.ones(2), (jnp.ones(2),))
