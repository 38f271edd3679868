"""Forward mode: jr.forward_mode() makes every rule forward-differentiable; outside it nothing changes.

Every catalog row's JVP and forward-over-reverse are checked by check_rule (tests/test_catalog.py,
against the reference and finite differences in float64); here: whole networks (jax.hessian of an
MLP loss against jax.nn + optax), jit's cache across the switch, threads, and jax.nn's own JVPs.
"""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrules as jr
from jaxrules import catalog


def _mlp_params(rng, sizes, dtype):
    return [(jnp.asarray(rng.standard_normal((m, n)) / np.sqrt(m), dtype), jnp.asarray(rng.standard_normal(n) / 10, dtype))
            for m, n in zip(sizes[:-1], sizes[1:])]


def _loss(ops, params, x, labels):
    h = x
    for k, (W, b) in enumerate(params):
        h = ops.dense(h, W, b)
        if k < len(params) - 1:
            h = ops.act(h)
    return ops.xent(h, labels).mean()


class _Ours:
    dense = staticmethod(jr.dense)
    act = staticmethod(jr.gelu)
    xent = staticmethod(jr.softmax_cross_entropy_with_integer_labels)


class _Theirs:
    dense = staticmethod(lambda x, W, b: x @ W + b)
    act = staticmethod(jax.nn.gelu)
    xent = staticmethod(optax.softmax_cross_entropy_with_integer_labels)


def test_hessian_of_an_mlp_loss_equals_jax_nn_and_optax_in_float64():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        params = _mlp_params(rng, (3, 5, 4), jnp.float64)
        x, labels = jnp.asarray(rng.standard_normal((6, 3))), jnp.asarray(rng.integers(0, 4, 6))
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        ours = lambda p: _loss(_Ours, unravel(p), x, labels)  # noqa: E731
        theirs = lambda p: _loss(_Theirs, unravel(p), x, labels)  # noqa: E731
        with jr.forward_mode():
            h = jax.jit(jax.hessian(ours))(flat)
            jac = jax.jit(jax.jacfwd(jax.grad(ours)))(flat)
        h_ref = jax.jit(jax.hessian(theirs))(flat)
        np.testing.assert_allclose(h, h_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(jac, h_ref, rtol=1e-10, atol=1e-12)
        assert np.abs(h_ref).max() > 1e-2  # not trivially zero


def test_a_function_jitted_outside_is_traced_again_inside_and_back():
    x, v = jnp.linspace(-2.0, 2.0, 5, dtype=jnp.float32), jnp.ones(5, jnp.float32)
    f = jax.jit(lambda x: jnp.sum(jr.softplus(jr.tanh(x)) ** 2))
    f(x)  # traced and cached outside: a custom_vjp
    with jr.forward_mode():
        y, t = jax.jvp(f, (x,), (v,))  # must not reuse the custom_vjp trace
    _, t_ref = jax.jvp(lambda x: jnp.sum(jax.nn.softplus(jnp.tanh(x)) ** 2), (x,), (v,))
    np.testing.assert_allclose(t, t_ref, rtol=1e-6)
    with pytest.raises(TypeError, match="can't apply forward-mode autodiff"):
        jax.jvp(f, (x,), (v,))  # outside again: the custom_vjp trace, not the twin's
    assert "custom_vjp_call" in str(jax.make_jaxpr(f)(x))


def test_jaxprs_outside_hold_custom_vjp_and_inside_custom_jvp():
    x = jnp.ones((2, 3), jnp.float32)
    outside = str(jax.make_jaxpr(jr.relu)(x))
    with jr.forward_mode():
        inside = str(jax.make_jaxpr(jr.relu)(x))
        with jr.forward_mode(False):
            nested = str(jax.make_jaxpr(jr.relu)(x))
    assert "custom_vjp_call" in outside and "custom_jvp_call" not in outside
    assert "custom_jvp_call" in inside and "custom_vjp_call" not in inside
    assert "custom_vjp_call" in nested


def test_another_thread_is_unaffected():
    x = jnp.ones(3, jnp.float32)
    seen = {}

    def other():
        seen["jaxpr"] = str(jax.make_jaxpr(jr.sigmoid)(x))
    with jr.forward_mode():
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert "custom_vjp_call" in seen["jaxpr"]


ACTIVATIONS = [r for r in catalog.RULES if r.elementwise and r.reference_name.startswith("jax.nn.")]


def test_jvp_of_every_activation_equals_jax_nn_in_float32():
    """One compilation: jax.jvp of each activation against jax.nn's, at points away from kinks (the
    tails, where jaxrules is the more accurate, are checked against float64 in tests/test_extremes.py)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(-4, 4, 64), jnp.float32)
    v = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    @jax.jit
    def both(x, v):
        out = {}
        for r in ACTIVATIONS:
            xs = catalog.away_from(*_kinks(r))(0, x.shape, jnp.float32)[0] if _kinks(r) else x
            out[r.id] = (jax.jvp(r.fn, (xs,), (v,)), jax.jvp(r.reference, (xs,), (v,)))
        return out
    with jr.forward_mode():
        results = both(x, v)
    for rid, ((y, t), (y_ref, t_ref)) in results.items():
        np.testing.assert_allclose(y, y_ref, rtol=2e-5, atol=2e-6, err_msg=rid)
        np.testing.assert_allclose(t, t_ref, rtol=2e-5, atol=2e-6, err_msg=rid)


def _kinks(rule):
    return {"relu": (0.0,), "leaky_relu": (0.0,), "relu6": (0.0, 6.0), "hard_sigmoid": (-3.0, 3.0),
            "hard_silu": (-3.0, 3.0), "hard_tanh": (-1.0, 1.0), "sparse_plus": (-1.0, 1.0),
            "sparse_sigmoid": (-1.0, 1.0), "elu": (0.0,), "celu": (0.0,), "selu": (0.0,)}.get(rule.name, ())


def test_jvp_of_attention_equals_jax_nn_in_float32():
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 7, 4, 8)), jnp.float32) for _ in range(3))
    tangents = tuple(jnp.asarray(rng.standard_normal(a.shape), jnp.float32) for a in (q, k, v))
    for causal in (False, True):
        with jr.forward_mode():
            y, t = jax.jit(lambda *a: jax.jvp(lambda *b: jr.dot_product_attention(*b, is_causal=causal), a, tangents))(
                q, k, v)
        y_ref, t_ref = jax.jvp(lambda *b: jax.nn.dot_product_attention(*b, is_causal=causal), (q, k, v), tangents)
        np.testing.assert_allclose(y, y_ref, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(t, t_ref, rtol=2e-4, atol=2e-4)
