"""check_rule must catch wrong rules: planted bugs in the backward, the cotangent's shape or dtype."""

from functools import partial

import jax
import jax.numpy as jnp
import pytest

import jaxrules as jr
from jaxrules.testing import check_rule

X = jnp.linspace(-2.0, 2.0, 12).reshape(3, 4)


# planted rules are plain jax.custom_vjp functions, which have no forward mode: forward checks off
NO_FORWARD = dict(jvp=False, fwd_over_rev=False)


def _rule(bwd):
    @jax.custom_vjp
    def broken_sigmoid(x):
        return jax.nn.sigmoid(x)

    def fwd(x):
        y = jax.nn.sigmoid(x)
        return y, y
    broken_sigmoid.defvjp(fwd, bwd)
    return broken_sigmoid


def test_correct_rule_passes():
    check_rule(jr.sigmoid, jax.nn.sigmoid, X)
    check_rule(_rule(lambda y, g: (g * y * (1 - y),)), jax.nn.sigmoid, X, **NO_FORWARD)


def test_planted_wrong_backward_fails_naming_rule_check_and_error():
    with pytest.raises(AssertionError, match=r"broken_sigmoid: vjp: cotangent of argument 0: largest error"):
        check_rule(_rule(lambda y, g: (g * y,)), jax.nn.sigmoid, X, **NO_FORWARD)


def test_wrong_backward_fails_finite_differences_without_a_reference_backward():
    # the reference's own pullback is wrong too; finite differences still catch the rule
    wrong = _rule(lambda y, g: (g * y,))
    with pytest.raises(AssertionError, match=r"finite differences of the VJP \(float64\): argument 0"):
        check_rule(wrong, wrong, X, jit=False, vmap=False, grad_grad=False, **NO_FORWARD)


def test_wrong_cotangent_dtype_fails():
    with pytest.raises(Exception, match=r"dtype|float"):
        check_rule(_rule(lambda y, g: ((g * y * (1 - y)).astype(jnp.float16),)), jax.nn.sigmoid,
                   X.astype(jnp.float32), **NO_FORWARD)


def test_wrong_primal_fails():
    with pytest.raises(AssertionError, match=r"primal: output"):
        check_rule(jr.tanh, jax.nn.sigmoid, X)


def test_wrong_second_derivative_fails_grad_of_grad():
    # the backward is right in value but hides its dependence on x (stop_gradient)
    @jax.custom_vjp
    def sq(x):
        return x * x

    def fwd(x):
        return sq(x), x

    def bwd(x, g):
        return (2 * jax.lax.stop_gradient(x) * g,)
    sq.defvjp(fwd, bwd)
    with pytest.raises(AssertionError, match=r"grad of grad: argument 0"):
        check_rule(sq, lambda x: x * x, X, **NO_FORWARD)


def test_settings_via_partial_and_python_scalars():
    check_rule(partial(jr.leaky_relu, negative_slope=0.2), partial(jax.nn.leaky_relu, negative_slope=0.2), X + 0.05)
    check_rule(jr.multiply, jnp.multiply, X, 3.0)


def test_dtype_sweep_catches_a_cotangent_that_loses_the_dtype():
    upcast = _rule(lambda y, g: ((g * y * (1 - y)).astype(jnp.float32),))
    check_rule(upcast, jax.nn.sigmoid, X.astype(jnp.float32), fd=False, **NO_FORWARD)  # right in float32
    with pytest.raises(AssertionError, match=r"dtype sweep \(bfloat16\): cotangent of argument 0.*dtype float32"):
        check_rule(upcast, jax.nn.sigmoid, X.astype(jnp.float32), fd=False, dtypes=(jnp.bfloat16,), **NO_FORWARD)



def test_comparison_of_nan_and_inf():
    """NaN matches NaN (where both formulas are undefined), an infinity only the same infinity."""
    nan_both = lambda x: x / jnp.where(x > 0, 0.0, 1.0) * 0  # noqa: E731  NaN where x > 0
    check_rule(lambda x: jr.multiply(x, 1.0) / jnp.where(x > 0, 0.0, 1.0) * 0, nan_both, X, fd=False, grad_grad=False)
    with pytest.raises(AssertionError, match=r"primal: output"):
        check_rule(lambda x: jnp.where(x > 1, jnp.inf, x), lambda x: jnp.where(x > 1, 1e30, x), X, fd=False)


def test_forward_checks_catch_a_wrong_forward_rule():
    """A rule whose forward-mode version is wrong (its custom_vjp is right) fails the JVP check, and
    one with a wrong second derivative in forward mode fails forward over reverse."""
    from jaxrules._rule import FORWARD

    @jax.custom_jvp
    def wrong_jvp(x):
        return jax.nn.sigmoid(x)
    wrong_jvp.defjvp(lambda p, t: (jax.nn.sigmoid(p[0]), 0.5 * t[0]))
    sometimes_wrong = lambda x: wrong_jvp(x) if FORWARD.value else jr.sigmoid(x)  # noqa: E731
    with pytest.raises(AssertionError, match=r"(jvp: tangent of the output|vjp inside forward_mode)"):
        check_rule(sometimes_wrong, jax.nn.sigmoid, X, vmap=False, scan=False)

    @jax.custom_jvp
    def flat_slope(x):
        return x * x
    flat_slope.defjvp(lambda p, t: (p[0] * p[0], 2 * jax.lax.stop_gradient(p[0]) * t[0]))
    second_wrong = lambda x: flat_slope(x) if FORWARD.value else jr.multiply(x, x)  # noqa: E731
    with pytest.raises(AssertionError, match=r"forward over reverse: argument 0"):
        check_rule(second_wrong, lambda x: x * x, X, vmap=False, scan=False, jvp=False)


def test_forward_checks_need_a_forward_rule():
    with pytest.raises(TypeError, match="forward-mode"):
        check_rule(_rule(lambda y, g: (g * y * (1 - y),)), jax.nn.sigmoid, X)
