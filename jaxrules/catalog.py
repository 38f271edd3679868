"""The catalog: one table of every public rule, its independent reference, its input domain.

The tests (``tests/test_catalog.py``), the README's rule table and the residual benchmark are all
generated from :data:`RULES`, so adding a rule means adding a row here, and the row is then checked
everywhere. ``python -m jaxrules.catalog`` prints the README table; ``--write README.md`` updates it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrules as jr

Case = Any  # a shape, or a tuple of shapes, handed to the sampler

ELEMENTWISE_CASES: tuple[Case, ...] = ((3, 4), (), (7,), (0, 3))
# each kind of broadcast once (random pairs are drawn by tests/test_properties.py)
BROADCAST_PAIRS: tuple[Case, ...] = (((3, 4), (4,)), ((3, 4), (3, 4)), ((), (3, 4)), ((4,), ()),
                                     ((2, 1, 4), (3, 4)), ((1, 4), (3, 1)), ((0, 4), (4,)))


@dataclass(frozen=True)
class Rule:
    """One row of the catalog.

    name: the public name (``jr.<name>``); settings: the static settings bound in ``fn``, if any.
    fn / reference: our rule and the independent reference, with the same settings bound.
    sample: ``(seed, case, dtype) -> args`` (seed an int), keeping away from kinks and ties.
    cases: the cases (shapes) every dtype is tested on; the first is the main one.
    pullback / saves: the math shown in the README, and what the backward keeps.
    tol: per-dtype (rtol, atol) overrides of ``jaxrules.testing.default_tolerance``.
    checks: extra keyword arguments for ``check_rule`` (e.g. ``grad_grad=False`` with a reason).
    elementwise: one array in, one array of the same shape out (the per-element residual table).
    """

    name: str
    fn: Callable[..., Any]
    reference: Callable[..., Any]
    reference_name: str
    module: str
    sample: Callable[[int, Case, Any], tuple[Any, ...]]
    pullback: str
    saves: str
    cases: tuple[Case, ...] = ELEMENTWISE_CASES
    settings: str = ""
    tol: dict[Any, tuple[float, float]] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    elementwise: bool = False

    @property
    def id(self) -> str:
        return f"{self.name}({self.settings})" if self.settings else self.name

    def tolerance(self, dtype: Any) -> tuple[float, float]:
        from jaxrules.testing import default_tolerance
        return self.tol.get(np.dtype(dtype), default_tolerance(dtype))


# --- samplers --------------------------------------------------------------------------------
# Samplers draw with NumPy, seeded by an int: no compilation per shape and dtype (with jax.random,
# sampling cost as much as checking).

def _array(x: np.ndarray, dtype: Any) -> jax.Array:
    """A NumPy draw as a JAX array of dtype (via float32 for the half-precision types)."""
    x = np.asarray(x)
    if np.dtype(dtype) in (np.dtype(jnp.bfloat16), np.dtype(jnp.float16)):
        x = x.astype(np.float32)
    return jnp.asarray(x, dtype)


def away_from(*kinks: float, low: float = -4.0, high: float = 4.0, gap: float = 0.1):
    """Sampler of one array, uniform in [low, high] but at least ``gap`` from every kink."""
    def sample(seed, shape, dtype):
        x = np.random.default_rng(seed).uniform(low, high, shape)
        for k in kinks:
            x = np.where(np.abs(x - k) < gap, k + gap * np.where(x >= k, 1.0, -1.0), x)
        return (_array(x, dtype),)
    return sample


def _pair(low: float = -3.0, high: float = 3.0, y_away_from_zero: bool = False):
    def sample(seed, shapes, dtype):
        rng = np.random.default_rng(seed)
        x = rng.uniform(low, high, shapes[0])
        y = rng.uniform(low, high, shapes[1])
        if y_away_from_zero:
            y = np.where(y >= 0, y + 0.5, y - 0.5)
        return _array(x, dtype), _array(y, dtype)
    return sample


def _rrelu_sample(seed, shape, dtype):
    (x,) = away_from(0.0)(seed, shape, dtype)
    return x, jax.random.key(7)


def _rrelu_reference(lower, upper, training):
    def reference(x, key):
        a = jax.random.uniform(key, x.shape, jnp.float32, lower, upper).astype(x.dtype) if training \
            else jnp.full(x.shape, (lower + upper) / 2, x.dtype)
        return jnp.where(x >= 0, x, a * x)
    return reference


def _normal(*shapes_of: int, scale: float = 1.0):
    """Sampler of several normal arrays, with the case giving their shapes (None for an absent arg)."""
    def sample(seed, shapes, dtype):
        rng = np.random.default_rng(seed)
        return tuple(None if sh is None else _array(scale * rng.standard_normal(sh), dtype) for sh in shapes)
    return sample


def distinct(seed, shape, dtype):
    """Tie-free values: a permutation of k/8 for k = 0..n-1, centred (exact in bfloat16 for n <= 256)."""
    n = int(np.prod(shape, dtype=np.int64))
    v = (np.random.default_rng(seed).permutation(n) - n / 2) / 8
    return (_array(v.reshape(shape), dtype),)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True)) if z.size else z
    return e / e.sum(axis=-1, keepdims=True) if z.size else z


def _masked(seed, shape, dtype):
    """(x, where): normal logits and a mask with about a third masked out and the first row fully masked."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    w = rng.uniform(size=shape) < 2 / 3
    if len(shape) >= 2 and shape[0] > 0:
        w[0] = False
    return _array(x, dtype), jnp.asarray(w)


def _distribution(seed, shape, dtype):
    """(log_predictions, targets): log of one distribution, and another distribution, along the last axis."""
    rng = np.random.default_rng(seed)
    return (_array(np.log(_softmax(rng.standard_normal(shape))), dtype),
            _array(_softmax(rng.standard_normal(shape)), dtype))


def _logits_and_distribution(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    return _array(rng.standard_normal(shape), dtype), _array(_softmax(rng.standard_normal(shape)), dtype)


def _logits_and_weights(seed, shapes, dtype):
    """(a, b): normal logits of shapes[0] and positive weights of shapes[1] for logsumexp."""
    rng = np.random.default_rng(seed)
    return _array(rng.standard_normal(shapes[0]), dtype), _array(rng.uniform(0.5, 2.0, shapes[1]), dtype)


def _logits_and_classes(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    return (_array(rng.standard_normal(shape), dtype),
            jnp.asarray(rng.integers(0, max(shape[-1], 1), shape[:-1]), jnp.int32))


def _logits_and_probabilities(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    return _array(2 * rng.standard_normal(shape), dtype), _array(rng.uniform(size=shape), dtype)


def _logits_and_bits(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    return _array(2 * rng.standard_normal(shape), dtype), jnp.asarray(rng.integers(0, 2, shape), jnp.int32)


def _masked_logsumexp(x, where):
    """jax.nn.logsumexp(x, -1, where=where), with a zero tangent on fully masked rows: their value is
    −inf whatever x is, but jax.nn's JVP there is NaN (its VJP is 0)."""
    return jnp.where(jnp.any(where, -1), jax.nn.logsumexp(x, -1, where=where), -jnp.inf)


def _window_reference(op: str, window_shape, strides=None, padding="VALID", count_include_pad=True):
    """flax.linen's max_pool / avg_pool, written with lax.reduce_window as flax does."""
    from jax import lax

    def reference(x):
        n = len(window_shape)
        lead = x.ndim - n - 1
        dims = (1,) * lead + tuple(window_shape) + (1,)
        st = (1,) * lead + tuple(strides or window_shape) + (1,)
        pads = padding if isinstance(padding, str) else ((0, 0),) * lead + tuple(padding) + ((0, 0),)
        if op == "max":
            return lax.reduce_window(x, -jnp.inf, lax.max, dims, st, pads)
        total = lax.reduce_window(x, 0.0, lax.add, dims, st, pads)
        if count_include_pad:
            return total / np.prod(window_shape)
        return total / lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, dims, st, pads)
    return reference


def _conv_reference(strides=1, padding="VALID", dilation=1):
    """lax.conv_general_dilated with flax's layout, differentiated by jax."""
    from jax import lax

    def reference(x, W, b):
        n = W.ndim - 2
        sp = {1: "W", 2: "HW", 3: "DHW"}[n]
        s = (strides,) * n if isinstance(strides, int) else strides
        d = (dilation,) * n if isinstance(dilation, int) else dilation
        y = lax.conv_general_dilated(x, W, s, padding, rhs_dilation=d,
                                     dimension_numbers=("N" + sp + "C", sp + "IO", "N" + sp + "C"))
        return y if b is None else y + b
    return reference


def _linear_xent_sample(seed, case, dtype):
    """(x, W, labels, b[, where]) for linear_softmax_cross_entropy; case = (N, D, V, bias?, mask?)."""
    n, d, v, bias, masked = case
    rng = np.random.default_rng(seed)
    out = (_array(rng.standard_normal((n, d)), dtype), _array(rng.standard_normal((d, v)), dtype),
           jnp.asarray(rng.integers(0, v, n), jnp.int32), _array(rng.standard_normal(v), dtype) if bias else None)
    return out + ((jnp.asarray(np.arange(n) % 3 != 1),) if masked else ())


def linear_xent_reference(reduction="none", label_smoothing=0.0, z_loss=0.0, logit_softcap=None):
    """linear_softmax_cross_entropy written with optax (the plain formula in float64, optax in float32):
    z = x @ W + b, c·tanh(z/c) when soft-capped, optax.softmax_cross_entropy against
    optax.smooth_labels(onehot, α), plus λ·logsumexp(z)², then masked and reduced."""
    def reference(x, W, labels, b, where=None):
        z = x @ W if b is None else x @ W + b
        if logit_softcap is not None:
            z = logit_softcap * jnp.tanh(z / logit_softcap)
        if label_smoothing or z_loss:
            targets = optax.smooth_labels(jax.nn.one_hot(labels, W.shape[1], dtype=z.dtype), label_smoothing)
            loss = optax.softmax_cross_entropy(z, targets) + z_loss * jax.nn.logsumexp(z, axis=-1) ** 2
        else:
            loss = optax.softmax_cross_entropy_with_integer_labels(z, labels)
        if where is not None:
            loss = jnp.where(where, loss, 0)
        if reduction == "sum":
            return jnp.sum(loss)
        if reduction == "mean":
            return jnp.sum(loss) / (loss.shape[0] if where is None else jnp.sum(where))
        return loss
    return reference


def _linear_xent(settings: dict):
    """jr.linear_softmax_cross_entropy with settings, taking where positionally (the sampler's order)."""
    def fn(x, W, labels, b, where=None):
        return jr.linear_softmax_cross_entropy(x, W, labels, b, where=where, **settings)
    return fn


def _attention_sample(seed, case, dtype):
    """(query, key, value, bias, mask[, query_seq_lengths, key_value_seq_lengths]) for dot_product_attention.

    case = (q shape, kv shape, bias shape or None, mask shape or None[, extra]). Masks keep the first
    key of every row unless extra is "empty rows" (then every third query row sees no key); extra
    "lengths" adds random sequence lengths (0 included, so whole batch members go blank)."""
    qs, ks, bs, ms, *extra = case
    rng = np.random.default_rng(seed)
    q, kk, v = (_array(rng.standard_normal(sh), dtype) for sh in (qs, ks, ks))
    bias = None if bs is None else _array(rng.standard_normal(bs), dtype)
    mask = None
    if ms is not None:
        mask = rng.uniform(size=ms) < 0.7
        mask[..., 0] = True
        if extra == ["empty rows"]:
            mask[..., ::3, :] = False
        mask = jnp.asarray(mask)
    if extra != ["lengths"]:
        return q, kk, v, bias, mask
    b, t, s = (qs[0], qs[1], ks[1]) if len(qs) == 4 else (1, qs[0], ks[0])
    lengths = [jnp.asarray(rng.integers(0, n + 1, b), jnp.int32).at[-1].set(n) for n in (t, s)]
    return (q, kk, v, bias, mask, *lengths)


_FILL = -0.7 * float(np.finfo(np.float32).max)  # jax.nn's fill for masked scores


def plain_attention(query, key, value, bias=None, mask=None, query_seq_lengths=None, key_value_seq_lengths=None,
                    *, scale=None, is_causal=False, local_window_size=None, return_residual=False):
    """softmax(s QKᵀ + bias) V written out with jnp (the float64 reference), with jax.nn's meaning:
    hidden scores are a large finite negative number, so a row that sees no key averages all values
    uniformly; rows past the query length are zeros; the residual is the logsumexp (B, T, N)."""
    if query.ndim == 3:
        lens = [None if a is None else a for a in (query_seq_lengths, key_value_seq_lengths)]
        out = plain_attention(query[None], key[None], value[None], bias, mask, *lens, scale=scale,
                              is_causal=is_causal, local_window_size=local_window_size, return_residual=return_residual)
        return jax.tree_util.tree_map(lambda a: a[0], out)
    B, T, N, H = query.shape
    S = key.shape[1]
    groups = N // key.shape[2]
    key, value = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
    scale = 1 / H ** 0.5 if scale is None else scale
    s = jnp.einsum("btnh,bsnh->bnts", query, key) * scale
    if bias is not None:
        s = s + bias
    rows, cols = jnp.arange(T)[:, None], jnp.arange(S)[None, :]
    live = jnp.ones(s.shape, bool)
    if mask is not None:
        live = live & mask
    if is_causal:
        live = live & (cols <= rows)
    if local_window_size is not None:
        left, right = (local_window_size,) * 2 if isinstance(local_window_size, int) else local_window_size
        live = live & (cols >= rows - left) & (cols <= rows + right)
    if query_seq_lengths is not None:
        live = live & (rows < query_seq_lengths[:, None, None, None])
    if key_value_seq_lengths is not None:
        live = live & (cols < key_value_seq_lengths[:, None, None, None])
    s = jnp.where(live, s, _FILL)
    out = jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(s, axis=-1), value)
    if query_seq_lengths is not None:
        out = jnp.where((jnp.arange(T) < query_seq_lengths[:, None])[:, :, None, None], out, 0)
    if not return_residual:
        return out
    return out, jax.lax.stop_gradient(jnp.moveaxis(jax.nn.logsumexp(s, axis=-1), 1, 2)).astype(out.dtype)


def attention_reference(**settings):
    """The reference of a dot_product_attention row: jax.nn.dot_product_attention itself in float32; the
    plain formula (plain_attention) in float64, where jax.nn is only float32-accurate (it takes its
    softmax in float32), and in float16 and bfloat16, computed in float32 and rounded once (jax.nn's
    half-precision dot algorithms do not compile on every CPU)."""
    def reference(query, key, value, bias=None, mask=None, query_seq_lengths=None, key_value_seq_lengths=None):
        dtype = jnp.result_type(query)
        if dtype == jnp.float32:
            return jax.nn.dot_product_attention(query, key, value, bias, mask, query_seq_lengths=query_seq_lengths,
                                                key_value_seq_lengths=key_value_seq_lengths, **settings)
        wide = (lambda a: a) if dtype == jnp.float64 else (lambda a: None if a is None else a.astype(jnp.float32))
        out = plain_attention(wide(query), wide(key), wide(value), wide(bias), mask, query_seq_lengths,
                              key_value_seq_lengths, **settings)
        return jax.tree_util.tree_map(lambda a: a.astype(dtype), out)
    return reference


def _attention(settings: dict):
    """jr.dot_product_attention with settings, taking the sequence lengths positionally (the sampler's order)."""
    def fn(query, key, value, bias=None, mask=None, query_seq_lengths=None, key_value_seq_lengths=None):
        return jr.dot_product_attention(query, key, value, bias, mask, query_seq_lengths=query_seq_lengths,
                                        key_value_seq_lengths=key_value_seq_lengths, **settings)
    return fn


def _with(fn, settings: dict):
    return partial(fn, **settings) if settings else fn


def _row(name, module, reference, reference_name, sample, pullback, saves, cases, settings=None, **extra):
    settings = settings or {}
    return Rule(name=name, fn=_with(getattr(jr, name), settings), reference=reference,
                reference_name=reference_name, module=module, sample=sample, pullback=pullback, saves=saves,
                cases=cases, settings=", ".join(f"{k}={v!r}" for k, v in settings.items()), **extra)


def _act(name: str, pullback: str, saves: str, kinks: tuple[float, ...] = (), settings: dict | None = None,
         reference: Callable | None = None, reference_name: str | None = None, **extra) -> Rule:
    settings = settings or {}
    fn = getattr(jr, name)
    ref = reference or getattr(jax.nn, name)
    if settings:
        fn, ref = partial(fn, **settings), partial(ref, **settings)
    return Rule(name=name, fn=fn, reference=ref, reference_name=reference_name or f"jax.nn.{name}",
                module="activations", sample=away_from(*kinks), pullback=pullback, saves=saves,
                settings=", ".join(f"{k}={v}" for k, v in settings.items()), elementwise=True, **extra)


# --- normalization and transformer blocks: samplers and plain-formula references --------------

def _wide(x: jax.Array) -> jax.Array:
    """x in at least float32: the plain formulas take statistics of half floats in float32, as the rules do."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _norm_axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    return tuple(sorted(a % ndim for a in ((axis,) if isinstance(axis, int) else axis)))


def _lay_out(p, x, axes):
    """A scale or bias whose shape broadcasts to the normalized axes' shape, as an array broadcasting to x."""
    if p is None:
        return None
    p = jnp.broadcast_to(p, tuple(x.shape[a] for a in axes))
    return jnp.expand_dims(p, tuple(i for i in range(x.ndim) if i not in axes))


def layer_norm_reference(x, scale=None, bias=None, *, axis=-1, epsilon=1e-6):
    """(x − mean)·rsqrt(mean (x − mean)² + ε)·scale + bias, differentiated by jax."""
    axes = _norm_axes(axis, x.ndim)
    xw = _wide(x)
    c = xw - jnp.mean(xw, axes, keepdims=True)
    y = c * jax.lax.rsqrt(jnp.mean(c * c, axes, keepdims=True) + epsilon)
    if scale is not None:
        y = y * _lay_out(scale, x, axes)
    if bias is not None:
        y = y + _lay_out(bias, x, axes)
    return y.astype(jnp.result_type(*(a for a in (x, scale, bias) if a is not None)))


def rms_norm_reference(x, scale=None, *, axis=-1, epsilon=1e-6):
    """x·rsqrt(mean x² + ε)·scale, differentiated by jax."""
    axes = _norm_axes(axis, x.ndim)
    xw = _wide(x)
    y = xw * jax.lax.rsqrt(jnp.mean(xw * xw, axes, keepdims=True) + epsilon)
    y = y if scale is None else y * _lay_out(scale, x, axes)
    return y.astype(x.dtype if scale is None else jnp.result_type(x, scale))


def standardize_reference(x, axis=-1, mean=None, variance=None, epsilon=1e-5, where=None, algorithm="fast"):
    """jax.nn.standardize with half floats taken to float32 and the result rounded back to their dtype
    (the rule's contract for bfloat16 and float16; in the half type itself, jax.nn's gradient overflows
    on rows of tiny variance: (v + ε)^(−3/2) > 65504)."""
    args = (x, mean, variance, epsilon)
    out = jnp.result_type(*(a for a in args if a is not None))
    x, mean, variance, epsilon = (None if a is None else _wide(jnp.asarray(a)) for a in args)
    return jax.nn.standardize(x, axis, mean, variance, epsilon, where, algorithm=algorithm).astype(out)


def _rows_mask(rng, shape, axes):
    """A boolean mask with about a third left out and at least one entry kept in every row over axes."""
    w = rng.uniform(size=shape) < 2 / 3
    if all(shape[a] > 0 for a in axes):
        w[tuple(0 if i in axes else slice(None) for i in range(len(shape)))] = True
    return jnp.asarray(w)


def _standardize_where(axis):
    def sample(seed, shape, dtype):
        rng = np.random.default_rng(seed)
        return _array(rng.standard_normal(shape), dtype), _rows_mask(rng, shape, _norm_axes(axis, len(shape)))
    return sample


def _standardize_given(seed, shapes, dtype):
    """(x, mean, variance, epsilon) with the shapes of the case (None: not given); variance, epsilon > 0."""
    rng = np.random.default_rng(seed)
    draw = (rng.standard_normal, lambda sh: 0.3 * rng.standard_normal(sh), lambda sh: rng.uniform(0.5, 2.0, sh),
            lambda sh: rng.uniform(0.1, 0.5, sh))
    return tuple(None if sh is None else _array(f(sh), dtype) for f, sh in zip(draw, shapes))


def dropout_reference(rate, training=True):
    """flax's dropout: jnp.where(bernoulli(key, 1 − rate), x/(1 − rate), 0), differentiated by jax."""
    def reference(x, key):
        if not training or rate == 0:
            return x
        if rate == 1:
            return jnp.zeros_like(x)
        return jnp.where(jax.random.bernoulli(key, 1 - rate, x.shape), x / (1 - rate), 0)
    return reference


def _dropout_sample(seed, shape, dtype):
    return _array(np.random.default_rng(seed).standard_normal(shape), dtype), jax.random.key(seed)


def _embedding_sample(seed, shapes, dtype):
    """(table, ids): a normal table of shapes[0] and ids of shapes[1] in [−V, V) (negative ones count from the end)."""
    rng = np.random.default_rng(seed)
    v = shapes[0][0]
    ids = rng.integers(-v, v, shapes[1]) if v else np.zeros(shapes[1], int)
    return _array(rng.standard_normal(shapes[0]), dtype), jnp.asarray(ids, jnp.int32)


def rope_reference(x, positions=None, *, base=10000.0):
    """x cos α + rotate_half(x) sin α, rotate_half(x) = (−x₂, x₁), angles in float32, differentiated by jax."""
    t, d = x.shape[-3], x.shape[-1]
    xw = _wide(x)
    inv = 1.0 / base ** (jnp.arange(0, d // 2, dtype=xw.dtype) / (d // 2))
    pos = jnp.arange(t) if positions is None else positions
    angle = jnp.concatenate([pos[..., None].astype(xw.dtype) * inv] * 2, axis=-1)[..., None, :]
    x1, x2 = xw[..., : d // 2], xw[..., d // 2:]
    return (xw * jnp.cos(angle) + jnp.concatenate([-x2, x1], axis=-1) * jnp.sin(angle)).astype(x.dtype)


def _rope_sample(seed, shapes, dtype):
    """(x, positions): normal x of shapes[0], integer positions in [0, 64) of shapes[1] (None: the default)."""
    rng = np.random.default_rng(seed)
    pos = None if shapes[1] is None else jnp.asarray(rng.integers(0, 64, shapes[1]), jnp.int32)
    return _array(rng.standard_normal(shapes[0]), dtype), pos


# --- the table -------------------------------------------------------------------------------

# The fused rules loop with lax.scan; op by op, every scan is traced and compiled anew, so their
# primal and VJP are checked in one compilation (jit, vmap, grad of grad and finite differences run).
_SCAN_CHECKS = {"eager": False}
# The rows of a fused rule's options: values, VJPs and finite differences. The transformations (vmap,
# scan, checkpoint), grad of grad and forward mode ran on the rule's first row: they act on the rule's
# mechanism, which the options do not change (the options' forward mode against the plain formulas:
# tests/test_attention.py and tests/test_cross_entropy.py, in one compilation each).
_OPTION_CHECKS = {"eager": False, "vmap": False, "scan": False, "checkpoint": False, "grad_grad": False,
                  "jvp": False, "fwd_over_rev": False}

_LOW_PRECISION = {np.dtype(jnp.float16): (2e-2, 4e-3), np.dtype(jnp.bfloat16): (8e-2, 2e-2)}

RULES: tuple[Rule, ...] = (
    # activations (seeds 000, 001, 003)
    _act("sigmoid", "x̄ = y(1 − y) ∘ ȳ", "y"),
    _act("tanh", "x̄ = (1 − y²) ∘ ȳ", "y", reference=jnp.tanh, reference_name="jnp.tanh"),
    _act("relu", "x̄ = 1[x > 0] ∘ ȳ", "mask", kinks=(0.0,)),
    _act("relu", "x̄ = (1[x > 0] + ½·1[x = 0]) ∘ ȳ", "2 masks", kinks=(0.0,), settings={"grad_at_zero": 0.5},
         reference=lambda x, grad_at_zero: jax.nn.relu(x), reference_name="jax.nn.relu"),
    _act("leaky_relu", "x̄ = (1 if x ≥ 0 else α) ∘ ȳ", "mask", kinks=(0.0,)),
    _act("elu", "x̄ = (1 if y > 0 else y + α) ∘ ȳ", "y", kinks=(0.0,)),
    _act("celu", "x̄ = (1 if y > 0 else y/α + 1) ∘ ȳ", "y", kinks=(0.0,)),
    _act("selu", "x̄ = (λ if y > 0 else y + λα) ∘ ȳ", "y", kinks=(0.0,)),
    _act("gelu", "x̄ = (½(1 + t) + ½x(1 − t²)√(2/π)(1 + 0.134145x²)) ∘ ȳ", "x"),
    _act("gelu", "x̄ = (Φ(x) + xφ(x)) ∘ ȳ", "x", settings={"approximate": False}),
    _act("silu", "x̄ = σ(x)(1 + x(1 − σ(x))) ∘ ȳ", "x"),
    _act("softplus", "x̄ = −expm1(−y) ∘ ȳ = σ(x) ∘ ȳ", "y"),
    _act("log_sigmoid", "x̄ = −expm1(y) ∘ ȳ = σ(−x) ∘ ȳ", "y"),
    _act("mish", "x̄ = (tanh s + x(1 − tanh² s)σ(x)) ∘ ȳ, s = softplus(x)", "x"),
    _act("relu6", "x̄ = 1[0 < x < 6] ∘ ȳ", "mask", kinks=(0.0, 6.0)),
    _act("hard_sigmoid", "x̄ = ⅙·1[−3 < x < 3] ∘ ȳ", "mask", kinks=(-3.0, 3.0)),
    _act("hard_silu", "x̄ = (h(x) + x/6·1[−3 < x < 3]) ∘ ȳ", "x", kinks=(-3.0, 3.0)),
    _act("hard_tanh", "x̄ = 1[−1 ≤ x ≤ 1] ∘ ȳ", "mask", kinks=(-1.0, 1.0)),
    _act("soft_sign", "x̄ = ȳ / (|x| + 1)²", "x"),
    _act("squareplus", "x̄ = y²/(y² + b/4) ∘ ȳ", "y"),
    _act("sparse_plus", "x̄ = min(√y, 1) ∘ ȳ", "y", kinks=(-1.0, 1.0)),
    _act("sparse_sigmoid", "x̄ = ½·1[−1 < x < 1] ∘ ȳ", "mask", kinks=(-1.0, 1.0)),
    Rule("rrelu", jr.rrelu, _rrelu_reference(1 / 8, 1 / 3, True), "jnp.where(x ≥ 0, x, a·x), a ~ U(⅛, ⅓)",
         "activations", _rrelu_sample, "x̄ = (1 if x ≥ 0 else a) ∘ ȳ, a redrawn from the key", "mask + key",
         elementwise=True),
    Rule("rrelu", partial(jr.rrelu, training=False), _rrelu_reference(1 / 8, 1 / 3, False),
         "jnp.where(x ≥ 0, x, a·x), a = 11/48", "activations", _rrelu_sample,
         "x̄ = (1 if x ≥ 0 else (l + u)/2) ∘ ȳ", "mask", settings="training=False", elementwise=True),
    # arithmetic (seed 001, 002)
    Rule("add", jr.add, jnp.add, "jnp.add", "arithmetic", _pair(), "x̄ = unbroadcast(z̄), ȳ = unbroadcast(z̄)",
         "shapes", cases=BROADCAST_PAIRS),
    Rule("subtract", jr.subtract, jnp.subtract, "jnp.subtract", "arithmetic", _pair(),
         "x̄ = unbroadcast(z̄), ȳ = −unbroadcast(z̄)", "shapes", cases=BROADCAST_PAIRS),
    Rule("multiply", jr.multiply, jnp.multiply, "jnp.multiply", "arithmetic", _pair(),
         "x̄ = unbroadcast(z̄ ∘ y), ȳ = unbroadcast(z̄ ∘ x)", "x, y", cases=BROADCAST_PAIRS),
    Rule("divide", jr.divide, jnp.divide, "jnp.divide", "arithmetic", _pair(y_away_from_zero=True),
         "x̄ = unbroadcast(z̄ / y), ȳ = −unbroadcast(z̄ ∘ (x/y) / y)", "x, y", cases=BROADCAST_PAIRS,
         tol=_LOW_PRECISION),
    # linear maps (seeds 002, 003, 004)
    _row("matmul", "linear", jnp.matmul, "jnp.matmul", _normal(), "Ā = Ȳ Bᵀ, B̄ = Aᵀ Ȳ (summed over broadcast batch)",
         "a, b", (((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 1, 3, 4), (5, 4, 2)),
                  ((0, 4), (4, 5)))),
    _row("dense", "linear", lambda x, W, b: x @ W if b is None else x @ W + b, "x @ W + b", _normal(),
         "x̄ = ȳ Wᵀ, W̄ = Σ xᵀ ȳ, b̄ = Σ ȳ", "x, W",
         (((2, 3, 4), (4, 5), (5,)), ((4,), (4, 5), None), ((6, 4), (4, 3), (3,)), ((0, 4), (4, 3), (3,)))),
    _row("conv", "linear", _conv_reference(), "lax.conv_general_dilated", _normal(),
         "x̄ = ȳ ⋆ᵀ W (transposed conv), W̄ = x ⋆ ȳ, b̄ = Σ ȳ", "x, W",
         (((2, 6, 5, 3), (3, 2, 3, 4), (4,)), ((2, 7, 3), (3, 3, 2), None), ((1, 4, 4, 3, 2), (2, 2, 2, 2, 2), (2,)))),
    _row("conv", "linear", _conv_reference(2, "SAME", 1), "lax.conv_general_dilated", _normal(),
         "x̄ = ȳ ⋆ᵀ W (transposed conv), W̄ = x ⋆ ȳ, b̄ = Σ ȳ", "x, W",
         (((2, 7, 6, 3), (3, 3, 3, 4), (4,)), ((2, 9, 2), (4, 2, 3), (3,))), settings={"strides": 2, "padding": "SAME"}),
    _row("conv", "linear", _conv_reference((2, 1), ((1, 2), (0, 1)), (1, 2)), "lax.conv_general_dilated", _normal(),
         "x̄ = ȳ ⋆ᵀ W (transposed conv), W̄ = x ⋆ ȳ, b̄ = Σ ȳ", "x, W",
         (((2, 8, 9, 2), (3, 3, 2, 3), (3,)),),
         settings={"strides": (2, 1), "padding": ((1, 2), (0, 1)), "dilation": (1, 2)}),
    # vector activations and multiplicative combinations (seed 003)
    _row("softmax", "softmax", jax.nn.softmax, "jax.nn.softmax", _normal(), "x̄ = y ∘ (ȳ − Σ ȳ ∘ y)", "y",
         (((3, 4),), ((7,),), ((2, 3, 5),), ((0, 4),))),
    _row("softmax", "softmax", partial(jax.nn.softmax, axis=(0, 2)), "jax.nn.softmax", _normal(),
         "x̄ = y ∘ (ȳ − Σ ȳ ∘ y)", "y", (((2, 3, 5),),), settings={"axis": (0, 2)}),
    Rule("softmax", lambda x, w: jr.softmax(x, -1, w), lambda x, w: jax.nn.softmax(x, -1, where=w),
         "jax.nn.softmax", "softmax", _masked, "x̄ = y ∘ (ȳ − Σ ȳ ∘ y); masked: 0", "y",
         cases=((4, 5), (6,)), settings="where=mask"),
    _row("log_softmax", "softmax", jax.nn.log_softmax, "jax.nn.log_softmax", _normal(), "x̄ = ȳ − eʸ Σ ȳ", "y",
         (((3, 4),), ((7,),), ((2, 3, 5),), ((0, 4),))),
    Rule("log_softmax", lambda x, w: jr.log_softmax(x, -1, w), lambda x, w: jax.nn.log_softmax(x, -1, where=w),
         "jax.nn.log_softmax", "softmax", _masked, "x̄ = ȳ − eʸ Σ ȳ; masked: 0", "y, mask",
         cases=((4, 5), (6,)), settings="where=mask",
         # masked outputs are -inf, where central differences are undefined
         checks={"fd": False}),
    _row("logsumexp", "softmax", jax.nn.logsumexp, "jax.nn.logsumexp", _normal(),
         "ā = ȳ ∘ e^(a − y)", "a, log Σe^(a − max a)", (((3, 4),), ((7,),), ((2, 3, 5),), ((0, 4),))),
    _row("logsumexp", "softmax", partial(jax.nn.logsumexp, axis=-1), "jax.nn.logsumexp", _normal(),
         "ā = ȳ ∘ e^(a − y)", "a, log Σe^(a − max a)", (((3, 4),), ((7,),), ((0, 4),)), settings={"axis": -1}),
    Rule("logsumexp", lambda a, b: jr.logsumexp(a, axis=(0, 2), b=b), lambda a, b: jax.nn.logsumexp(a, axis=(0, 2), b=b),
         "jax.nn.logsumexp", "softmax", _logits_and_weights,
         "ā = ȳ ∘ b e^(a − y), b̄ = ȳ ∘ e^(a − y)", "a, b, log Σb e^(a − max a)", cases=(((2, 3, 5), (2, 1, 5)), ((2, 3, 5), (5,))),
         settings="axis=(0, 2), b=weights"),
    Rule("logsumexp", lambda x, w: jr.logsumexp(x, axis=-1, where=w), _masked_logsumexp,
         "jax.nn.logsumexp", "softmax", _masked, "ā = ȳ ∘ e^(a − y); masked: 0", "a, log Σe^(a − max a), mask",
         cases=((4, 5), (6,)), settings="axis=-1, where=mask",
         # the fully masked row is -inf, where central differences are undefined
         checks={"fd": False}),
    _row("glu", "softmax", jax.nn.glu, "jax.nn.glu", _normal(), "ā = ȳ ∘ σ(b), b̄ = ȳ ∘ a ∘ σ(b)(1 − σ(b))", "x",
         (((3, 4),), ((4,),), ((2, 3, 6),), ((0, 4),))),
    _row("pair_product", "softmax", lambda x: x[..., 0::2] * x[..., 1::2], "x[..., 0::2] * x[..., 1::2]", _normal(),
         "x̄₂ᵢ₋₁ = ȳᵢ x₂ᵢ, x̄₂ᵢ = ȳᵢ x₂ᵢ₋₁", "x", (((3, 4),), ((4,),), ((2, 3, 6),), ((0, 4),))),
    # max over subsets (seed 003); tie-free inputs here, ties in tests/test_pooling.py
    _row("max", "pooling", jnp.max, "jnp.max", distinct, "x̄ = ȳ at the first argmax, 0 elsewhere", "argmax (int32)",
         ((3, 4), (7,), (2, 3, 5))),
    _row("max", "pooling", partial(jnp.max, axis=(0, 2), keepdims=True), "jnp.max", distinct,
         "x̄ = ȳ at the first argmax, 0 elsewhere", "argmax (int32)", ((2, 3, 5), (3, 1, 4)),
         settings={"axis": (0, 2), "keepdims": True}),
    _row("max", "pooling", partial(jnp.max, axis=-1), "jnp.max", distinct,
         "x̄ = ȳ at the first argmax, 0 elsewhere", "argmax (int32)", ((3, 4), (0, 4)), settings={"axis": -1}),
    _row("max_pool", "pooling", _window_reference("max", (2, 2)), "flax.linen.max_pool (lax.reduce_window)", distinct,
         "x̄ = Σ_j ȳ_j at window j's first argmax", "argmax (int32)", ((2, 6, 6, 3), (5, 4, 2)),
         settings={"window_shape": (2, 2)}),
    _row("max_pool", "pooling", _window_reference("max", (3, 2), (2, 1), "SAME"), "flax.linen.max_pool (lax.reduce_window)",
         distinct, "x̄ = Σ_j ȳ_j at window j's first argmax", "argmax (int32)", ((2, 7, 5, 3),),
         settings={"window_shape": (3, 2), "strides": (2, 1), "padding": "SAME"}),
    _row("max_pool", "pooling", _window_reference("max", (3,), (2,), ((1, 2),)), "flax.linen.max_pool (lax.reduce_window)",
         distinct, "x̄ = Σ_j ȳ_j at window j's first argmax", "argmax (int32)", ((2, 8, 3),),
         settings={"window_shape": (3,), "strides": (2,), "padding": ((1, 2),)}),
    _row("avg_pool", "pooling", _window_reference("avg", (2, 2)), "flax.linen.avg_pool (lax.reduce_window)", _normal(),
         "x̄ = window-sum of (ȳ / c) dilated by the strides", "shapes", (((2, 6, 6, 3),), ((5, 4, 2),)),
         settings={"window_shape": (2, 2)}),
    _row("avg_pool", "pooling", _window_reference("avg", (3, 2), (2, 1), "SAME", False),
         "flax.linen.avg_pool (lax.reduce_window)", _normal(), "x̄ = window-sum of (ȳ / c) dilated by the strides",
         "shapes", (((2, 7, 5, 3),),),
         settings={"window_shape": (3, 2), "strides": (2, 1), "padding": "SAME", "count_include_pad": False}),
    # divergences (seeds 003, 004), optax's names and per-example results
    _row("squared_error", "losses", optax.squared_error, "optax.squared_error", _normal(),
         "f̄ = 2(f − t) ∘ ℓ̄, t̄ = −f̄", "f, t", (((3, 4), (3, 4)), ((), ()), ((0, 3), (0, 3)), ((5,), None))),
    _row("l2_loss", "losses", optax.l2_loss, "optax.l2_loss", _normal(), "f̄ = (f − t) ∘ ℓ̄, t̄ = −f̄", "f, t",
         (((3, 4), (3, 4)), ((), ()), ((5,), None))),
    _row("kl_divergence", "losses", optax.kl_divergence, "optax.kl_divergence", _distribution,
         "(log p)‾ = −t ∘ ℓ̄, t̄ = (log t − log p + 1) ∘ ℓ̄", "log p, t", ((4, 5), (5,), (2, 3, 4), (0, 5))),
    _row("softmax_cross_entropy", "losses", optax.softmax_cross_entropy, "optax.softmax_cross_entropy",
         _logits_and_distribution, "z̄ = ℓ̄ ∘ (softmax(z) Σd − d), d̄ = −log softmax(z) ∘ ℓ̄", "log softmax(z), d",
         ((4, 5), (5,), (2, 3, 4), (0, 5))),
    _row("softmax_cross_entropy_with_integer_labels", "losses", optax.softmax_cross_entropy_with_integer_labels,
         "optax.softmax_cross_entropy_with_integer_labels", _logits_and_classes,
         "z̄ = ℓ̄ ∘ (softmax(z) − onehot(c))", "z, log Σe^(z − max z), c", ((4, 5), (5,), (2, 3, 4), (0, 5))),
    _row("sigmoid_binary_cross_entropy", "losses", optax.sigmoid_binary_cross_entropy,
         "optax.sigmoid_binary_cross_entropy", _logits_and_probabilities, "z̄ = ℓ̄ ∘ (σ(z) − d), d̄ = −z ∘ ℓ̄", "z, d",
         ((4, 5), (), (0, 3))),
    Rule("sigmoid_binary_cross_entropy", jr.sigmoid_binary_cross_entropy, optax.sigmoid_binary_cross_entropy,
         "optax.sigmoid_binary_cross_entropy", "losses", _logits_and_bits, "z̄ = ℓ̄ ∘ (σ(z) − d)", "z, d",
         cases=((4, 5), (7,)), settings="integer labels"),
    # normalization and transformer blocks: the plain formulas differentiated by jax, standardize against jax.nn
    Rule("layer_norm", jr.layer_norm, layer_norm_reference, "(x − mean)·rsqrt(var + ε)·s + b (jnp)", "normalization",
         _normal(), "x̄ = r(ĝ − mean ĝ − x̂ mean(ĝ ∘ x̂)), ĝ = ȳ ∘ s, s̄ = Σ ȳ ∘ x̂, b̄ = Σ ȳ",
         "x, s; mean, r per row", cases=(((3, 8), (8,), (8,)), ((2, 3, 4), None, None), ((4, 1), (1,), (1,)),
                                          ((0, 4), (4,), (4,)))),
    Rule("layer_norm", partial(jr.layer_norm, axis=(-2, -1)), partial(layer_norm_reference, axis=(-2, -1)),
         "(x − mean)·rsqrt(var + ε)·s + b (jnp)", "normalization", _normal(), "as above, over both axes",
         "x, s; mean, r per row", cases=(((2, 3, 4), (3, 4), (4,)),), settings="axis=(-2, -1)"),
    Rule("rms_norm", jr.rms_norm, rms_norm_reference, "x·rsqrt(mean x² + ε)·s (jnp)", "normalization", _normal(),
         "x̄ = r(ĝ − x̂ mean(ĝ ∘ x̂)), ĝ = ȳ ∘ s, s̄ = Σ ȳ ∘ x̂", "x, s; r per row",
         cases=(((3, 8), (8,)), ((2, 3, 4), None), ((0, 4), (4,)))),
    _row("standardize", "normalization", jax.nn.standardize, "jax.nn.standardize", _normal(),
         "x̄ = r(ȳ − mean ȳ − y mean(ȳ ∘ y))", "y; r per row", (((3, 8),), ((2, 3, 5),), ((4, 1),), ((0, 4),))),
    Rule("standardize", lambda x, w: jr.standardize(x, where=w), lambda x, w: jax.nn.standardize(x, where=w),
         "jax.nn.standardize", "normalization", _standardize_where(-1),
         "x̄ = r(ȳ − (w/n)Σ ȳ − (w/n) y Σ ȳ ∘ y), w = mask", "y, mask; r per row", cases=((4, 5), (6,)),
         settings="where=mask"),
    Rule("standardize", lambda x, m, v, e: jr.standardize(x, -1, m, v, e),
         lambda x, m, v, e: jax.nn.standardize(x, -1, m, v, e), "jax.nn.standardize", "normalization",
         _standardize_given, "x̄ = ȳ r, m̄ = −Σ ȳ r, v̄ = ε̄ = −½ Σ ȳ ∘ y r²", "y, r",
         cases=(((3, 5), (3, 1), (5,), ()), ((4,), (), (), ())), settings="mean, variance, epsilon given"),
    Rule("dropout", lambda x, key: jr.dropout(x, key, 0.5), dropout_reference(0.5),
         "jnp.where(bernoulli(key, 1 − p), x/(1 − p), 0) (flax)", "transformer", _dropout_sample,
         "x̄ = m ∘ ȳ/(1 − p), the mask m drawn again from the key", "key", cases=((4, 5), (), (7,), (0, 3)),
         settings="rate=0.5", checks={"eager": False}),  # op by op, every random draw compiles: eager in tests/test_transformer.py
    Rule("embedding", jr.embedding, lambda t, i: jnp.take(t, i, axis=0), "jnp.take(table, ids, axis=0)", "transformer",
         _embedding_sample, "T̄ = scatter-add of ȳ onto the rows ids (repeats add up); ids outside [−V, V) give "
         "NaN rows and no gradient (jnp.take's default)", "ids",
         cases=(((6, 3), (2, 3)), ((5, 4), ()), ((4,), (3,)), ((5, 2, 3), (4,)), ((3, 2), (0,)))),
    Rule("rope", jr.rope, rope_reference, "x cos α + rotate_half(x) sin α (jnp)", "transformer", _rope_sample,
         "x̄ = (ȳ₁ cos α + ȳ₂ sin α, ȳ₂ cos α − ȳ₁ sin α), sin and cos recomputed", "positions",
         cases=(((2, 5, 3, 4), (2, 5)), ((5, 2, 6), None), ((2, 4, 1, 2), (4,)), ((0, 3, 2, 4), (3,)))),
    _row("swiglu", "transformer", lambda a, b: jax.nn.silu(a) * b, "jax.nn.silu(a) * b", _pair(),
         "ā = ȳ ∘ b ∘ silu′(a), b̄ = ȳ ∘ silu(a)", "a, b", (((3, 4), (3, 4)), ((3, 4), (4,)), ((), ()), ((0, 4), (4,)))),
    _row("geglu", "transformer", lambda a, b: jax.nn.gelu(a) * b, "jax.nn.gelu(a) * b", _pair(),
         "ā = ȳ ∘ b ∘ gelu′(a), b̄ = ȳ ∘ gelu(a)", "a, b", (((3, 4), (3, 4)), ((3, 4), (4,)), ((), ()), ((0, 4), (4,)))),
    _row("geglu", "transformer", lambda a, b: jax.nn.gelu(a, approximate=False) * b,
         "jax.nn.gelu(a, approximate=False) * b", _pair(), "ā = ȳ ∘ b ∘ gelu′(a), b̄ = ȳ ∘ gelu(a)", "a, b",
         (((3, 4), (4,)),), settings={"approximate": False}),
    # memory-lean fused rules: cross-entropy of an output layer, attention over 2-D tiles
    Rule("linear_softmax_cross_entropy", _linear_xent({"chunk_size": 4}), linear_xent_reference(),
         "optax.softmax_cross_entropy_with_integer_labels(x @ W + b, labels)", "cross_entropy", _linear_xent_sample,
         "x̄ = z̄ Wᵀ, W̄ = xᵀ z̄, b̄ = Σ z̄, z̄ = ℓ̄ ∘ (softmax(z) − onehot(c)), chunk by chunk (rows) over all of V",
         "x, W, b, c, logsumexp (N)", cases=((6, 5, 11, True, False), (9, 3, 64, True, True), (3, 4, 8, False, False),
                                             (1, 3, 2, True, False), (0, 3, 5, True, False)),
         settings="chunk_size=4", checks=_SCAN_CHECKS),
    Rule("linear_softmax_cross_entropy",
         _linear_xent({"chunk_size": 4, "label_smoothing": 0.1, "z_loss": 0.01, "logit_softcap": 2.0}),
         linear_xent_reference(label_smoothing=0.1, z_loss=0.01, logit_softcap=2.0),
         "optax.softmax_cross_entropy(c·tanh(z/c), optax.smooth_labels(onehot, α)) + λ·lse(z)²", "cross_entropy",
         _linear_xent_sample, "z̄ = ℓ̄ ∘ (softmax(z)(1 + 2λ·lse) − (1 − α)·onehot(c) − α/V) ∘ (1 − (z/c)²)",
         "x, W, b, c, logsumexp (N)", cases=((6, 5, 11, True, True), (5, 2, 32, False, False)),
         settings="chunk_size=4, label_smoothing=0.1, z_loss=0.01, logit_softcap=2.0", checks=_OPTION_CHECKS),
    Rule("linear_softmax_cross_entropy", _linear_xent({"chunk_size": 4, "reduction": "mean", "label_smoothing": 0.1}),
         linear_xent_reference("mean", label_smoothing=0.1), "mean over where of the above (optax)",
         "cross_entropy", _linear_xent_sample,
         "x̄ = ȳ·x̄₀, W̄ = ȳ·W̄₀, b̄ = ȳ·b̄₀: x̄₀, W̄₀, b̄₀ (the gradient at ȳ = 1) formed in the forward",
         "x̄₀, W̄₀, b̄₀", cases=((6, 5, 11, True, True), (9, 3, 64, False, False), (1, 2, 3, True, False)),
         settings="chunk_size=4, reduction='mean', label_smoothing=0.1", checks=_OPTION_CHECKS),
    Rule("linear_softmax_cross_entropy",
         _linear_xent({"chunk_size": 4, "reduction": "sum", "z_loss": 0.01, "logit_softcap": 2.0}),
         linear_xent_reference("sum", z_loss=0.01, logit_softcap=2.0), "sum of the above (optax)", "cross_entropy",
         _linear_xent_sample, "as above, the gradient at ȳ = 1 formed in the forward", "x̄₀, W̄₀, b̄₀",
         cases=((7, 3, 11, True, True), (0, 3, 5, True, False)),
         settings="chunk_size=4, reduction='sum', z_loss=0.01, logit_softcap=2.0", checks=_OPTION_CHECKS),
    Rule("dot_product_attention", _attention({"block_size": 3}), attention_reference(),
         "softmax(s QKᵀ + bias) V (jnp; jax.nn in float32)", "attention", _attention_sample,
         "V̄ = Pᵀ Ō, S̄ = P ∘ (Ō Vᵀ − rowsum(Ō ∘ O)), Q̄ = s S̄ K, K̄ = s S̄ᵀ Q, bias̄ = S̄, tile by tile",
         "q, k, v, O, logsumexp (rows)",
         cases=(((2, 5, 4, 3), (2, 7, 2, 3), (1, 4, 5, 7), (2, 1, 5, 7)), ((5, 2, 3), (7, 2, 3), (5, 1), None)),
         # vmap: check_sharded's (tests/sharded_rules.py) vmaps it and its VJP over a masked batch
         settings="block_size=3", checks=_SCAN_CHECKS | {"vmap": False}),
    Rule("dot_product_attention", _attention({"is_causal": True, "block_size": 2}), attention_reference(is_causal=True),
         "softmax(s QKᵀ + bias) V (jnp; jax.nn in float32)", "attention", _attention_sample,
         "as above, keys s ≤ t; tiles above the diagonal skipped; rows that see no key: the mean of V",
         "q, k, v, O, logsumexp (rows)",
         cases=(((2, 7, 4, 3), (2, 5, 1, 3), None, (2, 1, 7, 5), "empty rows"), ((5, 2, 3), (5, 2, 3), None, None)),
         settings="is_causal=True, block_size=2", checks=_OPTION_CHECKS),
    Rule("dot_product_attention", _attention({"block_size": 3, "return_residual": True}),
         attention_reference(return_residual=True), "(softmax(s QKᵀ + bias) V, logsumexp) (jnp; jax.nn in float32)",
         "attention", _attention_sample, "as above; the logsumexp is returned without a gradient, as jax.nn's",
         "q, k, v, O, logsumexp (rows)", cases=(((2, 5, 4, 3), (2, 7, 2, 3), (1, 4, 5, 7), None),),
         settings="block_size=3, return_residual=True",
         # finite differences see the logsumexp move, while its gradient is stopped (as jax.nn's)
         checks=_OPTION_CHECKS | {"fd": False}),
    Rule("dot_product_attention", _attention({"local_window_size": (2, 1), "block_size": (2, 3)}),
         attention_reference(local_window_size=(2, 1)),
         "softmax(s QKᵀ + bias) V (jnp; jax.nn in float32)", "attention", _attention_sample,
         "as above, keys t − 2 ≤ s ≤ t + 1 below the sequence lengths; tiles outside skipped",
         "q, k, v, O, logsumexp (rows)",
         cases=(((2, 7, 2, 3), (2, 8, 2, 3), (2, 2, 7, 8), None, "lengths"),),
         settings="local_window_size=(2, 1), block_size=(2, 3), query/key_value_seq_lengths",
         checks=_OPTION_CHECKS),
)


# --- extremes: where the textbook formula differentiated by jax fails ------------------------

@dataclass(frozen=True)
class Extreme:
    """One row of the extremes table: an input where the textbook formula's jax gradient is wrong.

    ours / textbook / stable: functions of x (the other arguments bound). ``stable`` is a library
    function (jax.nn, optax, jnp) that is right there, evaluated in float64 for the correct gradient;
    with ``nan=True`` the input holds a NaN and the correct gradient is NaN.
    """

    rule: str
    ours: Callable[[jax.Array], jax.Array]
    textbook: Callable[[jax.Array], jax.Array]
    textbook_text: str
    stable: Callable[[jax.Array], jax.Array]
    x: tuple
    dtype: Any = jnp.float32
    nan: bool = False

    def gradients(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ours, textbook, correct): the gradient of Σ f(x) under each, as float64 NumPy arrays."""
        def grad(f, x):
            y, back = jax.vjp(f, x)
            return np.asarray(back(jnp.ones_like(y))[0], np.float64)
        x = jnp.asarray(self.x, self.dtype)
        with jax.enable_x64(True):
            correct = grad(self.stable, jnp.asarray(self.x, jnp.float64))
        return grad(self.ours, x), grad(self.textbook, x), correct


_LABEL1 = np.array([1], np.int32)


def _where_elu(x):
    return jnp.where(x > 0, x, jnp.exp(x) - 1)


EXTREMES: tuple[Extreme, ...] = (
    Extreme("sigmoid", jr.sigmoid, lambda x: 1 / (1 + jnp.exp(-x)), "1/(1 + exp(−x))", jax.nn.sigmoid,
            (-1000.0, -jnp.inf)),
    Extreme("softplus", jr.softplus, lambda x: jnp.log(1 + jnp.exp(x)), "log(1 + exp(x))", jax.nn.softplus,
            (89.0, 1000.0, jnp.inf)),
    Extreme("softplus", jr.softplus, lambda x: jnp.log(1 + jnp.exp(x)), "log(1 + exp(x))", jax.nn.softplus,
            (12.0, 1e4), jnp.float16),
    Extreme("log_sigmoid", jr.log_sigmoid, lambda x: -jnp.log(1 + jnp.exp(-x)), "−log(1 + exp(−x))",
            jax.nn.log_sigmoid, (-89.0, -1000.0)),
    Extreme("silu", jr.silu, lambda x: x / (1 + jnp.exp(-x)), "x/(1 + exp(−x))", jax.nn.silu, (-1000.0,)),
    Extreme("mish", jr.mish, lambda x: x * jnp.tanh(jnp.log(1 + jnp.exp(x))), "x tanh(log(1 + exp(x)))",
            jax.nn.mish, (1000.0,)),
    Extreme("tanh", jr.tanh, lambda x: (jnp.exp(x) - jnp.exp(-x)) / (jnp.exp(x) + jnp.exp(-x)),
            "(eˣ − e⁻ˣ)/(eˣ + e⁻ˣ)", jnp.tanh, (100.0, -100.0)),
    Extreme("elu", jr.elu, _where_elu, "where(x > 0, x, exp(x) − 1)", jax.nn.elu, (1000.0,)),
    Extreme("squareplus", jr.squareplus, lambda x: (x + jnp.sqrt(x * x + 4)) / 2, "(x + √(x² + 4))/2",
            jax.nn.squareplus, (-1e30, 1e30)),
    Extreme("log_softmax", lambda z: jr.log_softmax(z)[:, 1], lambda z: jnp.log(jax.nn.softmax(z))[:, 1],
            "log(softmax(z))", lambda z: jax.nn.log_softmax(z)[:, 1], ((200.0, -200.0, 0.0),)),
    Extreme("logsumexp", lambda a: jr.logsumexp(a, axis=-1), lambda a: jnp.log(jnp.sum(jnp.exp(a), -1)),
            "log Σ exp(a)", lambda a: jax.nn.logsumexp(a, axis=-1), ((1000.0, 0.0, -1000.0),)),
    Extreme("softmax_cross_entropy_with_integer_labels",
            lambda z: jr.softmax_cross_entropy_with_integer_labels(z, _LABEL1),
            lambda z: -jnp.log(jax.nn.softmax(z))[:, 1], "−log(softmax(z)[c])",
            lambda z: optax.softmax_cross_entropy_with_integer_labels(z, _LABEL1), ((200.0, -200.0, 0.0),)),
    Extreme("sigmoid_binary_cross_entropy", lambda z: jr.sigmoid_binary_cross_entropy(z, jnp.ones_like(z)),
            lambda z: -jnp.log(1 / (1 + jnp.exp(-z))), "−log(1/(1 + exp(−z))), d = 1",
            lambda z: optax.sigmoid_binary_cross_entropy(z, jnp.ones_like(z)), (-200.0, -1e4)),
    Extreme("kl_divergence (targets; 0·log 0 = 0, a zero target is held constant)",
            lambda t: jr.kl_divergence(jnp.log(jnp.full_like(t, 1 / 3)), t),
            lambda t: optax.kl_divergence(jnp.log(jnp.full_like(t, 1 / 3)), t), "optax.kl_divergence",
            lambda t: jnp.sum(jnp.where(t > 0, t * (jnp.log(jnp.where(t > 0, t, 1)) + jnp.log(3.0)), 0), -1),
            ((0.0, 0.5, 0.5),)),
    Extreme("dot_product_attention (value; a row that sees no key averages the values, as jax.nn)",
            lambda v: jr.dot_product_attention(jnp.ones_like(v), jnp.ones_like(v), v, mask=np.zeros(2, bool)),
            lambda v: jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(jnp.full((1, 1, 2, 2), -jnp.inf), axis=-1), v),
            "softmax(where(mask, QKᵀ/√d, −∞)) V", lambda v: jax.nn.dot_product_attention(
                jnp.ones_like(v), jnp.ones_like(v), v, mask=np.zeros(2, bool)), ((((1.0, 2.0),), ((3.0, 4.0),)),)),
    Extreme("relu (NaN in)", jr.relu, jax.nn.relu, "jax.nn.relu", lambda x: x * jnp.nan, (jnp.nan,), nan=True),
)


def _fmt(g: np.ndarray) -> str:
    flat = np.asarray(g, np.float64).reshape(-1)
    return ", ".join("nan" if np.isnan(v) else f"{v + 0.0:.4g}" for v in flat)  # + 0.0: no "-0"


def extremes_table() -> str:
    """The README's extremes table, computed: the gradient of Σ f(x) by each formula."""
    lines = ["| rule | x | textbook formula | its gradient (jax autodiff) | jaxrules | correct (float64) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for e in EXTREMES:
        ours, textbook, correct = e.gradients()
        x = _fmt(np.asarray(e.x, np.float64))
        lines.append(f"| `{e.rule}` | {x} ({jnp.dtype(e.dtype).name}) | {e.textbook_text} | {_fmt(textbook)} | "
                     f"{_fmt(ours)} | {_fmt(correct)} |")
    return "\n".join(lines)


def by_id() -> dict[str, Rule]:
    return {r.id: r for r in RULES}


# --- the README table ------------------------------------------------------------------------

BEGIN, END = "<!-- rules:begin (generated by python -m jaxrules.catalog --write README.md) -->", "<!-- rules:end -->"
XBEGIN, XEND = ("<!-- extremes:begin (generated by python -m jaxrules.catalog --write README.md) -->",
                "<!-- extremes:end -->")


def markdown_table() -> str:
    lines = ["| rule | reference | pullback | backward keeps |", "| --- | --- | --- | --- |"]
    for r in RULES:
        rule = f"`jr.{r.name}`" + (f" ({r.settings})" if r.settings else "")
        lines.append(f"| {rule} | `{r.reference_name}` | {r.pullback} | {r.saves} |")
    return "\n".join(lines)


def readme_section() -> str:
    return f"{BEGIN}\n{markdown_table()}\n{END}"


def readme_extremes() -> str:
    return f"{XBEGIN}\n{extremes_table()}\n{XEND}"


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxrules.catalog", description=__doc__.splitlines()[0])
    p.add_argument("--write", metavar="README", help="replace the generated table in this file")
    a = p.parse_args(argv)
    if not a.write:
        print(markdown_table())
        return 0
    text = open(a.write, encoding="utf-8").read()
    for begin, end, section in ((BEGIN, END, readme_section), (XBEGIN, XEND, readme_extremes)):
        start, stop = text.find(begin), text.find(end)
        if start < 0 or stop < 0:
            print(f"{a.write}: no {begin!r} ... {end!r} markers", file=sys.stderr)
            return 1
        text = text[:start] + section() + text[stop + len(end):]
    open(a.write, "w", encoding="utf-8").write(text)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
