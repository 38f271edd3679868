"""linear_softmax_cross_entropy: every option against optax (float32) and the plain formula (float64),
every option with every other, forward mode, masks, sharding over the vocabulary, compiled memory.

The catalog rows (tests/test_catalog.py) run each option through check_rule with its transformations;
here: combinations, sizes that are not multiples of the chunk, and what the catalog cannot express."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrules as jr
from jaxrules import cross_entropy
from jaxrules.bench import compiled
from jaxrules.catalog import linear_xent_reference
from jaxrules.testing import VALUES_ONLY, check_rule, residual_bytes

HERE = pathlib.Path(__file__).parent
RNG = np.random.default_rng(0)


def _problem(n, d, v, dtype, bias=True, masked=True, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, d)), dtype)
    W = jnp.asarray(rng.standard_normal((d, v)) / np.sqrt(d), dtype)
    labels = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    b = jnp.asarray(rng.standard_normal(v), dtype) if bias else None
    where = jnp.asarray(rng.uniform(size=n) < 0.7) if masked else None
    return x, W, labels, b, where


def _ours(**options):
    return lambda x, W, labels, b, where: jr.linear_softmax_cross_entropy(x, W, labels, b, where=where, **options)


def _reference(**options):
    chunk = options.pop("chunk_size", None)
    del chunk
    return lambda x, W, labels, b, where: linear_xent_reference(**options)(x, W, labels, b, where)


# Every pair of option values appears together in some row (a covering array over reduction, smoothing,
# z-loss, soft cap, bias, mask, chunk), so that every option meets every other.
PAIRS = [
    ("none", 0.0, 0.0, None, True, False, 5),
    ("none", 0.1, 0.01, 3.0, False, True, None),
    ("mean", 0.0, 0.01, 3.0, True, True, 7),
    ("mean", 0.1, 0.0, None, False, False, None),
    ("sum", 0.0, 0.01, None, False, True, 5),
    ("sum", 0.1, 0.0, 3.0, True, False, 7),
    ("none", 0.1, 0.0, 3.0, True, True, 7),
    ("mean", 0.0, 0.0, 3.0, False, True, 5),
    ("sum", 0.1, 0.01, None, True, True, None),
]


def _options(row):
    reduction, alpha, lam, cap, bias, masked, chunk = row
    return dict(reduction=reduction, label_smoothing=alpha, z_loss=lam, logit_softcap=cap, chunk_size=chunk), bias, masked


@pytest.mark.parametrize("row", PAIRS, ids=[f"{r[0]}-a{r[1]}-l{r[2]}-c{r[3]}-b{int(r[4])}-w{int(r[5])}-k{r[6]}"
                                            for r in PAIRS])
def test_every_option_with_every_other_float64_and_against_optax_float32(row):
    options, bias, masked = _options(row)
    for dtype, (n, d, v) in ((jnp.float64, (17, 4, 13)), (jnp.float32, (23, 8, 37))):  # not multiples of chunks
        x, W, labels, b, where = _problem(n, d, v, dtype, bias, masked)
        check_rule(_ours(**options), _reference(**options), x, W, labels, b, where, name=f"{row} in {dtype.__name__}",
                   **VALUES_ONLY)


def test_forward_mode_jvp_equals_the_plain_formulas():
    """Both designs' backward is linear in ȳ; its transpose is the JVP (for "mean": ẏ = ⟨x̄₀, ẋ⟩ + ⟨W̄₀, Ẇ⟩
    + ⟨b̄₀, ḃ⟩ with x̄₀, W̄₀, b̄₀ formed in the forward)."""
    x, W, labels, b, where = _problem(11, 3, 9, jnp.float64)
    tangents = tuple(jnp.asarray(RNG.standard_normal(a.shape)) for a in (x, W, b))
    for row in PAIRS[:4]:
        options, _, _ = _options(row)
        f = lambda x, W, b: _ours(**options)(x, W, labels, b, where)  # noqa: E731
        g = lambda x, W, b: _reference(**options)(x, W, labels, b, where)  # noqa: E731
        with jr.forward_mode():
            y, t = jax.jit(lambda p, t: jax.jvp(f, p, t))((x, W, b), tangents)
        y_ref, t_ref = jax.jvp(g, (x, W, b), tangents)
        np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12, err_msg=str(row))
        np.testing.assert_allclose(t, t_ref, rtol=1e-10, atol=1e-12, err_msg=str(row))


def test_row_blocks_of_W_bar(monkeypatch):
    """W̄'s product in row blocks (as at large D·V): values, gradients and the JVP, both designs."""
    monkeypatch.setattr(cross_entropy, "_BLOCK_VALUES", 16)
    x, W, labels, b, where = _problem(9, 8, 6, jnp.float64)
    assert cross_entropy._blocks(8, 6) == 4
    for reduction in ("none", "mean"):
        options = dict(reduction=reduction, label_smoothing=0.1, chunk_size=4)
        check_rule(_ours(**options), _reference(**options), x, W, labels, b, where, name=f"blocks, {reduction}",
                   **(VALUES_ONLY | {"jvp": True}))


def test_masked_and_invalid_rows():
    x, W, labels, b, _ = _problem(6, 3, 5, jnp.float32)
    where = jnp.array([True, False, True, False, True, True])
    loss = jr.linear_softmax_cross_entropy(x, W, labels, b, where=where, chunk_size=4)
    assert loss[1] == 0 and loss[3] == 0 and np.all(loss[where] > 0)
    gx = jax.grad(lambda x: jr.linear_softmax_cross_entropy(x, W, labels, b, where=where, reduction="mean"))(x)
    assert np.all(gx[1] == 0) and np.all(gx[3] == 0) and np.all(np.any(gx[where] != 0, axis=1))
    # a mean over no rows is 0/0 = NaN (as jnp.mean), with zero gradients
    none = jnp.zeros(6, bool)
    value, grads = jax.value_and_grad(lambda x, W: jr.linear_softmax_cross_entropy(
        x, W, labels, where=none, reduction="mean"), argnums=(0, 1))(x, W)
    assert np.isnan(value) and all(np.all(g == 0) for g in grads)
    # a label outside [0, V) gives NaN (optax too), and its gradient has no one-hot term (as optax's)
    bad = labels.at[2].set(9)
    loss = jr.linear_softmax_cross_entropy(x, W, bad, b)
    ref = optax.softmax_cross_entropy_with_integer_labels(x @ W + b, bad)
    assert np.isnan(loss[2]) and np.isnan(ref[2])
    g = jax.grad(lambda x: jr.linear_softmax_cross_entropy(x, W, bad, b, reduction="sum"))(x)
    g_ref = jax.grad(lambda x: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(x @ W + b, bad)))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)


def test_low_precision_inputs_compute_in_float32():
    x, W, labels, b, where = _problem(10, 8, 33, jnp.bfloat16)
    for reduction in ("none", "mean"):
        ours = jr.linear_softmax_cross_entropy(x, W, labels, b, where=where, reduction=reduction)
        ref = linear_xent_reference(reduction)(*(a.astype(jnp.float32) for a in (x, W)), labels,
                                               b.astype(jnp.float32), where)
        assert ours.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(ours, np.float32), ref, rtol=2e-2, atol=2e-2)


def test_compiled_memory_and_residuals():
    """XLA's compiled temp memory (deterministic): the N×V logits are never held, in either design."""
    n, d, v = 1024, 64, 4096
    x, W = jnp.ones((n, d), jnp.float32), jnp.ones((d, v), jnp.float32) * 0.01
    c = jnp.arange(n) % v
    logits = n * v * 4
    _, plain = compiled(lambda x, W: optax.softmax_cross_entropy_with_integer_labels(x @ W, c).mean(), (x, W))
    for reduction in ("none", "mean"):
        f = (lambda x, W: jr.linear_softmax_cross_entropy(x, W, c, chunk_size=128).mean()) if reduction == "none" else \
            (lambda x, W: jr.linear_softmax_cross_entropy(x, W, c, chunk_size=128, reduction="mean"))
        _, ours = compiled(f, (x, W))
        # one chunk of logits (128 × V) and W̄'s product, never the N × V logits
        assert plain >= logits and ours <= 128 * v * 4 + d * v * 4 + logits / 8, (reduction, ours, plain)
    # what "none" keeps for the backward: x, W, the labels and one logsumexp per row
    kept = residual_bytes(lambda x, W: jr.linear_softmax_cross_entropy(x, W, c), x, W)
    assert kept <= x.nbytes + W.nbytes + c.nbytes + n * 4
    # "mean" keeps x̄₀ and W̄₀ (the gradient at ȳ = 1), not x and W
    kept = residual_bytes(lambda x, W: jr.linear_softmax_cross_entropy(x, W, c, reduction="mean"), x, W)
    assert kept <= x.nbytes + W.nbytes


def test_vocabulary_parallel_over_four_devices():
    """W and b sharded over V on 4 devices: no all-gather in the compiled program, and values and
    gradients equal the one-device call (tests/vocab_parallel.py, in a subprocess: the device count is
    fixed when JAX starts)."""
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false --xla_backend_optimization_level=0")
    r = subprocess.run([sys.executable, str(HERE / "vocab_parallel.py")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "vocabulary-parallel: 3 of 3" in r.stdout, r.stdout
