"""jr.lean: what it recognises (counts asserted exactly), what it leaves alone (bit for bit), state,
isolation, transformations, and gradients against the stock model and float64 finite differences."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrules as jr
from jaxrules.lean import _ir, rewrite, stock

F32 = jnp.float32
K = jax.random.split(jax.random.key(0), 12)
V, T, D, HEADS, B = 32, 8, 16, 2, 2  # tiny models: the compilations dominate


def assert_grads_close(a, b):
    """Every leaf allclose: rtol 1e-4, atol 1e-5 · (the largest gradient entry of the model)."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    top = max(float(jnp.max(jnp.abs(x))) for x in la)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=1e-5 * top)


def bits(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)


# --- recognition --------------------------------------------------------------------------------

X = jax.random.normal(K[0], (4, 8), F32)
W = jax.random.normal(K[1], (8, 8), F32)


def activations(x, W):
    h = jax.nn.gelu(x @ W)
    h = (jax.nn.relu(h) + jax.nn.leaky_relu(h, 0.2) + jax.nn.leaky_relu(h) + jax.nn.silu(h) + jax.nn.sigmoid(h)
         + jax.nn.gelu(h, approximate=False) + jax.nn.elu(h, alpha=0.5) + jnp.tanh(h) + jax.nn.softplus(h))
    h = jax.nn.softmax(h) + jax.nn.log_softmax(h, axis=0) + jax.nn.logsumexp(h, axis=-1, keepdims=True)
    return jnp.sum(h ** 2) + jax.nn.logsumexp(h)


def value_and_grads(f, *args):
    """jit(value_and_grad) over every argument: one compilation (eager runs compile every operation)."""
    return jax.jit(jax.value_and_grad(f, argnums=tuple(range(len(args)))))(*args)


def assert_same_loss_and_grads(f, lean, *args, rtol=1e-6):
    (ls, gs), (ll, gl) = value_and_grads(f, *args), value_and_grads(lean, *args)
    np.testing.assert_allclose(ll, ls, rtol=rtol)
    assert_grads_close(gs, gl)


def test_activations_and_softmax_family_are_recognised_with_their_settings():
    lean = jr.lean(activations)
    assert lean.replacements(X, W) == {"elu": 1, "gelu": 2, "leaky_relu": 2, "log_softmax": 1, "logsumexp": 2,
                                       "relu": 1, "sigmoid": 1, "silu": 1, "softmax": 1, "softplus": 1, "tanh": 1}
    assert_same_loss_and_grads(activations, lean, X, W, rtol=2e-6)
    # the rewritten program calls jaxrules' rules
    text = str(jax.make_jaxpr(lean)(X, W))
    assert "custom_vjp_call" in text and "name=gelu" in text


def test_gated_units():
    a, b = X, jnp.cos(X)
    cases = {"swiglu": lambda a, b: jax.nn.silu(a) * b, "geglu": lambda a, b: b * jax.nn.gelu(a, approximate=False)}
    for name, f in cases.items():
        assert jr.lean(f).replacements(a, b) == {name: 1}
    both = lambda lean: lambda a, b: sum(jnp.sum((jr.lean(f) if lean else f)(a, b) ** 2) for f in cases.values())  # noqa
    assert_same_loss_and_grads(both(False), both(True), a, b, rtol=2e-6)


def test_a_user_function_with_a_jax_nn_name_but_other_math_is_left_alone():
    @jax.jit
    def silu(x):  # a jit named silu, whose body is not jax.nn.silu's
        return x * jax.nn.sigmoid(1.702 * x)
    assert jr.lean(lambda x: silu(x).sum()).replacements(X) == {"sigmoid": 1}


Q, KK, VV = (jax.random.normal(K[i], (B, T, HEADS, 4), F32) for i in (2, 3, 4))
MASK = jax.random.bernoulli(K[5], 0.6, (B, 1, T, T)).at[0, 0, 2].set(False)  # query 2 of batch 0 sees nothing
BIAS = jax.random.normal(K[6], (1, HEADS, T, T), F32)


def hand_attention(q, k, v, fill=-jnp.inf, mask=None):
    s = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(q.shape[-1])
    s = jnp.where(jnp.tril(jnp.ones((T, T), bool)) if mask is None else mask, s, fill)
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, -1), v)


ATTENTIONS = {
    "jax.nn": lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v),
    "jax.nn causal": lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, is_causal=True),
    "jax.nn mask, bias, scale": lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, BIAS, m, scale=0.3),
    "jax.nn unbatched": lambda q, k, v, m: jax.nn.dot_product_attention(q[0], k[0], v[0], is_causal=True),
    "jax.nn lengths": lambda q, k, v, m: jax.nn.dot_product_attention(
        q, k, v, mask=m, query_seq_lengths=jnp.array([T, 5], jnp.int32),
        key_value_seq_lengths=jnp.array([3, T], jnp.int32)),
    "jax.nn grouped kv heads": lambda q, k, v, m: jax.nn.dot_product_attention(q, k[:, :, :1], v[:, :, :1], mask=m),
    "hand, causal -inf": lambda q, k, v, m: hand_attention(q, k, v),
    "hand, traced mask, finfo.min": lambda q, k, v, m: hand_attention(q, k, v, jnp.finfo(F32).min, m),
}


@pytest.mark.parametrize("name", list(ATTENTIONS))
def test_attention_forms_are_replaced(name):
    assert jr.lean(ATTENTIONS[name]).replacements(Q, KK, VV, MASK) == {"dot_product_attention": 1}


def test_attention_forms_keep_their_values_and_gradients():
    # five of the forms (each attention rule compiles for about a second): bias, mask and scale; lengths;
    # grouped kv heads; a mask with an empty row; a causal mask read from a -inf fill
    forms = [ATTENTIONS[n] for n in ("jax.nn mask, bias, scale", "jax.nn lengths", "jax.nn grouped kv heads",
                                     "hand, traced mask, finfo.min", "hand, causal -inf")]

    def loss(lean):  # in one compilation, each output weighed by its own random numbers
        def f(q, k, v):
            total = 0.0
            for i, g in enumerate(forms):
                out = (jr.lean(g) if lean else g)(q, k, v, MASK)
                total += jnp.sum(out * jax.random.normal(jax.random.fold_in(K[7], i), out.shape, F32))
            return total
        return f
    assert_same_loss_and_grads(loss(False), loss(True), Q, KK, VV, rtol=1e-5)


FALLBACKS = {
    "traced scale": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=jnp.sqrt(jnp.sum(q * 0) + 0.3)),
    "unknown fill": lambda q, k, v: hand_attention(q, k, v, fill=-1e9),
    "-inf fill, a mask with empty rows": lambda q, k, v: hand_attention(q, k, v, -jnp.inf, MASK),
    "mask after the softmax": lambda q, k, v: jnp.einsum(
        "bhts,bshd->bthd", jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k), -1) * jnp.tril(jnp.ones((T, T))), v),
    "dropout on the weights": lambda q, k, v: jnp.einsum(
        "bhts,bshd->bthd", jax.random.bernoulli(K[7], 0.9, (B, HEADS, T, T))
        * jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k), -1) / 0.9, v),
}


@pytest.mark.parametrize("name", list(FALLBACKS))
def test_attention_lean_does_not_understand_is_not_replaced(name):
    assert jr.lean(FALLBACKS[name]).replacements(Q, KK, VV) == {}


def test_attention_lean_does_not_understand_stays_bit_for_bit():
    def f(q, k, v):
        return sum(jnp.sum(jnp.nan_to_num(g(q, k, v)) * (i + 1)) for i, g in enumerate(FALLBACKS.values()))
    lean = jr.lean(f)
    assert lean.replacements(Q, KK, VV) == {}
    bits(value_and_grads(lean, Q, KK, VV), value_and_grads(f, Q, KK, VV))


def test_cudnn_attention_is_left_to_jax():
    f = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn")  # noqa: E731
    try:
        want = f(Q, KK, VV)
    except Exception as e:  # no cuDNN here: lean raises the same error, from the same call
        with pytest.raises(type(e)):
            jr.lean(f)(Q, KK, VV)
    else:
        assert jr.lean(f).replacements(Q, KK, VV) == {}
        bits(jr.lean(f)(Q, KK, VV), want)


def test_nnx_attention_with_dropout_is_left_alone_in_training_and_replaced_in_evaluation():
    from flax import nnx
    mha = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, dropout_rate=0.5,
                                 rngs=nnx.Rngs(0, dropout=1))
    x = jax.random.normal(K[8], (B, T, 8), F32)
    assert jr.lean(lambda m, x: m(x, deterministic=False)).replacements(mha, x) == {}
    assert jr.lean(lambda m, x: m(x, deterministic=True)).replacements(mha, x) == {"dot_product_attention": 1}


LABELS = jax.random.randint(K[9], (B, T), -3, 11)  # optax reads negative labels from the end: so does lean
H = jax.random.normal(K[10], (B, T, D), F32)
WH = jax.random.normal(K[11], (D, 11), F32)
BH = jnp.linspace(-1, 1, 11, dtype=F32)

LOSSES = {
    "matmul + bias": (lambda h, w, b: optax.softmax_cross_entropy_with_integer_labels(h @ w + b, LABELS).mean(),
                      {"linear_softmax_cross_entropy": 1}),
    "tied embedding": (lambda h, w, b: optax.softmax_cross_entropy_with_integer_labels(h @ w.T.T, LABELS).sum(),
                       {"linear_softmax_cross_entropy": 1}),
    "per-example where": (lambda h, w, b: optax.softmax_cross_entropy_with_integer_labels(
        h @ w + b, LABELS, where=LABELS % 3 > 0).sum(), {"linear_softmax_cross_entropy": 1}),
    "logits used twice": (lambda h, w, b: (lambda z: optax.softmax_cross_entropy_with_integer_labels(z, LABELS).mean()
                                           + z.mean())(h @ w), {"softmax_cross_entropy_with_integer_labels": 1}),
    "distribution labels": (lambda h, w, b: optax.softmax_cross_entropy(h @ w, jax.nn.one_hot(LABELS, 11)).mean(),
                            {"softmax_cross_entropy": 1}),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_cross_entropies_and_the_fused_output_layer_are_replaced(name):
    f, want = LOSSES[name]
    assert jr.lean(f).replacements(H, WH, BH) == want


def test_cross_entropies_and_the_fused_output_layer_keep_their_values_and_gradients():
    def loss(lean):
        return lambda h, w, b: sum((i + 1) * (jr.lean(f) if lean else f)(h, w, b)
                                   for i, (f, _) in enumerate(LOSSES.values()))
    assert_same_loss_and_grads(loss(False), loss(True), H, WH, BH, rtol=1e-5)


def _norms():
    """The norms of the three frameworks and jax.nn's, each applied to (2, 3, 8) inputs: (name, f, args)."""
    import equinox as eqx
    import flax.linen as nn
    from flax import nnx
    x = jax.random.normal(K[0], (2, 3, 8), F32)
    g, b = jnp.linspace(0.5, 1.5, 8, dtype=F32), jnp.linspace(-1, 1, 8, dtype=F32)
    linen_ln, linen_rms = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False), nn.RMSNorm()
    eqx_ln, eqx_rms = eqx.nn.LayerNorm(8, use_bias=False), eqx.nn.RMSNorm(8, use_bias=False)
    return [
        ("layer_norm", lambda m, x: m(x), nnx.LayerNorm(8, rngs=nnx.Rngs(0)), x),
        ("layer_norm", lambda m, x: m(x), nnx.LayerNorm(8, use_bias=False, epsilon=1e-3, rngs=nnx.Rngs(0)), x),
        ("rms_norm", lambda m, x: m(x), nnx.RMSNorm(8, rngs=nnx.Rngs(0)), x),
        ("layer_norm", lambda p, x: linen_ln.apply(p, x), linen_ln.init(K[1], x), x),
        ("rms_norm", lambda p, x: linen_rms.apply(p, x), linen_rms.init(K[1], x), x),
        ("layer_norm", lambda m, x: jax.vmap(jax.vmap(m))(x), eqx_ln, x),
        ("rms_norm", lambda m, x: jax.vmap(jax.vmap(m))(x), eqx_rms, x.astype(jnp.bfloat16)),
        ("standardize", lambda _, x: jax.nn.standardize(x, epsilon=1e-4), None, x),
        ("layer_norm", lambda p, x: jax.nn.standardize(x, epsilon=1e-5) * p[0] + p[1], (g, b), x),
    ]


def test_the_norms_of_the_three_frameworks_and_jax_nn():
    cases = _norms()
    for name, f, p, x in cases:
        assert jr.lean(f).replacements(p, x) == {name: 1}, (name, f)

    def total(lean):  # every case in one compilation
        return lambda ps, xs: sum(jnp.sum(jnp.sin(((jr.lean(f) if lean else f)(p, x)).astype(F32)))
                                  for (_, f, _, _), p, x in zip(cases, ps, xs))
    ps, xs = [c[2] for c in cases], [c[3] for c in cases]
    (ls, gs), (ll, gl) = (jax.jit(jax.value_and_grad(total(lean), argnums=(0, 1)))(ps, xs) for lean in (False, True))
    np.testing.assert_allclose(ll, ls, rtol=1e-5)
    assert_grads_close(gs[0], gl[0])
    assert_grads_close([a for a in gs[1] if a.dtype == F32], [a for a in gl[1] if a.dtype == F32])


def test_verbose_prints_what_was_replaced(capsys):
    jax.make_jaxpr(jr.lean(activations, verbose=True))(X, W)
    assert "gelu ×2" in capsys.readouterr().err


def test_replacements_take_shapes():
    f = jax.jit(lambda x, n: jax.nn.gelu(x) * n)
    assert jr.lean(f).replacements(jax.ShapeDtypeStruct((3, 4), F32), 2) == {"gelu": 1}


# --- the stock models of the four frameworks ------------------------------------------------------

MODELS = {  # framework, scan, layers: expected replacements (a site inside a loop body counts once)
    ("nnx", False, 1): {"dot_product_attention": 1, "gelu": 1, "layer_norm": 3, "linear_softmax_cross_entropy": 1},
    ("nnx", True, 2): {"dot_product_attention": 1, "gelu": 1, "layer_norm": 3, "linear_softmax_cross_entropy": 1},
    ("linen", False, 1): {"dot_product_attention": 1, "gelu": 1, "layer_norm": 3, "linear_softmax_cross_entropy": 1},
    ("equinox", False, 1): {"dot_product_attention": 1, "gelu": 1, "layer_norm": 3, "linear_softmax_cross_entropy": 1},
    ("jax", False, 1): {"dot_product_attention": 1, "gelu": 1, "layer_norm": 3, "linear_softmax_cross_entropy": 1},
}


@pytest.mark.parametrize("kind, scan, layers", list(MODELS), ids=[f"{k}{' scan' if s else ''}" for k, s, _ in MODELS])
def test_stock_models_are_leaned_with_exact_counts_and_the_same_loss_and_gradients(kind, scan, layers):
    model, loss = stock.build(kind, V, T, D, HEADS, layers, scan=scan)
    tokens, targets = stock.batch(B, T, V)
    lean = jr.lean(loss)
    assert lean.replacements(model, tokens, targets) == MODELS[kind, scan, layers]
    (ls, gs), (ll, gl) = stock.step(kind, loss)(model, tokens, targets), stock.step(kind, lean)(model, tokens, targets)
    np.testing.assert_allclose(ll, ls, rtol=1e-6)
    assert_grads_close(gs, gl)


def test_float64_finite_differences_on_a_tiny_model():
    with jax.enable_x64(True):
        params, loss = stock.build("jax", 13, 5, 8, 2, 1)
        params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
        tokens, targets = stock.batch(2, 5, 13)
        lean = jr.lean(loss)
        assert lean.replacements(params, tokens, targets) == {"dot_product_attention": 1, "gelu": 1, "layer_norm": 3,
                                                              "linear_softmax_cross_entropy": 1}
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        f = lambda p: lean(unravel(p), tokens, targets)  # noqa: E731
        eps = 1e-6  # the truncation error, eps² times a third derivative, is 5e-7 at 1e-5 here

        @jax.jit
        def both(p, d):  # the gradient along d, and central differences along d: one compilation
            return jax.grad(f)(p) @ d, (f(p + eps * d) - f(p - eps * d)) / (2 * eps)
        for d in jax.random.normal(jax.random.key(1), (2, flat.size), jnp.float64):
            g, fd = both(flat, d)
            np.testing.assert_allclose(float(g), float(fd), rtol=1e-6, atol=1e-9)


# --- state ----------------------------------------------------------------------------------------

def _dropout_mlp():
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.fc1, self.fc2 = nnx.Linear(8, 16, rngs=rngs), nnx.Linear(16, 11, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.fc2(self.drop(nnx.gelu(self.fc1(x))))

    def loss(model, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
    return MLP(nnx.Rngs(0, dropout=7)), loss


def test_nnx_dropout_state_advances_as_stock_eagerly_and_under_nnx_jit_value_and_grad():
    from flax import nnx
    (a, loss), (b, _) = _dropout_mlp(), _dropout_mlp()
    y = jnp.arange(4) % 11
    lean = jr.lean(loss)
    assert lean.replacements(b, X, y) == {"gelu": 1, "linear_softmax_cross_entropy": 1}
    np.testing.assert_allclose(lean(b, X, y), loss(a, X, y), rtol=1e-6)  # eagerly: the same mask
    assert int(a.drop.rngs.count[...]) == int(b.drop.rngs.count[...]) == 1
    sa, sb = nnx.jit(nnx.value_and_grad(loss)), nnx.jit(nnx.value_and_grad(lean))
    for step in range(2):  # successive masks match stock's
        (la, ga), (lb, gb) = sa(a, X, y), sb(b, X, y)
        np.testing.assert_allclose(lb, la, rtol=1e-6)
        assert_grads_close(ga, gb)
        assert int(a.drop.rngs.count[...]) == int(b.drop.rngs.count[...]) == 2 + step


def test_a_closed_over_nnx_module_whose_state_changes_gets_an_error_naming_the_functional_form():
    model, loss = _dropout_mlp()
    with pytest.raises(RuntimeError, match=r"nnx.split.*nnx.merge"):
        jr.lean(lambda x, y: loss(model, x, y))(X, jnp.arange(4) % 11)


def test_equinox_model_with_function_leaves_under_filter_jit_and_filter_value_and_grad():
    import equinox as eqx
    mlp = eqx.nn.MLP(8, 2, 16, 2, activation=jax.nn.silu, final_activation=jnp.tanh, key=K[0])
    loss = lambda m, x: jnp.mean(jax.vmap(m)(x) ** 2)  # noqa: E731
    lean = jr.lean(loss)
    assert lean.replacements(mlp, X) == {"silu": 2, "tanh": 1}
    (la, ga), (lb, gb) = (eqx.filter_jit(eqx.filter_value_and_grad(f))(mlp, X) for f in (loss, lean))
    np.testing.assert_allclose(lb, la, rtol=1e-6)
    assert_grads_close(ga, gb)


# --- isolation ------------------------------------------------------------------------------------

def _rules_in(f, *args):
    return str(jax.make_jaxpr(f)(*args)).count("custom_vjp_call")


def test_a_function_jitted_before_lean_is_leaned_and_a_stock_call_after_is_not():
    f = jax.jit(lambda x: jax.nn.gelu(x).sum())
    f(X)  # traced and compiled before lean
    assert jr.lean(f).replacements(X) == {"gelu": 1} and _rules_in(jr.lean(f), X) == 1
    assert _rules_in(f, X) == 0 and _rules_in(lambda x: jax.nn.gelu(x).sum(), X) == 0


def test_a_trace_on_another_thread_is_unaffected():
    stop, seen = threading.Event(), []

    def other():
        while not stop.is_set():
            seen.append(_rules_in(lambda x: jax.nn.gelu(x * 2.0).sum(), X))
    t = threading.Thread(target=other)
    t.start()
    try:
        for _ in range(5):
            assert _rules_in(jr.lean(lambda x: jax.nn.gelu(x * 3.0).sum()), X) == 1
    finally:
        stop.set()
        t.join()
    assert seen and not any(seen)


# --- transformations, loops and branches ---------------------------------------------------------

def _body(x):
    return jax.nn.gelu(x) * 2


def loops(x):
    y = jax.lax.fori_loop(0, 2, lambda i, c: _body(c), x)             # a scan
    y = jax.lax.cond(y[0, 0] > 0, _body, lambda a: a - 1, y)
    y = jax.checkpoint(_body)(y)
    y, _ = jax.lax.scan(lambda c, a: (_body(c), None), y, None, length=2)

    @jax.custom_jvp
    def mine(a):  # the user's derivative: left whole
        return jax.nn.gelu(a)
    mine.defjvp(lambda p, t: (mine(p[0]), 2 * t[0]))

    @jax.custom_vjp
    def theirs(a):
        return jax.nn.gelu(a)
    theirs.defvjp(lambda a: (theirs(a), None), lambda r, g: (3 * g,))
    return jnp.sum(theirs(mine(y)) ** 2)


def test_loops_branches_and_remat_are_rewritten_and_custom_rules_kept():
    lean = jr.lean(loops)
    assert lean.replacements(X) == {"gelu": 4}
    assert_same_loss_and_grads(loops, lean, X)
    # under vmap and checkpoint, outside lean
    both = lambda f: lambda x: (jax.vmap(jax.grad(f))(x[:, None]), jax.grad(jax.checkpoint(f))(x))  # noqa: E731
    assert_grads_close(jax.jit(both(loops))(X), jax.jit(both(lean))(X))
    w = lambda x: jax.lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, _body(c[1])), (0, x))[1]  # noqa
    assert jr.lean(w).replacements(X) == {"gelu": 1}
    np.testing.assert_allclose(jax.jit(jr.lean(w))(X), jax.jit(w)(X), rtol=1e-5, atol=1e-6)  # gelu∘gelu, float32


def test_forward_mode_through_lean():
    f = lambda q: jnp.sum(jax.nn.gelu(jax.nn.dot_product_attention(q, q, q, is_causal=True)) ** 2)  # noqa: E731
    with jr.forward_mode():  # as for any jaxrules rule: jax.jvp needs the forward-mode twins
        got = jax.jit(lambda q, t: jax.jvp(jr.lean(f), (q,), (t,)))(Q, KK)
    want = jax.jit(lambda q, t: jax.jvp(f, (q,), (t,)))(Q, KK)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_program_re_emitted_without_replacements_is_bit_identical():
    """The evaluator alone (no matches): every primitive, loop and custom rule bound as traced."""
    def f(x):
        y = jax.jit(lambda a: jnp.sin(a) @ a.T)(x)
        y = jax.lax.fori_loop(0, 3, lambda i, c: c * 1.5 + jnp.cos(c), y)
        y = jax.lax.cond(y[0, 0] > 0, jnp.exp, jnp.tanh, y)
        y = jax.checkpoint(lambda a: a * jnp.sin(a))(y)
        y = jax.nn.relu(y) + jax.nn.softmax(y)
        return jnp.sum(y ** 2)
    prog = _ir.build(jax.make_jaxpr(f)(X[:, :4]))
    again = lambda x: rewrite.run(prog, rewrite.Plan(), [x])[0]  # noqa: E731
    bits(jax.jit(again)(X[:, :4]), jax.jit(f)(X[:, :4]))
    bits(jax.jit(jax.grad(again))(X[:, :4]), jax.jit(jax.grad(f))(X[:, :4]))


def test_what_lean_does_not_replace_keeps_its_bits_beside_what_it_does():
    def f(x):
        return jax.nn.gelu(x).sum(), jnp.sin(x) @ jnp.cos(x).T + jax.nn.softplus(x).sum()
    _, other = jax.jit(jr.lean(f))(X)
    bits(other, jax.jit(f)(X)[1])


def test_the_example_trains_the_stock_nnx_gpt_with_and_without_lean():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "lean_nnx.py"
    assert "jaxrules" not in (path.parent / "nnx_gpt.py").read_text().split('"""')[2]  # the model imports none
    spec = importlib.util.spec_from_file_location("lean_nnx", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    runs = example.main(["--steps", "2", "--seq", "16", "--dim", "16", "--heads", "2", "--layers", "1", "--batch", "2",
                         "--data", str(path.parent.parent / "README.md")])
    np.testing.assert_allclose(runs["jr.lean"]["losses"], runs["stock"]["losses"], rtol=1e-5)
