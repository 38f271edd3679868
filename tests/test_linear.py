"""matmul, dense, conv: bad input gives errors naming the rule and the shapes; bias-free paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrules as jr


@pytest.mark.parametrize("a,b,msg", [
    ((3, 4), (5, 6), r"matmul: contraction dimensions differ: a has shape \(3, 4\).*b has shape \(5, 6\)"),
    ((4,), (3,), r"matmul: contraction dimensions differ"),
    ((2, 3, 4), (3, 4, 5), r"matmul: cannot broadcast a_batch with shape \(2,\), b_batch with shape \(3,\)"),
    ((), (3,), r"matmul: arguments must have at least one dimension"),
])
def test_matmul_shape_errors(a, b, msg):
    with pytest.raises(ValueError, match=msg):
        jr.matmul(jnp.ones(a), jnp.ones(b))


def test_dense_shape_errors():
    with pytest.raises(ValueError, match=r"dense: x has shape \(2, 3\) with 3 input features, but W has shape \(4, 5\)"):
        jr.dense(jnp.ones((2, 3)), jnp.ones((4, 5)))
    with pytest.raises(ValueError, match=r"dense: bias b must have shape \(5,\) to match W \(4, 5\), got \(4,\)"):
        jr.dense(jnp.ones((2, 4)), jnp.ones((4, 5)), jnp.ones(4))
    with pytest.raises(TypeError, match=r"dense: argument W must have a floating dtype"):
        jr.dense(jnp.ones((2, 4)), jnp.ones((4, 5), jnp.int32))


@pytest.mark.parametrize("x,W,kw,msg", [
    ((2, 5, 5, 3), (3, 3, 4, 2), {}, r"conv: x has 3 input features \(shape \(2, 5, 5, 3\)\) but W expects 4"),
    ((2, 5, 3), (3, 3, 3, 2), {}, r"conv: x must have shape \(batch, \*spatial, in_features\) with 2 spatial"),
    ((2, 2, 2, 3), (3, 3, 3, 2), {}, r"conv: window \(3, 3\) \(dilated\) is larger than the padded input \(2, 2\)"),
    ((2, 5, 5, 3), (3, 3, 3, 2), {"strides": 0}, r"conv: every entry of strides must be >= 1"),
    ((2, 5, 5, 3), (3, 3, 3, 2), {"padding": "FULL"}, r"conv: padding must be 'VALID', 'SAME' or \(low, high\) pairs"),
    ((2, 5, 5, 3), (3, 3, 3, 2), {"padding": ((1, 1),)}, r"conv: padding needs 2 \(low, high\) pairs"),
])
def test_conv_errors(x, W, kw, msg):
    with pytest.raises(ValueError, match=msg):
        jr.conv(jnp.ones(x), jnp.ones(W), None, **kw)


def test_conv_bias_shape_error():
    with pytest.raises(ValueError, match=r"conv: bias b must have shape \(2,\)"):
        jr.conv(jnp.ones((1, 4, 4, 3)), jnp.ones((2, 2, 3, 2)), jnp.ones(3))


def test_bias_free_cotangent_is_none_and_bias_cotangent_sums_the_batch():
    x, W, b = jnp.ones((6, 4)), jnp.ones((4, 3)), jnp.zeros(3)
    gx, gW, gb = jax.grad(lambda x, W, b: jr.dense(x, W, b).sum(), argnums=(0, 1, 2))(x, W, b)
    np.testing.assert_allclose(gb, np.full(3, 6.0))
    np.testing.assert_allclose(gW, np.full((4, 3), 6.0))
    gx2, gW2 = jax.grad(lambda x, W: jr.dense(x, W).sum(), argnums=(0, 1))(x, W)
    np.testing.assert_allclose(gx2, gx)


def test_linear_rules_keep_only_their_inputs():
    from jaxrules.testing import residual_bytes
    x, W, b = jnp.ones((8, 16), jnp.float32), jnp.ones((16, 4), jnp.float32), jnp.ones(4, jnp.float32)
    assert residual_bytes(jr.dense, x, W, b) == x.nbytes + W.nbytes
    xc, Wc = jnp.ones((2, 8, 8, 3), jnp.float32), jnp.ones((3, 3, 3, 5), jnp.float32)
    assert residual_bytes(lambda x, W: jr.conv(x, W, None, 1, "SAME"), xc, Wc) == xc.nbytes + Wc.nbytes


def test_mixed_dtypes_give_each_argument_its_own_cotangent_dtype():
    x, W, b = jnp.ones((2, 3), jnp.float32), jnp.ones((3, 4), jnp.float64), jnp.ones(4, jnp.float32)
    gx, gW, gb = jax.grad(lambda x, W, b: jr.dense(x, W, b).sum(), argnums=(0, 1, 2))(x, W, b)
    assert (gx.dtype, gW.dtype, gb.dtype) == (jnp.float32, jnp.float64, jnp.float32)
    xc, Wc, bc = jnp.ones((1, 4, 4, 2), jnp.float32), jnp.ones((2, 2, 2, 3), jnp.float64), jnp.ones(3, jnp.float32)
    g = jax.grad(lambda x, W, b: jr.conv(x, W, b).sum(), argnums=(0, 1, 2))(xc, Wc, bc)
    assert [v.dtype for v in g] == [jnp.float32, jnp.float64, jnp.float32]
