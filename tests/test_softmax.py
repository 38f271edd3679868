"""softmax family: masks, fully masked rows, extreme logits, the output-only backward, residuals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrules as jr
from jaxrules.testing import residual_bytes


def _grad(f, x):
    return jax.grad(lambda v: jnp.sum(f(v) * jnp.arange(v.size, dtype=v.dtype).reshape(v.shape)))(x)


MASK = jnp.array([[True, False, True, True], [False, False, False, False]])
X = jnp.array([[1.0, 2.0, -1.0, 0.5], [3.0, -2.0, 1.0, 0.0]])


def test_fully_masked_row_gives_zeros_never_nan():
    y = jr.softmax(X, where=MASK)
    np.testing.assert_array_equal(y[1], np.zeros(4))
    np.testing.assert_array_equal(y[0, 1], 0.0)
    g = _grad(lambda v: jr.softmax(v, where=MASK), X)
    assert np.all(np.isfinite(g)) and np.all(g[1] == 0) and g[0, 1] == 0
    gl = _grad(lambda v: jnp.where(MASK, jr.log_softmax(v, where=MASK), 0), X)
    assert np.all(np.isfinite(gl)) and np.all(gl[1] == 0) and gl[0, 1] == 0
    assert np.all(np.isneginf(jr.log_softmax(X, where=MASK)[1]))
    lse = jr.logsumexp(X, axis=-1, where=MASK)
    assert np.isneginf(lse[1]) and np.isfinite(lse[0])
    gs = jax.grad(lambda v: jnp.sum(jnp.where(jnp.isfinite(lse), jr.logsumexp(v, axis=-1, where=MASK), 0)))(X)
    assert np.all(np.isfinite(gs)) and np.all(gs[1] == 0)


@pytest.mark.parametrize("scale", [200.0, 1e4, 1e30])
def test_extreme_logits_are_stable(scale):
    z = jnp.array([[scale, -scale, 0.0]], jnp.float32)
    for f in (jr.softmax, jr.log_softmax, lambda v: jr.logsumexp(v, axis=-1)):
        y = f(z)
        g = _grad(f, z)
        assert np.all(~np.isnan(y)) and np.all(np.isfinite(g)), (f, y, g)
    np.testing.assert_allclose(jr.softmax(z), [[1.0, 0.0, 0.0]], atol=1e-30)


def test_softmax_backward_needs_only_the_output():
    x = jnp.linspace(-2, 2, 12).reshape(3, 4)
    y, back = jax.vjp(jr.softmax, x)
    ybar = jnp.cos(x)
    np.testing.assert_allclose(jr.softmax_backward(ybar, y), back(ybar)[0], rtol=1e-12)
    np.testing.assert_allclose(jr.softmax_backward(ybar, y), jax.vjp(jax.nn.softmax, x)[1](ybar)[0], rtol=1e-12)


def test_softmax_and_log_softmax_keep_one_output_sized_array():
    x = jnp.ones((64, 100), jnp.float32)
    assert residual_bytes(jr.softmax, x) == x.nbytes
    assert residual_bytes(jr.log_softmax, x) == x.nbytes
    assert residual_bytes(jr.softmax, x) <= residual_bytes(jax.nn.softmax, x)


@pytest.mark.parametrize("f", [jr.softmax, jr.log_softmax, jr.logsumexp, jr.glu, jr.pair_product],
                         ids=lambda f: f.__name__)
def test_axis_out_of_range_names_rule_and_axis(f):
    with pytest.raises(ValueError, match=rf"{f.__name__}: axis=5 is out of range for an input with 2 dimensions"):
        f(jnp.ones((2, 4)), axis=5)


def test_odd_halves_and_bad_masks_are_errors():
    with pytest.raises(ValueError, match=r"glu: x must have an even size along axis -1, got shape \(2, 3\)"):
        jr.glu(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"pair_product: x must have an even size"):
        jr.pair_product(jnp.ones(5))
    with pytest.raises(TypeError, match=r"softmax: where must be a boolean mask"):
        jr.softmax(jnp.ones((2, 3)), where=jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"softmax: where with shape \(4,\) does not broadcast"):
        jr.softmax(jnp.ones((2, 3)), where=jnp.ones(4, bool))


def test_pair_product_is_seed_003s_layer():
    x = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    np.testing.assert_array_equal(jr.pair_product(x), [2.0, 12.0, 30.0])
    np.testing.assert_array_equal(jax.grad(lambda v: jr.pair_product(v).sum())(x), [2.0, 1.0, 4.0, 3.0, 6.0, 5.0])
