"""dot_product_attention: every jax.nn argument against jax.nn (float32) and the plain formula (float64),
tiles that are skipped, rows that see no key, debug_infs/debug_nans, grouped heads, compiled memory.

The catalog rows (tests/test_catalog.py) run the arguments through check_rule with its
transformations and forward mode; here: combinations, tile shapes that do not divide the lengths, and
what the catalog cannot express."""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrules as jr
from jaxrules.bench import compiled
from jaxrules.catalog import attention_reference, plain_attention
from jaxrules.testing import VALUES_ONLY, check_rule, residual_bytes

RNG = np.random.default_rng(0)


def _qkv(B, T, S, N, K, H, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(s), dtype) for s in ((B, T, N, H), (B, S, K, H), (B, S, K, H)))


def _ours(**settings):
    def fn(q, k, v, bias=None, mask=None, q_len=None, kv_len=None):
        return jr.dot_product_attention(q, k, v, bias, mask, query_seq_lengths=q_len, key_value_seq_lengths=kv_len,
                                        **settings)
    return fn


def _reference(**settings):
    settings.pop("block_size", None)
    ref = attention_reference(**settings)
    return lambda q, k, v, bias=None, mask=None, q_len=None, kv_len=None: ref(q, k, v, bias, mask, q_len, kv_len)


# (settings, shapes B T S N K H, bias shape, mask kind, lengths): each argument of jax.nn with the others
CASES = [
    (dict(block_size=(4, 3)), (2, 9, 11, 4, 2, 8), (1, 4, 9, 11), "random", False),
    (dict(is_causal=True, block_size=(3, 4)), (1, 10, 10, 4, 1, 8), None, None, True),
    (dict(is_causal=True, local_window_size=(3, 2), block_size=2), (2, 9, 9, 2, 2, 4), (2, 1, 9, 1), None, False),
    (dict(local_window_size=1, block_size=(4, 4)), (1, 13, 7, 2, 1, 4), None, "random", True),
    (dict(local_window_size=(0, 3), scale=0.3), (2, 6, 8, 3, 3, 4), (2, 3, 6, 8), None, True),
    (dict(is_causal=True, return_residual=True, block_size=(2, 5)), (2, 7, 9, 4, 2, 4), None, "empty rows", True),
    (dict(return_residual=True, local_window_size=(2, 2), block_size=3), (1, 8, 8, 2, 2, 4), (1, 2, 8, 8), None, False),
]


def _args(shape, bias, mask, lengths, dtype, seed=0):
    B, T, S, N, K, H = shape
    rng = np.random.default_rng(seed)
    q, k, v = _qkv(B, T, S, N, K, H, dtype, seed)
    b = None if bias is None else jnp.asarray(rng.standard_normal(bias), dtype)
    m = None
    if mask is not None:
        m = rng.uniform(size=(B, 1, T, S)) < 0.6
        if mask == "empty rows":
            m[:, :, ::3] = False
        m = jnp.asarray(m)
    lens = (None, None)
    if lengths:
        lens = tuple(jnp.asarray(rng.integers(0, n + 1, B), jnp.int32).at[0].set(n - 1) for n in (T, S))
    return q, k, v, b, m, *lens


@pytest.mark.parametrize("case", CASES, ids=[", ".join(f"{k}={v}" for k, v in c[0].items()) for c in CASES])
def test_every_argument_against_jax_nn_float32_and_the_plain_formula_float64(case):
    settings, shape, bias, mask, lengths = case
    for dtype in (jnp.float64, jnp.float32):
        args = _args(shape, bias, mask, lengths, dtype)
        # return_residual's logsumexp has no gradient (as jax.nn's): its cotangent must be ignored
        check_rule(_ours(**settings), _reference(**settings), *args, name=f"{settings} in {dtype.__name__}",
                   **VALUES_ONLY)


def test_forward_mode_jvp_equals_the_plain_formula():
    args = _args((2, 7, 9, 4, 2, 4), (2, 4, 7, 9), "random", True, jnp.float64)
    settings = dict(is_causal=True, local_window_size=(2, 1), block_size=(3, 2))
    tangents = tuple(jnp.asarray(RNG.standard_normal(a.shape)) for a in args[:4])
    f = lambda q, k, v, b: _ours(**settings)(q, k, v, b, *args[4:])  # noqa: E731
    g = lambda q, k, v, b: _reference(**settings)(q, k, v, b, *args[4:])  # noqa: E731
    with jr.forward_mode():
        y, t = jax.jit(lambda p, t: jax.jvp(f, p, t))(args[:4], tangents)
    y_ref, t_ref = jax.jvp(g, args[:4], tangents)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(t, t_ref, rtol=1e-10, atol=1e-12)


def test_rows_that_see_no_key_give_what_jax_nn_gives():
    """jax.nn fills hidden scores with a finite number, so a row that sees no key averages all values
    uniformly (its queries, keys and bias get no gradient); rows past query_seq_lengths are zeros."""
    q, k, v = _qkv(2, 6, 5, 2, 1, 4, jnp.float32)
    mask = jnp.ones((2, 1, 6, 5), bool).at[0, 0, 2].set(False).at[1, :, :, :].set(False)
    kw = dict(query_seq_lengths=jnp.array([4, 6], jnp.int32), key_value_seq_lengths=jnp.array([3, 5], jnp.int32))
    ours, back = jax.vjp(lambda q, k, v: jr.dot_product_attention(q, k, v, mask=mask, **kw, block_size=2), q, k, v)
    ref, back_ref = jax.vjp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, **kw), q, k, v)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1, 2], jnp.repeat(v[1].mean(0), 2, axis=0), rtol=1e-5)  # uniform average
    assert np.all(ours[0, 4:] == 0)  # past the query length
    ct = jnp.asarray(RNG.standard_normal(ours.shape), jnp.float32)
    for a, b in zip(back(ct), back_ref(ct)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    out, lse = jr.dot_product_attention(q, k, v, mask=mask, **kw, return_residual=True)
    out_ref, lse_ref = jax.nn.dot_product_attention(q, k, v, mask=mask, **kw, return_residual=True)
    blank = np.abs(lse_ref) > 1e30  # jax.nn's fill + log S, for rows that see no key: the same value exactly
    assert blank.any() and np.all(lse[blank] == lse_ref[blank])
    np.testing.assert_allclose(lse, lse_ref, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["float32", "float64"])
def test_forward_and_backward_under_debug_infs_and_debug_nans(dtype):
    """Hidden scores are a finite number: no ∞ is formed, so debug_infs and debug_nans stay quiet."""
    q, k, v = _qkv(1, 5, 7, 6, 3, 4, dtype)
    mask = (jnp.arange(7) <= 3) & jnp.ones((5, 1), bool)
    mask = mask.at[2].set(False)  # a row that sees no key
    kw = dict(mask=mask[None, None], is_causal=True, query_seq_lengths=jnp.array([4]), block_size=2)
    with jax.enable_x64(True), jax.debug_infs(True), jax.debug_nans(True), \
            warnings.catch_warnings():
        warnings.simplefilter("error")
        out, grads = jax.value_and_grad(lambda q, k, v: jr.dot_product_attention(q, k, v, **kw).sum(),
                                        argnums=(0, 1, 2))(q, k, v)
        jax.block_until_ready(grads)
        out3 = jr.dot_product_attention(q[0], k[0], v[0], mask=mask)  # unbatched, eagerly
        jax.block_until_ready(out3)
    assert np.isfinite(out) and all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("how", ["is_causal", "local_window_size", "key_value_seq_lengths", "mask"])
def test_hidden_tiles_are_skipped_not_computed_then_masked(how):
    """NaN in the values of keys that a whole tile cannot see: a tile computed and then masked would
    carry it into the output (0·NaN = NaN, as jax.nn does); a skipped tile never reads it."""
    q, k, v = _qkv(1, 8, 8, 2, 1, 4, jnp.float32)
    v = v.at[:, 4:].set(jnp.nan)  # the second key tile (block 4)
    k = k.at[:, 4:].set(jnp.nan)
    kw = {"is_causal": dict(is_causal=True), "local_window_size": dict(local_window_size=(3, 0)),
          "key_value_seq_lengths": dict(key_value_seq_lengths=jnp.array([4], jnp.int32)),
          "mask": dict(mask=(jnp.arange(8) < 4)[None, None, None])}[how]
    f = lambda q, k, v: jr.dot_product_attention(q, k, v, block_size=4, **kw)  # noqa: E731
    out, back = jax.vjp(f, q, k, v)
    dq, dk, dv = back(jnp.ones_like(out))
    if how in ("is_causal", "local_window_size"):  # rows 0-3 never see keys 4+; rows 4+ do
        assert np.all(np.isfinite(out[:, :4])) and np.all(np.isfinite(dq[:, :4])), how
        assert np.all(np.isnan(out[:, 4:])), how
    else:  # no row sees them
        assert all(np.all(np.isfinite(a)) for a in (out, dq, dk[:, :4], dv[:, :4])), how


def test_query_tiles_past_the_query_length_are_skipped():
    q, k, v = _qkv(2, 8, 8, 2, 2, 4, jnp.float32)
    q = q.at[1, 4:].set(jnp.nan)
    f = lambda q, k, v: jr.dot_product_attention(q, k, v, query_seq_lengths=jnp.array([8, 4]), block_size=4)  # noqa: E731
    out, back = jax.vjp(f, q, k, v)
    dq, dk, dv = back(jnp.ones_like(out))
    # k̄ = s S̄ᵀ Q would be 0·NaN there had the tile been computed and masked
    assert np.all(out[1, 4:] == 0) and all(np.all(np.isfinite(g[1])) for g in (dk, dv))


def test_under_vmap_a_tile_is_visited_with_its_mask_where_members_differ():
    """Under jax.vmap the members share one tile state: a tile one member skips and another sees whole
    must be visited with the mask (neither skipped nor visited unmasked), and the switch must stay a
    switch (not a select of every branch)."""
    q, k, v = _qkv(3, 8, 8, 2, 1, 4, jnp.float32, seed=3)
    lens = jnp.array([[8], [4], [6]], jnp.int32)  # key tile 1 (block 4): whole, hidden, partly hidden
    qlens = jnp.array([[8], [7], [3]], jnp.int32)
    def f(fn, q, k, v):
        return jax.vmap(lambda q, k, v, l, ql: fn(q, k, v, key_value_seq_lengths=l, query_seq_lengths=ql))(
            q, k, v, lens, qlens)
    ours = lambda q, k, v: f(lambda *a, **kw: jr.dot_product_attention(*a, **kw, block_size=4), q, k, v)  # noqa: E731
    out, back = jax.vjp(ours, q, k, v)
    ref, back_ref = jax.vjp(lambda q, k, v: f(jax.nn.dot_product_attention, q, k, v), q, k, v)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    ct = jnp.asarray(RNG.standard_normal(out.shape), jnp.float32)
    for a, b in zip(back(ct), back_ref(ct)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert "conditional" in jax.jit(ours).lower(q, k, v).as_text(dialect="hlo")


def test_grouped_heads_are_not_repeated():
    """With 1 kv head for 8 query heads, XLA's temp memory is below that of 8 kv heads (the kv tiles are
    read per group; dk and dv accumulate per kv head), and below the plain formula's."""
    q = jnp.ones((1, 1024, 8, 64), jnp.float32)
    mem = {}
    for K in (1, 8):
        kv = jnp.ones((1, 1024, K, 64), jnp.float32)
        _, mem[K] = compiled(lambda q, k, v: jr.dot_product_attention(q, k, v, is_causal=True).sum(), (q, kv, kv))
    assert mem[1] <= 0.9 * mem[8], mem


def test_compiled_memory_and_residuals():
    q = jnp.ones((1, 1024, 2, 32), jnp.float32)
    _, ours = compiled(lambda q, k, v: jr.dot_product_attention(q, k, v).sum(), (q, q, q))
    _, plain = compiled(lambda q, k, v: plain_attention(q, k, v).sum(), (q, q, q))
    scores = 2 * 1024 * 1024 * 4
    assert plain >= scores and ours < scores and ours <= plain / 8, (ours, plain)  # not one T × S matrix
    # what the backward keeps: inputs, the output and one logsumexp per row
    kept = residual_bytes(lambda q, k, v: jr.dot_product_attention(q, k, v), q, q + 1, q + 2)
    assert kept <= 4 * q.nbytes + 2 * 1024 * 4


def test_implementation_and_signature():
    q, k, v = _qkv(1, 5, 5, 2, 2, 4, jnp.float32)
    a, b = (jr.dot_product_attention(q, k, v, implementation=i) for i in (None, "xla"))
    np.testing.assert_array_equal(a, b)
    ours = inspect.signature(jr.dot_product_attention).parameters
    theirs = inspect.signature(jax.nn.dot_product_attention).parameters
    assert list(ours)[: len(theirs)] == list(theirs)
    assert all(ours[n].default == theirs[n].default and ours[n].kind == theirs[n].kind for n in theirs)
    assert ours["block_size"].kind is inspect.Parameter.KEYWORD_ONLY
    # dtype and weak type as jax.nn's, residual included
    for dtype in (jnp.bfloat16, jnp.float16):
        args = tuple(a.astype(dtype) for a in (q, k, v))
        out, lse = jr.dot_product_attention(*args, return_residual=True)
        out_ref, lse_ref = jax.nn.dot_product_attention(*args, return_residual=True)
        assert (out.dtype, lse.dtype, out.shape, lse.shape) == (out_ref.dtype, lse_ref.dtype, out_ref.shape,
                                                                lse_ref.shape)
