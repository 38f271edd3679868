"""dropout, embedding, rope, swiglu, geglu: the edge cases of the issue (rate 0 and 1, the same mask for
the same key under every transformation, ids out of range, repeated ids), independent properties of
rope, the gates' extremes, the forward-mode twin, and the blocks on 4 devices. Values and cotangents
on random shapes are in tests/test_catalog.py and tests/test_properties.py; residual targets in
tests/test_normalization.py."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrules as jr
from jaxrules import catalog
from test_normalization import check_forward_twin

F32 = jnp.float32
HERE = pathlib.Path(__file__).parent
ROWS = [r for r in catalog.RULES if r.module == "transformer"]
X = jnp.asarray(np.random.default_rng(0).standard_normal((64, 32)), F32)
KEY = jax.random.key(0)


def _vjp(f, *args):
    y, back = jax.vjp(f, *args)
    return y, back


# --- dropout ---------------------------------------------------------------------------------

def test_dropout_rate_0_and_inference_are_the_identity():
    for call in (lambda x: jr.dropout(x, KEY, 0.0), lambda x: jr.dropout(x, None, 0.5, training=False),
                 lambda x: jr.dropout(x, None, 0)):
        y, back = _vjp(call, X)
        np.testing.assert_array_equal(y, X)
        np.testing.assert_array_equal(back(2 * X)[0], 2 * X)


def test_dropout_rate_1_returns_zeros_and_a_zero_gradient():
    """Documented choice: rate 1 drops everything (as flax and PyTorch), it does not raise."""
    y, back = _vjp(lambda x: jr.dropout(x, KEY, 1.0), X)
    np.testing.assert_array_equal(y, np.zeros(X.shape))
    np.testing.assert_array_equal(back(jnp.ones_like(X))[0], np.zeros(X.shape))


def test_dropout_keeps_a_fraction_and_scales_it():
    x = jnp.ones((400, 250), F32)
    y = np.asarray(jr.dropout(x, KEY, 0.3))
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.005, kept.mean()
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)


def test_dropout_mask_depends_on_the_key_alone_under_jit_vmap_and_scan():
    """The same key gives the same mask (so the backward, which draws it again, matches the forward);
    another key gives another mask. Each transformed call is compared with the plain call on its member."""
    xs = jnp.stack([X, 2 * X, -X])
    keys = jax.random.split(KEY, 3)
    g = jnp.ones_like(X)

    def drop(x, k):
        return jr.dropout(x, k, 0.5)

    def grad(x, k):
        return jax.vjp(lambda x: drop(x, k), x)[1](g)[0]

    @jax.jit
    def run(xs, keys):
        return {
            "plain": [drop(x, KEY) for x in xs], "by key": [drop(X, k) for k in keys],
            "plain grad": [grad(x, KEY) for x in xs],
            "vmap": jax.vmap(drop, (0, None))(xs, KEY), "vmap over keys": jax.vmap(drop, (None, 0))(X, keys),
            "scan": jax.lax.scan(lambda c, x: (c, drop(x, KEY)), None, xs)[1],
            "vmap grad": jax.vmap(grad, (0, None))(xs, KEY),
            "scan grad": jax.lax.scan(lambda c, x: (c, grad(x, KEY)), None, xs)[1],
        }
    out = run(xs, keys)
    eager = drop(X, KEY)
    np.testing.assert_array_equal(out["plain"][0], eager)
    for k in range(3):
        for name in ("vmap", "scan"):
            np.testing.assert_array_equal(out[name][k], out["plain"][k], err_msg=name)
        np.testing.assert_array_equal(out["vmap over keys"][k], out["by key"][k])
        for name in ("vmap grad", "scan grad"):  # the backward's mask is the forward's
            np.testing.assert_array_equal(out[name][k], out["plain grad"][k], err_msg=name)
        np.testing.assert_array_equal(np.asarray(out["plain grad"][k]) != 0, np.asarray(out["plain"][k]) != 0)
    assert not np.array_equal(np.asarray(out["by key"][1]) != 0, np.asarray(out["by key"][0]) != 0)


def test_dropout_key_gets_no_cotangent():
    for key in (KEY, jax.random.PRNGKey(0)):  # a typed key and a raw uint32 key
        _, back = jax.vjp(lambda x, k: jr.dropout(x, k, 0.5), X, key)
        gk = back(jnp.ones_like(X))[1]
        assert gk.dtype == jax.dtypes.float0 and gk.shape == key.shape


# --- embedding -------------------------------------------------------------------------------

TABLE = jnp.asarray(np.random.default_rng(1).standard_normal((5, 3)), F32)


def test_embedding_repeated_ids_accumulate():
    ids = jnp.asarray([[0, 4, 4], [4, 1, 0]])
    g = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3, 3)), F32)
    _, back = _vjp(lambda t: jr.embedding(t, ids), TABLE)
    want = np.zeros((5, 3), np.float32)
    np.add.at(want, np.asarray(ids).reshape(-1), np.asarray(g).reshape(-1, 3))
    np.testing.assert_allclose(back(g)[0], want, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.uint8, jnp.uint32])
def test_embedding_ids_out_of_range_follow_jnp_take(dtype):
    """Negative ids in [−V, 0) count from the end; ids outside [−V, V) give NaN rows (jnp.take's default
    fill) and add nothing to the table's cotangent; the ids get a float0 cotangent."""
    raw = [0, 4, 5, 100, -1, -5, -6] if jnp.issubdtype(dtype, jnp.signedinteger) else [0, 4, 5, 100, 255]
    if dtype == jnp.uint32:
        raw.append(2 ** 32 - 1)
    ids = jnp.asarray(raw, dtype)
    y, back = _vjp(jr.embedding, TABLE, ids)
    want = jnp.take(TABLE, ids, axis=0)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_array_equal(np.nan_to_num(y), np.nan_to_num(want))
    g = jnp.ones_like(y)
    gt, gi = back(g)
    np.testing.assert_array_equal(gt, jax.vjp(lambda t: jnp.take(t, ids, axis=0), TABLE)[1](g)[0])
    assert gi.dtype == jax.dtypes.float0 and gi.shape == ids.shape


# --- rope ------------------------------------------------------------------------------------

Q = jnp.asarray(np.random.default_rng(3).standard_normal((2, 6, 3, 8)), F32)


def test_rope_default_positions_and_broadcast_positions():
    t = Q.shape[1]
    y, *others = jax.jit(lambda q: (jr.rope(q), jr.rope(q, jnp.arange(t)), jr.rope(q, jnp.broadcast_to(jnp.arange(t), (2, t))),
                                    jr.rope(q, jnp.arange(t)[None])))(Q)
    for o in others:
        np.testing.assert_allclose(o, y, rtol=1e-6)


def test_rope_scores_depend_on_relative_positions_only():
    """⟨rope(q)_t, rope(k)_s⟩ is a function of t − s: shifting every position by 37 changes no score; the
    rotation keeps each pair's norm."""
    k = Q[::-1]
    pos = jnp.arange(6)

    @jax.jit
    def scores(shift):
        return jnp.einsum("bthd,bshd->bhts", jr.rope(Q, pos + shift), jr.rope(k, pos + shift))
    np.testing.assert_allclose(scores(37), scores(0), rtol=2e-4, atol=2e-4)
    h = Q.shape[-1] // 2
    y = jr.rope(Q, pos + 11)
    np.testing.assert_allclose(y[..., :h] ** 2 + y[..., h:] ** 2, Q[..., :h] ** 2 + Q[..., h:] ** 2, rtol=1e-5)


def test_rope_backward_is_the_rotation_by_minus_the_angle():
    pos = jnp.asarray(np.random.default_rng(4).integers(0, 500, (2, 6)), jnp.int32)
    g = Q[::-1] * 3
    gx, want = jax.jit(lambda q, g: (_vjp(lambda q: jr.rope(q, pos), q)[1](g)[0], jr.rope(g, -pos)))(Q, g)
    np.testing.assert_allclose(gx, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_rope_and_gates_compute_half_floats_in_float32(dtype):
    q = Q.astype(dtype)
    pos = jnp.arange(6) + 1000  # angles that bfloat16 could not hold
    y = jr.rope(q, pos)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, jr.rope(q.astype(F32), pos).astype(dtype))
    a, b = X[:4].astype(dtype), X[4:8].astype(dtype)
    for f in (jr.swiglu, jr.geglu):
        out, back = _vjp(f, a, b)
        assert out.dtype == dtype and all(c.dtype == dtype for c in back(jnp.ones_like(out)))
        np.testing.assert_array_equal(out, f(a.astype(F32), b.astype(F32)).astype(dtype))


# --- swiglu / geglu --------------------------------------------------------------------------

@pytest.mark.parametrize("f,ref", [(jr.swiglu, jax.nn.silu), (jr.geglu, jax.nn.gelu),
                                   (lambda a, b: jr.geglu(a, b, approximate=False),
                                    lambda a: jax.nn.gelu(a, approximate=False))], ids=["swiglu", "geglu", "geglu-exact"])
def test_gates_at_the_extremes(f, ref):
    """Far out and at ±inf the slope of the activation is 0 or 1 and the gradients finite; NaN stays NaN."""
    a = jnp.asarray([-jnp.inf, -1e4, -100.0, 100.0, 1e4, jnp.inf, jnp.nan], F32)
    b = jnp.full_like(a, 2.0)

    @jax.jit
    def run(a, b):
        y, back = _vjp(f, a, b)
        return y, back(jnp.ones_like(y)), ref(a)
    y, (ga, gb), want = run(a, b)
    np.testing.assert_array_equal(ga[:-1], [0, 0, 0, 2, 2, 2])
    np.testing.assert_array_equal(gb[1:-1], want[1:-1])
    assert gb[0] == 0 or np.isnan(want[0]) and np.isnan(gb[0]), (gb[0], want[0])  # the limit 0 (jax.nn: NaN for exact gelu)
    assert np.isnan(y[-1]) and np.isnan(ga[-1]) and np.isnan(gb[-1])


def test_geglu_exact_form_keeps_its_digits_in_the_negative_tail():
    """From −12 to −3, where a·(1 + erf(a/√2))/2 cancels: value and slope against float64 in the mixed
    unit |y − y*| / (ulp(y*) + |y*′|·ulp(a)) (an ulp of the result plus what an ulp of the input moves it):
    within 4 units, and never worse than jax.nn.gelu(approximate=False)'s by more than one."""
    a = jnp.linspace(-12, -3, 91, dtype=F32)

    @jax.jit
    def run(a):
        ours = jax.vjp(lambda a: jr.geglu(a, jnp.ones_like(a), approximate=False), a)
        theirs = jax.vjp(lambda a: jax.nn.gelu(a, approximate=False), a)
        return [(y, back(jnp.ones_like(a))[0]) for y, back in (ours, theirs)]
    (y, g), (yj, gj) = run(a)
    with jax.enable_x64(True):
        f = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))
        a64 = a.astype(jnp.float64)
        y64, g64, h64 = (np.asarray(v) for v in (jax.nn.gelu(a64, approximate=False), f(a64),
                                                   jax.vmap(jax.grad(jax.grad(lambda v: jax.nn.gelu(v, False))))(a64)))

    def units(u, exact, slope):
        ulp = lambda v: np.spacing(np.abs(v).astype(np.float32)).astype(np.float64)  # noqa: E731
        return np.abs(np.asarray(u, np.float64) - exact) / (ulp(exact) + np.abs(slope) * ulp(np.asarray(a)))
    for ours, theirs, exact, slope in ((y, yj, y64, g64), (g, gj, g64, h64)):
        eo, ej = units(ours, exact, slope), units(theirs, exact, slope)
        assert eo.max() <= 4 and np.all(eo <= ej + 1), (eo.max(), ej.max())


# --- the forward-mode twin, and 4 devices ----------------------------------------------------

@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_forward_mode_twin_equals_jvp_of_the_reference(row):
    check_forward_twin(row)


def test_blocks_on_four_devices():
    """dropout's mask under sharding and shard_map, and replicated parameters' cotangents inside
    jit(shard_map), in a subprocess with 4 host devices (tests/sharded_blocks.py)."""
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false --xla_backend_optimization_level=0")
    r = subprocess.run([sys.executable, str(HERE / "sharded_blocks.py")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert "14 of 14 block checks pass on 4 devices" in r.stdout, r.stdout + r.stderr[-2000:]
