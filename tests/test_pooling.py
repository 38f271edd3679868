"""max and the pools: ties go to the first maximum in row-major order; errors; residuals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxrules as jr
from jaxrules.testing import residual_bytes


def test_max_ties_go_to_the_first_in_row_major_order():
    x = jnp.array([[1.0, 3.0, 3.0], [3.0, 0.0, 3.0]])
    g = jax.grad(lambda v: jr.max(v))(x)
    np.testing.assert_array_equal(g, [[0, 1, 0], [0, 0, 0]])
    g0 = jax.grad(lambda v: jr.max(v, axis=0).sum())(x)
    np.testing.assert_array_equal(g0, [[0, 1, 1], [1, 0, 0]])
    g1 = jax.grad(lambda v: jr.max(v, axis=1).sum())(x)
    np.testing.assert_array_equal(g1, [[0, 1, 0], [1, 0, 0]])
    # jax.grad of jnp.max splits ties instead: why the catalog samples tie-free inputs
    assert not np.array_equal(jax.grad(lambda v: jnp.max(v))(x), g)


def test_max_pool_ties_go_to_the_first_in_each_window():
    x = jnp.array([[1.0, 1.0, 2.0, 0.0],
                   [1.0, 1.0, 2.0, 2.0],
                   [0.0, 5.0, 7.0, 7.0],
                   [5.0, 0.0, 7.0, 7.0]])[None, :, :, None]
    g = jax.grad(lambda v: jr.max_pool(v, (2, 2)).sum())(x)[0, :, :, 0]
    np.testing.assert_array_equal(g, [[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(jr.max_pool(x, (2, 2))[0, :, :, 0], [[1, 2], [5, 7]])


def test_overlapping_windows_accumulate():
    x = jnp.array([0.0, 5.0, 1.0, 2.0, 0.0])[None, :, None]
    g = jax.grad(lambda v: jr.max_pool(v, (3,), strides=(1,)).sum())(x)[0, :, 0]
    np.testing.assert_array_equal(g, [0, 2, 0, 1, 0])


def test_pool_without_batch_axis_and_nan():
    x = jnp.arange(16.0).reshape(4, 4, 1)
    np.testing.assert_array_equal(jr.max_pool(x, (2, 2))[..., 0], [[5, 7], [13, 15]])
    xn = x.at[0, 0, 0].set(jnp.nan)
    assert np.isnan(jr.max_pool(xn, (2, 2))[0, 0, 0])
    assert np.isnan(jr.avg_pool(xn, (2, 2))[0, 0, 0])


@pytest.mark.parametrize("f", [jr.max_pool, jr.avg_pool], ids=lambda f: f.__name__)
def test_pool_errors(f):
    name = f.__name__
    with pytest.raises(ValueError, match=rf"{name}: window \(5, 5\) \(dilated\) is larger than the padded input \(4, 4\)"):
        f(jnp.ones((1, 4, 4, 1)), (5, 5))
    with pytest.raises(ValueError, match=rf"{name}: x must have shape \(batch, \*spatial, features\)"):
        f(jnp.ones((4,)), (2, 2))
    with pytest.raises(ValueError, match=rf"{name}: every entry of strides must be >= 1"):
        f(jnp.ones((1, 4, 4, 1)), (2, 2), strides=(0, 1))
    with pytest.raises(ValueError, match=rf"{name}: padding must be"):
        f(jnp.ones((1, 4, 4, 1)), (2, 2), padding="FULL")


def test_max_errors():
    with pytest.raises(ValueError, match=r"max: axis=2 is out of range"):
        jr.max(jnp.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match=r"max: cannot reduce x of shape \(0, 3\) over a zero-sized axis"):
        jr.max(jnp.ones((0, 3)))


def test_max_pool_keeps_less_than_jax_autodiff_of_reduce_window():
    x = jax.random.normal(jax.random.key(0), (8, 32, 32, 16), jnp.float32)

    def reference(v):
        return lax.reduce_window(v, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    ours, theirs = residual_bytes(lambda v: jr.max_pool(v, (2, 2)), x), residual_bytes(reference, x)
    assert ours <= theirs, (ours, theirs)
    assert ours == x.size // 4 * 4  # one int32 index per output element
    assert residual_bytes(lambda v: jr.avg_pool(v, (2, 2)), x) == 0
