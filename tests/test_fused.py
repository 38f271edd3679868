"""Fused rules: float32 against jax.nn / optax, masks, fully masked rows, errors, compiled memory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrules as jr
from jaxrules.bench import compiled
from jaxrules.catalog import plain_attention
from jaxrules.testing import VALUES_ONLY, check_rule, residual_bytes

K = jax.random.split(jax.random.key(0), 8)
Q32 = jax.random.normal(K[0], (2, 9, 4, 8), jnp.float32)
KV32 = jax.random.normal(K[1], (2, 11, 2, 8), jnp.float32), jax.random.normal(K[2], (2, 11, 2, 8), jnp.float32)


def test_attention_float32_against_jax_nn():
    bias = jax.random.normal(K[3], (1, 4, 9, 11), jnp.float32)
    mask = jax.random.bernoulli(K[4], 0.7, (2, 1, 9, 11)).at[..., 0].set(True)
    for blk in (4, 11, 256):  # values and cotangents in float32 (the transformations ran in float64)
        check_rule(lambda q, k, v, b, m: jr.dot_product_attention(q, k, v, b, m, block_size=blk),
                   jax.nn.dot_product_attention, Q32, *KV32, bias, mask, name=f"attention block {blk}",
                   **VALUES_ONLY)
    check_rule(lambda q, k, v: jr.dot_product_attention(q, k, v, is_causal=True, scale=0.2, block_size=4),
               lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=0.2),
               Q32, *(a[:, :9] for a in KV32), name="causal attention",
               **VALUES_ONLY)


def test_attention_fully_masked_rows_give_zeros_not_nan():
    mask = jnp.ones((2, 1, 9, 11), bool).at[0, 0, 3].set(False)
    out = jr.dot_product_attention(Q32, *KV32, mask=mask, block_size=4)
    assert np.all(out[0, 3] == 0) and np.all(np.isfinite(out))
    grads = jax.grad(lambda q, k, v: jr.dot_product_attention(q, k, v, mask=mask, block_size=4).sum(),
                     argnums=(0, 1, 2))(Q32, *KV32)
    assert all(np.all(np.isfinite(g)) for g in grads) and np.all(grads[0][0, 3] == 0)
    # elsewhere it is the plain formula
    np.testing.assert_allclose(out[1], plain_attention(Q32, *KV32, mask=mask)[1], rtol=1e-5, atol=1e-6)


def test_attention_errors():
    with pytest.raises(ValueError, match=r"dot_product_attention: key and value must have shape"):
        jr.dot_product_attention(Q32, KV32[0][..., :4], KV32[1])
    with pytest.raises(ValueError, match=r"dot_product_attention: mask with shape \(3, 3\) does not broadcast"):
        jr.dot_product_attention(Q32, *KV32, mask=jnp.ones((3, 3), bool))
    with pytest.raises(TypeError, match=r"dot_product_attention: mask must be a boolean array"):
        jr.dot_product_attention(Q32, *KV32, mask=jnp.ones((9, 11)))
    with pytest.raises(ValueError, match=r"block_size must be a positive int"):
        jr.dot_product_attention(Q32, *KV32, block_size=0)


def test_linear_xent_float32_against_optax_with_sizes_not_multiples_of_the_chunk():
    x = jax.random.normal(K[5], (37, 16), jnp.float32)
    W = jax.random.normal(K[6], (16, 101), jnp.float32) * 0.3
    c = jax.random.randint(K[7], (37,), 0, 101)
    b = jnp.linspace(-1, 1, 101, dtype=jnp.float32)
    for chunk in (7, 32, 101, None):
        check_rule(lambda x, W, c, b: jr.linear_softmax_cross_entropy(x, W, c, b, chunk_size=chunk),
                   lambda x, W, c, b: optax.softmax_cross_entropy_with_integer_labels(x @ W + b, c),
                   x, W, c, b, name=f"linear xent chunk {chunk}",
                   **VALUES_ONLY)


def test_linear_xent_masked_rows_have_zero_loss_and_gradient():
    x, W = jnp.ones((4, 3)), jnp.ones((3, 5))
    where = jnp.array([True, False, True, False])
    loss = jr.linear_softmax_cross_entropy(x, W, jnp.array([0, 1, 2, 3]), where=where, chunk_size=2)
    assert loss[1] == 0 and loss[3] == 0 and loss[0] > 0
    gx = jax.grad(lambda x: jr.linear_softmax_cross_entropy(x, W * jnp.arange(5.0), jnp.array([0, 1, 2, 3]),
                                                            where=where, chunk_size=2).sum())(x)
    assert np.all(gx[1] == 0) and np.all(gx[3] == 0) and np.any(gx[0] != 0)


def test_linear_xent_errors():
    x, W = jnp.ones((4, 3)), jnp.ones((3, 5))
    with pytest.raises(ValueError, match=r"linear_softmax_cross_entropy: x must have shape \(N, D\) and W shape"):
        jr.linear_softmax_cross_entropy(x, jnp.ones((4, 5)), jnp.zeros(4, jnp.int32))
    with pytest.raises(TypeError, match=r"labels must have an integer dtype"):
        jr.linear_softmax_cross_entropy(x, W, jnp.zeros(4))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        jr.linear_softmax_cross_entropy(x, W, jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int"):
        jr.linear_softmax_cross_entropy(x, W, jnp.zeros(4, jnp.int32), chunk_size=0)


def test_fused_rules_never_hold_the_big_matrix():
    """XLA's compiled temp memory (deterministic): the logits / scores are never materialised."""
    n, d, v = 512, 64, 4096
    x, W = jnp.ones((n, d), jnp.float32), jnp.ones((d, v), jnp.float32) * 0.01
    c = jnp.arange(n) % v
    logits_bytes = n * v * 4
    _, ours = compiled(lambda x, W: jr.linear_softmax_cross_entropy(x, W, c, chunk_size=256).mean(), (x, W))
    _, plain = compiled(lambda x, W: optax.softmax_cross_entropy_with_integer_labels(x @ W, c).mean(), (x, W))
    assert plain >= logits_bytes and ours <= logits_bytes / 4, (ours, plain)
    q = jnp.ones((1, 1024, 2, 32), jnp.float32)
    _, ours_a = compiled(lambda q, k, v: jr.dot_product_attention(q, k, v, block_size=128).sum(), (q, q, q))
    _, plain_a = compiled(lambda q, k, v: plain_attention(q, k, v).sum(), (q, q, q))
    scores = 2 * 1024 * 1024 * 4
    assert plain_a >= scores and ours_a < scores and ours_a <= plain_a / 8, (ours_a, plain_a)  # not one T×S matrix
    # what the backward keeps: inputs, the output and one logsumexp per row
    assert residual_bytes(lambda x, W: jr.linear_softmax_cross_entropy(x, W, c), x, W) <= x.nbytes + W.nbytes + c.nbytes + n * 4
    kept = residual_bytes(lambda q, k, v: jr.dot_product_attention(q, k, v), q, q + 1, q + 2)
    assert kept <= 4 * q.nbytes + 2 * 1024 * 4
