"""Broadcasting arithmetic: unbroadcast, errors, integer operands."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrules as jr
from jaxrules._broadcast import unbroadcast

OPS = [jr.add, jr.subtract, jr.multiply, jr.divide]


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
def test_unbroadcastable_shapes_name_the_rule_and_both_shapes(op):
    with pytest.raises(ValueError, match=rf"{op.__name__}: cannot broadcast x with shape \(3,\), y with shape \(4,\)"):
        op(jnp.ones(3), jnp.ones(4))


def test_unbroadcast_sums_new_and_size_one_axes():
    g = jnp.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(unbroadcast(g, (1, 4)), g.sum(axis=(0, 1)).reshape(1, 4))
    np.testing.assert_array_equal(unbroadcast(g, (3, 1)), g.sum(axis=(0, 2)).reshape(3, 1))
    np.testing.assert_array_equal(unbroadcast(g, ()), g.sum())
    assert unbroadcast(g, (2, 3, 4)) is g


@pytest.mark.parametrize("op", OPS, ids=lambda f: f.__name__)
def test_python_and_integer_operands_get_no_cotangent(op):
    x = jnp.linspace(1.0, 2.0, 4)
    g = jax.grad(lambda v: jnp.sum(op(v, 3)))(x)
    ref = jax.grad(lambda v: jnp.sum(getattr(jnp, op.__name__)(v, 3)))(x)
    np.testing.assert_allclose(g, ref)
    gi = jax.grad(lambda v, k: jnp.sum(op(v, k)), argnums=(0, 1), allow_int=True)(x, jnp.arange(1, 5))
    assert gi[1].dtype == jax.dtypes.float0


def test_integer_only_operands_are_an_error():
    with pytest.raises(TypeError, match="add: at least one argument must have a floating dtype"):
        jr.add(jnp.arange(3), jnp.arange(3))


def test_divide_keeps_no_new_buffers():
    from jaxrules.testing import residual_bytes
    x, y = jnp.ones((64, 64), jnp.float32), jnp.full((64,), 2.0, jnp.float32)
    assert residual_bytes(jr.divide, x, y) == x.nbytes + y.nbytes
    assert residual_bytes(jr.add, x, y) == 0
