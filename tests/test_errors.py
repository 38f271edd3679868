"""Bad input across the public API: a ValueError or TypeError naming the rule, the argument and what
was expected, raised while tracing (so the same under jax.jit), before XLA sees anything."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrules as jr

X = jnp.ones((2, 3))
IMG = jnp.ones((2, 5, 5, 3))
Q = jnp.ones((1, 2, 2, 4))
I32 = jnp.ones(3, jnp.int32)

# (call, exception, the message must match this: rule name first, then the argument and what was expected)
BAD = {
    "non-floating input": (lambda: jr.sigmoid(I32), TypeError, r"^sigmoid: argument x must have a floating dtype.*int32"),
    "a list, not an array": (lambda: jr.tanh([1.0, 2.0]), TypeError, r"^tanh: argument x must be an array, got list"),
    "a string": (lambda: jr.relu("a"), TypeError, r"^relu: argument x must be an array, got str"),
    "array setting": (lambda: jr.leaky_relu(X, jnp.ones(3)), TypeError, r"^leaky_relu: negative_slope is a static setting"),
    "too many arguments": (lambda: jr.relu(X, 0.0, 3), TypeError, r"^relu: too many positional arguments; the signature"),
    "axis an array": (lambda: jr.softmax(X, axis=jnp.array(1)), TypeError, r"^softmax: axis"),
    "setting out of range": (lambda: jr.relu(X, grad_at_zero=2.0), ValueError, r"^relu: grad_at_zero must be <= 1"),
    "shapes that do not broadcast": (lambda: jr.add(jnp.ones(3), jnp.ones(4)), ValueError,
                                     r"^add: cannot broadcast x with shape \(3,\), y with shape \(4,\)"),
    "a dict": (lambda: jr.multiply({"a": 1.0}, 2.0), TypeError, r"^multiply: argument x must be an array"),
    "contraction mismatch": (lambda: jr.matmul(X, jnp.ones((4, 5))), ValueError, r"^matmul: contraction dimensions differ"),
    "matmul of a scalar": (lambda: jr.matmul(jnp.ones(()), jnp.ones((4, 5))), ValueError, r"^matmul: .*at least one dimension"),
    "dense W": (lambda: jr.dense(X, jnp.ones((4, 5))), ValueError, r"^dense: x has shape \(2, 3\) with 3 input features"),
    "dense b": (lambda: jr.dense(X, jnp.ones((3, 5)), jnp.ones(4)), ValueError, r"^dense: bias b must have shape \(5,\)"),
    "conv rank": (lambda: jr.conv(IMG, jnp.ones((3, 3, 3))), ValueError, r"^conv: x must have shape \(batch, \*spatial"),
    "conv channels": (lambda: jr.conv(IMG, jnp.ones((3, 3, 2, 4))), ValueError, r"^conv: x has 3 input features"),
    "conv strides": (lambda: jr.conv(IMG, jnp.ones((3, 3, 3, 4)), strides=0), ValueError, r"^conv: every entry of strides"),
    "conv strides length": (lambda: jr.conv(IMG, jnp.ones((3, 3, 3, 4)), strides=(1, 1, 1)), ValueError,
                            r"^conv: strides must be an int or a sequence of 2 ints"),
    "conv padding": (lambda: jr.conv(IMG, jnp.ones((3, 3, 3, 4)), padding="FULL"), ValueError, r"^conv: padding must be"),
    "conv window": (lambda: jr.conv(IMG, jnp.ones((7, 7, 3, 4))), ValueError, r"^conv: window \(7, 7\) .*larger"),
    "conv dilation": (lambda: jr.conv(IMG, jnp.ones((3, 3, 3, 4)), dilation=0), ValueError, r"^conv: every entry of dilation"),
    "axis out of range": (lambda: jr.softmax(X, axis=2), ValueError, r"^softmax: axis=2 is out of range .* 2 dimensions"),
    "float axis": (lambda: jr.log_softmax(X, axis=1.0), TypeError, r"^log_softmax: axis must be an int"),
    "repeated axis": (lambda: jr.logsumexp(X, axis=(0, -2)), ValueError, r"^logsumexp: axis=\(0, -2\) repeats an axis"),
    "mask shape": (lambda: jr.softmax(X, where=jnp.ones((3, 3), bool)), ValueError,
                   r"^softmax: where with shape \(3, 3\) does not broadcast to \(2, 3\)"),
    "non-boolean mask": (lambda: jr.softmax(X, where=jnp.ones((2, 3))), TypeError, r"^softmax: where must be a boolean"),
    "weights shape": (lambda: jr.logsumexp(X, b=jnp.ones(4)), ValueError, r"^logsumexp: b with shape \(4,\)"),
    "odd halves": (lambda: jr.glu(X), ValueError, r"^glu: x must have an even size along axis -1"),
    "empty max": (lambda: jr.max(jnp.ones((0, 3)), axis=0), ValueError, r"^max: cannot reduce .* zero-sized axis"),
    "window rank": (lambda: jr.max_pool(IMG, (2, 2, 2, 2, 2)), ValueError, r"^max_pool: x must have shape"),
    "window of 0": (lambda: jr.max_pool(IMG, (0, 2)), ValueError, r"^max_pool: every entry of window_shape"),
    "pool strides": (lambda: jr.avg_pool(IMG, (2, 2), strides=(0, 1)), ValueError, r"^avg_pool: every entry of strides"),
    "pool padding": (lambda: jr.max_pool(IMG, (2, 2), padding="BAD"), ValueError, r"^max_pool: padding must be"),
    "pool padding pairs": (lambda: jr.avg_pool(IMG, (2, 2), padding=((1, 1),)), ValueError, r"^avg_pool: padding needs 2"),
    "window too big": (lambda: jr.max_pool(IMG, (9, 9)), ValueError, r"^max_pool: window \(9, 9\)"),
    "window an int": (lambda: jr.max_pool(IMG, 2), ValueError, r"^max_pool: window_shape must be a tuple of ints"),
    "target shape": (lambda: jr.squared_error(X, jnp.ones(3)), ValueError, r"^squared_error: predictions has shape"),
    "distribution shape": (lambda: jr.kl_divergence(X, jnp.ones((3, 2))), ValueError, r"^kl_divergence: log_predictions"),
    "float labels": (lambda: jr.softmax_cross_entropy_with_integer_labels(X, jnp.ones(2)), TypeError,
                     r"^softmax_cross_entropy_with_integer_labels: labels must have an integer dtype"),
    "labels shape": (lambda: jr.softmax_cross_entropy_with_integer_labels(X, I32), ValueError,
                     r"^softmax_cross_entropy_with_integer_labels: labels must have the logits' shape"),
    "soft labels shape": (lambda: jr.softmax_cross_entropy(X, jnp.ones((2, 4))), ValueError,
                          r"^softmax_cross_entropy: logits has shape"),
    "binary labels shape": (lambda: jr.sigmoid_binary_cross_entropy(X, jnp.ones((3, 2))), ValueError,
                            r"^sigmoid_binary_cross_entropy: cannot broadcast logits"),
    "layer_norm scale shape": (lambda: jr.layer_norm(X, jnp.ones(4)), ValueError,
                               r"^layer_norm: scale with shape \(4,\) does not broadcast to the normalized axes \(1,\) "
                               r"of x with shape \(2, 3\)"),
    "layer_norm integer x": (lambda: jr.layer_norm(I32), TypeError, r"^layer_norm: argument x must have a floating dtype"),
    "layer_norm axis": (lambda: jr.layer_norm(X, axis=2), ValueError, r"^layer_norm: axis=2 is out of range .* 2 dimensions"),
    "layer_norm epsilon": (lambda: jr.layer_norm(X, epsilon=-1.0), ValueError, r"^layer_norm: epsilon must be >= 0"),
    "rms_norm scale shape": (lambda: jr.rms_norm(X, jnp.ones((2, 2))), ValueError,
                             r"^rms_norm: scale with shape \(2, 2\) does not broadcast"),
    "standardize algorithm": (lambda: jr.standardize(X, algorithm="exact"), ValueError,
                              r"^standardize: algorithm must be 'fast' or 'stable', got 'exact'"),
    "standardize mean shape": (lambda: jr.standardize(X, mean=jnp.ones(4)), ValueError,
                               r"^standardize: cannot broadcast x with shape \(2, 3\), mean with shape \(4,\)"),
    "standardize mask": (lambda: jr.standardize(X, where=jnp.ones((2, 3), jnp.int32)), TypeError,
                         r"^standardize: where must be a boolean mask"),
    "dropout rate": (lambda: jr.dropout(X, jax.random.key(0), 1.5), ValueError, r"^dropout: rate must be <= 1"),
    "dropout traced rate": (lambda: jax.jit(lambda r: jr.dropout(X, jax.random.key(0), r))(0.5), TypeError,
                            r"^dropout: rate is a static setting"),
    "dropout without a key": (lambda: jr.dropout(X, None, 0.5), ValueError, r"^dropout: key is None"),
    "dropout key": (lambda: jr.dropout(X, jnp.ones(2), 0.5), TypeError,
                    r"^dropout: key must be one PRNG key .* dtype float.. and shape \(2,\)"),
    "embedding float ids": (lambda: jr.embedding(X, jnp.ones(2)), TypeError,
                            r"^embedding: ids must have an integer dtype .* table with shape \(2, 3\)\), got dtype float"),
    "embedding integer table": (lambda: jr.embedding(I32, I32), TypeError,
                                r"^embedding: argument table must have a floating dtype"),
    "embedding scalar table": (lambda: jr.embedding(jnp.ones(()), I32), ValueError, r"^embedding: table must have shape"),
    "rope rank": (lambda: jr.rope(X), ValueError, r"^rope: x must have shape \(\.\.\., T, heads, head_dim\), got \(2, 3\)"),
    "rope odd head_dim": (lambda: jr.rope(jnp.ones((4, 2, 3))), ValueError,
                          r"^rope: head_dim \(the last axis of x\) must be even, got x with shape \(4, 2, 3\)"),
    "rope positions shape": (lambda: jr.rope(Q, jnp.arange(3)), ValueError,
                             r"^rope: positions must have shape \(T,\) or \(\.\.\., T\).*x has shape \(1, 2, 2, 4\) "
                             r"\(T = 2\), positions has shape \(3,\)"),
    "rope float positions": (lambda: jr.rope(Q, jnp.ones(2)), TypeError, r"^rope: positions must have an integer dtype"),
    "swiglu shapes": (lambda: jr.swiglu(jnp.ones(3), jnp.ones(4)), ValueError,
                      r"^swiglu: cannot broadcast a with shape \(3,\), b with shape \(4,\)"),
    "geglu integer b": (lambda: jr.geglu(X, I32), TypeError, r"^geglu: argument b must have a floating dtype"),
    "geglu approximate": (lambda: jr.geglu(X, X, approximate="yes"), TypeError,
                          r"^geglu: approximate is a static setting and must be a Python bool"),
    "fused labels": (lambda: jr.linear_softmax_cross_entropy(X, jnp.ones((3, 4)), jnp.ones(2)), TypeError,
                     r"^linear_softmax_cross_entropy: labels must have an integer dtype"),
    "fused W": (lambda: jr.linear_softmax_cross_entropy(X, jnp.ones((4, 4)), jnp.zeros(2, jnp.int32)), ValueError,
                r"^linear_softmax_cross_entropy: x must have shape \(N, D\) and W shape \(D, V\)"),
    "fused chunk": (lambda: jr.linear_softmax_cross_entropy(X, jnp.ones((3, 4)), jnp.zeros(2, jnp.int32), chunk_size=0),
                    ValueError, r"^linear_softmax_cross_entropy: chunk_size must be a positive int"),
    "fused reduction": (lambda: jr.linear_softmax_cross_entropy(X, jnp.ones((3, 4)), jnp.zeros(2, jnp.int32),
                                                                reduction="avg"), ValueError,
                        r"^linear_softmax_cross_entropy: reduction must be one of \('none', 'mean', 'sum'\), got 'avg'"),
    "fused smoothing": (lambda: jr.linear_softmax_cross_entropy(X, jnp.ones((3, 4)), jnp.zeros(2, jnp.int32),
                                                                label_smoothing=1.5), ValueError,
                        r"^linear_softmax_cross_entropy: label_smoothing must be <= 1"),
    "fused z_loss": (lambda: jr.linear_softmax_cross_entropy(X, jnp.ones((3, 4)), jnp.zeros(2, jnp.int32), z_loss=-1.0),
                     ValueError, r"^linear_softmax_cross_entropy: z_loss must be >= 0"),
    "fused softcap": (lambda: jr.linear_softmax_cross_entropy(X, jnp.ones((3, 4)), jnp.zeros(2, jnp.int32),
                                                              logit_softcap=0.0), ValueError,
                      r"^linear_softmax_cross_entropy: logit_softcap must be > 0"),
    "fused softcap array": (lambda: jr.linear_softmax_cross_entropy(X, jnp.ones((3, 4)), jnp.zeros(2, jnp.int32),
                                                                    logit_softcap=jnp.ones(2)), TypeError,
                            r"^linear_softmax_cross_entropy: logit_softcap is a static setting"),
    "fused where": (lambda: jr.linear_softmax_cross_entropy(X, jnp.ones((3, 4)), jnp.zeros(2, jnp.int32),
                                                            where=jnp.ones(2)), ValueError,
                    r"^linear_softmax_cross_entropy: where must be a boolean mask of shape \(2,\)"),
    "fused bias": (lambda: jr.linear_softmax_cross_entropy(X, jnp.ones((3, 4)), jnp.zeros(2, jnp.int32), jnp.ones(3)),
                   ValueError, r"^linear_softmax_cross_entropy: b must have shape \(4,\)"),
    "fused no classes": (lambda: jr.linear_softmax_cross_entropy(X, jnp.ones((3, 0)), jnp.zeros(2, jnp.int32)),
                         ValueError, r"^linear_softmax_cross_entropy: W has no columns"),
    "attention window": (lambda: jr.dot_product_attention(Q, Q, Q, local_window_size=(1,)), TypeError,
                         r"^dot_product_attention: local_window_size must be an int or a pair of ints"),
    "attention block": (lambda: jr.dot_product_attention(Q, Q, Q, block_size=(0, 4)), ValueError,
                        r"^dot_product_attention: block_size must be positive"),
    "attention implementation": (lambda: jr.dot_product_attention(Q, Q, Q, implementation="flash"), ValueError,
                                 r"^dot_product_attention: implementation must be None, 'xla' or 'cudnn'"),
    "attention lengths": (lambda: jr.dot_product_attention(Q, Q, Q, query_seq_lengths=jnp.ones(1)), ValueError,
                          r"^dot_product_attention: query_seq_lengths must be an integer array of shape \(batch,\)"),
    "attention lengths shape": (lambda: jr.dot_product_attention(Q, Q, Q, key_value_seq_lengths=jnp.ones(3, jnp.int32)),
                                ValueError, r"^dot_product_attention: key_value_seq_lengths must be an integer array"),
    "attention residual": (lambda: jr.dot_product_attention(Q, Q, Q, return_residual="yes"), TypeError,
                           r"^dot_product_attention: return_residual must be a bool"),
    "attention heads": (lambda: jr.dot_product_attention(jnp.ones((1, 2, 3, 4)), Q, Q), ValueError,
                        r"^dot_product_attention: key and value must have shape"),
    "attention dtype": (lambda: jr.dot_product_attention(Q.astype(jnp.int32), Q, Q), TypeError,
                        r"^dot_product_attention: argument query must have a floating dtype"),
    "attention scale": (lambda: jr.dot_product_attention(Q, Q, Q, scale="a"), TypeError,
                        r"^dot_product_attention: scale must be a Python number"),
    "attention mask": (lambda: jr.dot_product_attention(Q, Q, Q, mask=jnp.ones((3, 3), bool)), ValueError,
                       r"^dot_product_attention: mask with shape \(3, 3\) does not broadcast"),
    "pullback of a non-function": (lambda: jr.pullback(3, X), TypeError, r"^pullback: f must be a callable"),
    "B without tuples": (lambda: jr.B(jr.sigmoid, X, (X,)), TypeError, r"^B: primals and cotangents must be tuples"),
    "B cotangent shape": (lambda: jr.B(jr.sigmoid, (X,), (jnp.ones(3),)), ValueError,
                          r"^pullback of sigmoid: cotangent 0 has shape \(3,\), but output 0 has shape \(2, 3\)"),
    "B cotangent count": (lambda: jr.B(jr.sigmoid, (X,), (X, X)), TypeError,
                          r"^pullback of sigmoid: expected 1 cotangent\(s\), one per output, got 2"),
}


if jax.default_backend() != "gpu":  # on a GPU, implementation="cudnn" is jax.nn's cuDNN kernel
    BAD["attention cudnn off a GPU"] = (lambda: jr.dot_product_attention(Q, Q, Q, implementation="cudnn"), ValueError,
                                        r"^dot_product_attention: implementation='cudnn' needs a CUDA GPU")


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_is_a_clear_error_before_xla(case):
    call, error, pattern = BAD[case]
    with pytest.raises(error, match=pattern) as eager:
        call()
    # the same error while tracing under jit: the checks look only at shapes, dtypes and settings
    with pytest.raises(error) as traced:
        jax.jit(call)()
    assert re.search(pattern, str(traced.value)), str(traced.value)
    for e in (eager.value, traced.value):
        assert "XlaRuntimeError" not in type(e).__name__ and "HLO" not in str(e)


def test_integer_arguments_get_float0_cotangents_under_grad():
    """Labels and masks are not differentiable: with allow_int, their cotangents are float0 zeros."""
    z = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5)), jnp.float32)
    c = jnp.array([0, 4, 2, 1])
    cases = [
        (lambda z, c: jr.softmax_cross_entropy_with_integer_labels(z, c).sum(), (z, c)),
        (lambda z, c: jr.sigmoid_binary_cross_entropy(z, jnp.broadcast_to(c[:, None] % 2, z.shape)).sum(), (z, c)),
        (lambda z, c: jr.linear_softmax_cross_entropy(z, jnp.ones((5, 6), z.dtype), c).sum(), (z, c)),
        (lambda z, w: jr.softmax(z, where=w).sum(), (z, z > 0)),
    ]
    for f, args in cases:
        gz, gc = jax.grad(f, argnums=(0, 1), allow_int=True)(*args)
        assert gz.shape == z.shape and np.all(np.isfinite(gz))
        assert gc.dtype == jax.dtypes.float0 and gc.shape == args[1].shape


def test_differentiating_an_integer_input_is_jax_own_error():
    # grad of an int argument without allow_int: JAX's TypeError, not a crash inside a rule
    with pytest.raises(TypeError, match="grad requires real- or complex-valued inputs"):
        jax.grad(lambda c: jr.softmax_cross_entropy_with_integer_labels(jnp.ones((3, 4)), c).sum())(jnp.array([0, 1, 2]))
