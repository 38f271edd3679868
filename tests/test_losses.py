"""Divergences: per-example results, finite gradients where optax's are NaN, labels, errors, residuals."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrules as jr
from jaxrules.testing import residual_bytes

Z = jax.random.normal(jax.random.key(0), (4, 5))
C = jnp.array([0, 3, 4, 1])


def test_kl_divergence_with_zero_targets_has_finite_gradients():
    log_p = jax.nn.log_softmax(Z)
    t = jax.nn.softmax(-Z).at[:, 0].set(0.0)
    ours = jax.grad(lambda a, b: jr.kl_divergence(a, b).sum(), argnums=(0, 1))(log_p, t)
    theirs = jax.grad(lambda a, b: optax.kl_divergence(a, b).sum(), argnums=(0, 1))(log_p, t)
    assert np.isnan(theirs[1]).any()  # optax today; the reason for the rule
    assert all(np.all(np.isfinite(g)) for g in ours)
    np.testing.assert_allclose(jr.kl_divergence(log_p, t), optax.kl_divergence(log_p, t), rtol=1e-6)
    finite = ~np.isnan(theirs[1])
    np.testing.assert_allclose(ours[1][finite], theirs[1][finite], rtol=1e-6)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)


@pytest.mark.parametrize("scale", [200.0, 1e4, 1e30])
def test_cross_entropies_are_exact_at_saturated_logits(scale):
    z = jnp.array([[scale, -scale, 0.0]], jnp.float32)
    g = jax.grad(lambda v: jr.softmax_cross_entropy_with_integer_labels(v, jnp.array([1])).sum())(z)
    np.testing.assert_allclose(g, [[1.0, -1.0, 0.0]], atol=1e-30)
    g2 = jax.grad(lambda v: jr.softmax_cross_entropy(v, jax.nn.one_hot(jnp.array([1]), 3)).sum())(z)
    np.testing.assert_allclose(g2, [[1.0, -1.0, 0.0]], atol=1e-30)
    gb = jax.grad(lambda v: jr.sigmoid_binary_cross_entropy(v, jnp.array([[0.0, 1.0, 1.0]])).sum())(z)
    np.testing.assert_allclose(gb, [[1.0, -1.0, -0.5]], atol=1e-30)
    # textbook −log(softmax(z)) differentiated by jax is NaN here
    if scale >= 200:
        textbook = jax.grad(lambda v: -jnp.log(jax.nn.softmax(v))[0, 1])(z)
        assert np.isnan(textbook).any()


def test_integer_labels_get_no_cotangent_and_no_error():
    g = jax.grad(lambda z, c: jr.softmax_cross_entropy_with_integer_labels(z, c).sum(),
                 argnums=(0, 1), allow_int=True)(Z, C)
    assert g[1].dtype == jax.dtypes.float0
    gb = jax.grad(lambda z, d: jr.sigmoid_binary_cross_entropy(z, d).sum(), argnums=(0, 1), allow_int=True)(
        Z, (Z > 0).astype(jnp.int32))
    assert gb[1].dtype == jax.dtypes.float0


def test_label_errors():
    with pytest.raises(TypeError, match=r"softmax_cross_entropy_with_integer_labels: labels must have an integer dtype"):
        jr.softmax_cross_entropy_with_integer_labels(Z, C.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"labels must have the logits' shape \(4, 5\) without the class axis -1, i.e. \(4,\), got \(5,\)"):
        jr.softmax_cross_entropy_with_integer_labels(Z, jnp.zeros(5, jnp.int32))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: logits has shape \(4, 5\) but labels has shape \(4, 4\)"):
        jr.softmax_cross_entropy(Z, jnp.ones((4, 4)))
    with pytest.raises(ValueError, match=r"squared_error: predictions has shape \(4, 5\) but targets has shape \(5,\)"):
        jr.squared_error(Z, jnp.ones(5))
    with pytest.raises(ValueError, match=r"sigmoid_binary_cross_entropy: cannot broadcast logits"):
        jr.sigmoid_binary_cross_entropy(Z, jnp.ones(3))
    with pytest.raises(ValueError, match=r"axis=2 is out of range"):
        jr.softmax_cross_entropy_with_integer_labels(Z, C, axis=2)


def test_out_of_range_label_is_nan_not_a_silent_number():
    loss = jr.softmax_cross_entropy_with_integer_labels(Z, jnp.array([0, 5, -1, 1]))
    assert np.isnan(loss[1]) and np.isnan(loss[2]) and np.isfinite(loss[0]) and np.isfinite(loss[3])


def test_losses_are_per_example():
    assert jr.softmax_cross_entropy_with_integer_labels(Z, C).shape == (4,)
    assert jr.softmax_cross_entropy(Z, jax.nn.softmax(Z)).shape == (4,)
    assert jr.kl_divergence(jax.nn.log_softmax(Z), jax.nn.softmax(Z)).shape == (4,)
    assert jr.squared_error(Z).shape == (4, 5)
    assert jr.sigmoid_binary_cross_entropy(Z, jnp.ones((4, 5))).shape == (4, 5)


def test_cross_entropies_keep_no_more_than_one_logits_sized_array():
    z = jax.random.normal(jax.random.key(1), (64, 1000), jnp.float32)
    c = jnp.arange(64) % 1000
    ours = residual_bytes(jr.softmax_cross_entropy_with_integer_labels, z, c)
    assert ours <= z.nbytes + c.nbytes + 64 * 4  # logits (the input), labels, one logsumexp per row
    d = jax.nn.softmax(z)
    ours_soft = residual_bytes(jr.softmax_cross_entropy, z, d)
    assert ours_soft <= z.nbytes + d.nbytes  # log softmax (logits-sized) and the labels
    assert ours_soft <= residual_bytes(optax.softmax_cross_entropy, z, d)


# the catalog runs every transformation on this rule; here, values, cotangents and finite differences
FEW = dict(vmap=False, scan=False, checkpoint=False, grad_grad=False, eager=False, jvp=False, fwd_over_rev=False)


def test_integer_labels_along_another_axis_and_with_a_row_mask():
    from functools import partial

    from jaxrules.testing import check_rule
    z = jax.random.normal(jax.random.key(2), (5, 3, 4))
    c = jax.random.randint(jax.random.key(3), (3, 4), 0, 5)
    check_rule(partial(jr.softmax_cross_entropy_with_integer_labels, axis=0),
               partial(optax.softmax_cross_entropy_with_integer_labels, axis=0), z, c, **FEW)
    w = jnp.array([[True, False, True, True]] * 3)[..., None] | (jnp.arange(5) == 0)
    check_rule(lambda z, c, w: jr.softmax_cross_entropy_with_integer_labels(z, c, -1, w),
               lambda z, c, w: optax.softmax_cross_entropy_with_integer_labels(z, c, where=w),
               jnp.moveaxis(z, 0, -1), c, w, **FEW)
