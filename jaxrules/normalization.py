r"""Normalizations: layer_norm, rms_norm and ``jax.nn.standardize``, with lean, accurate pullbacks.

Over the normalized axes A (n elements per row), with x̂ = (x − μ)·r and r = 1/√(v + ε):

.. math:: \bar x = r\,\bigl(\hat g - \operatorname{mean}_A \hat g - \hat x \operatorname{mean}_A(\hat g ∘ \hat x)\bigr),
          \qquad \hat g = \bar y ∘ \text{scale}

(rms_norm drops the mean of ĝ; its x̂ = x·r with v = mean x²). So the backward needs one full-size
array (x̂, or what it is recomputed from) and a few numbers per row, where JAX's autodiff of the
formula keeps two or three full-size arrays.

Accuracy. The mean is taken in two passes, μ₁ = mean x, then c = mean(x − μ₁), and the centred
values are formed as (x − μ₁) − c, never as x − fl(μ): x − μ₁ is exact where the row's values are
close to their mean, so rows far from zero (at ±1e4 with a spread of 1, say) keep their digits,
and the variance v = mean (x − μ₁)² − c² has no cancellation (the corrected two-pass algorithm
of Chan, Golub and LeVeque). A constant row gives x̂ = 0 exactly, finite values and gradients.
Statistics of bfloat16 and float16 inputs are computed in float32; the result has the input's dtype.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxrules import _checks
from jaxrules._broadcast import Static, broadcast_shapes, unbroadcast
from jaxrules._checks import floating, static_number
from jaxrules._rule import rule

Array = jax.Array
Axis = int | tuple[int, ...] | None

__all__ = ["layer_norm", "rms_norm", "standardize"]


# --- shared pieces ---------------------------------------------------------------------------

def _compute_dtype(*arrays: Any) -> Any:
    """The promoted dtype of the arguments, at least float32: statistics of half floats in float32."""
    dtype = jnp.result_type(*(a for a in arrays if a is not None))
    return jnp.promote_types(dtype, jnp.float32)


def _out_dtype(*arrays: Any) -> Any:
    return jnp.result_type(*(a for a in arrays if a is not None))


def _count(shape: tuple[int, ...], axes: tuple[int, ...], mask: Array | None, dtype: Any) -> Any:
    """Elements per row: a Python int, or Σ mask per row (keepdims) when a mask is given."""
    if mask is None:
        return math.prod(shape[a] for a in axes)
    return jnp.sum(mask, axis=axes, keepdims=True, dtype=dtype)


def _sum(x: Array, axes: tuple[int, ...], mask: Array | None = None) -> Array:
    """Σ over axes with keepdims, masked-out entries left out (a NaN there does not spread)."""
    return jnp.sum(x if mask is None else jnp.where(mask, x, 0), axis=axes, keepdims=True)


def _centred(x: Array, axes: tuple[int, ...], mask: Array | None, n: Any) -> tuple[Array, Array, Array]:
    """(μ₁, c, v): the one-pass mean, the mean of x − μ₁ (its correction) and the variance, keepdims.

    The centred values are (x − μ₁) − c; v = mean (x − μ₁)² − c² (clipped at 0 against rounding)."""
    mu1 = _sum(x, axes, mask) / n
    e = x - mu1
    c = _sum(e, axes, mask) / n
    v = jnp.maximum(_sum(e * e, axes, mask) / n - c * c, 0)
    return mu1, c, v


def _param(rule: str, name: str, p: Any, x: Array, axes: tuple[int, ...]) -> Array | None:
    """scale or bias (shape broadcasting to the normalized axes' shape) laid out against x, or None."""
    if p is None:
        return None
    p = floating(rule, name, p)
    target = tuple(x.shape[a] for a in axes)
    try:
        ok = tuple(jnp.broadcast_shapes(p.shape, target)) == target
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{rule}: {name} with shape {p.shape} does not broadcast to the normalized axes {axes} "
                         f"of x with shape {x.shape}, i.e. to {target}")
    return jnp.broadcast_to(p, target).reshape(tuple(x.shape[i] if i in axes else 1 for i in range(x.ndim)))


def _param_bar(t: Array, p_shape: tuple[int, ...], axes: tuple[int, ...]) -> Array:
    """The cotangent of a parameter laid out by _param: Σ over the other axes, back to its own shape."""
    rest = tuple(i for i in range(t.ndim) if i not in axes)
    t = jnp.sum(t, axis=rest).reshape(tuple(t.shape[a] for a in axes))
    return unbroadcast(t, p_shape)


def _norm_setup(rule: str, x: Any, axis: Axis, epsilon: Any) -> tuple[Array, tuple[int, ...], float]:
    x = floating(rule, "x", x)
    axes = _checks.axes(rule, axis, x.ndim)
    eps = static_number(rule, "epsilon", epsilon, low=0.0)
    return x, axes, eps


# --- layer_norm ------------------------------------------------------------------------------

def _layer_norm_forward(x, scale, bias, axis, epsilon):
    """(y, (μ₁, c, r)): the output, and the per-row statistics in the compute dtype."""
    x, axes, eps = _norm_setup("layer_norm", x, axis, epsilon)
    s, b = _param("layer_norm", "scale", scale, x, axes), _param("layer_norm", "bias", bias, x, axes)
    dt = _compute_dtype(x, s, b)
    xc = x.astype(dt)
    mu1, c, v = _centred(xc, axes, None, _count(x.shape, axes, None, dt))
    r = lax.rsqrt(v + eps)
    y = ((xc - mu1) - c) * r
    if s is not None:
        y = y * s.astype(dt)
    if b is not None:
        y = y + b.astype(dt)
    return y.astype(_out_dtype(x, s, b)), (mu1, c, r)


@rule(settings=("axis", "epsilon"), floats=("x", "scale", "bias"))
def layer_norm(x: ArrayLike, scale: ArrayLike | None = None, bias: ArrayLike | None = None, *,
               axis: Axis = -1, epsilon: float = 1e-6) -> Array:
    r"""Layer normalization over ``axis`` (an int or a tuple), then scale and shift.

    .. math:: y = \hat x ∘ s + b,\quad \hat x = \frac{x - \operatorname{mean}_A x}{\sqrt{\operatorname{var}_A x + ε}},
              \qquad \bar x = r\,(\hat g - \operatorname{mean}_A \hat g - \hat x \operatorname{mean}_A(\hat g ∘ \hat x)),
              \quad \hat g = \bar y ∘ s,\quad \bar s = \textstyle\sum \bar y ∘ \hat x,\quad \bar b = \textstyle\sum \bar y

    ``scale`` and ``bias`` (optional) have a shape that broadcasts to the normalized axes' shape
    (``x.shape[a]`` for a in axis, in order); the sums run over the other axes. ε (``epsilon``) is a
    static number ≥ 0. Keeps the input x, the scale, and three float32 numbers per row (the mean as
    μ₁ + c, and r = 1/√(v + ε)); x̂ is recomputed. The result has the promoted dtype of x, scale and
    bias; bfloat16 and float16 rows have their statistics in float32.
    """
    return _layer_norm_forward(x, scale, bias, axis, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, axis, epsilon):
    y, stats = _layer_norm_forward(x, scale, bias, axis, epsilon)
    return y, (x, scale, stats, Static(None if bias is None else (bias.shape, bias.dtype)))


def _layer_norm_bwd(axis, epsilon, res, g):
    x, scale, (mu1, c, r), bias_meta = res
    axes = _checks.axes("layer_norm", axis, x.ndim)
    s = _param("layer_norm", "scale", scale, x, axes)
    dt = r.dtype
    g = g.astype(dt)
    xhat = ((x.astype(dt) - mu1) - c) * r
    gh = g if s is None else g * s.astype(dt)
    n = _count(x.shape, axes, None, dt)
    x_bar = r * (gh - _sum(gh, axes) / n - xhat * (_sum(gh * xhat, axes) / n))
    s_bar = None if scale is None else _param_bar(g * xhat, scale.shape, axes).astype(scale.dtype)
    b_bar = None if bias_meta.value is None else _param_bar(g, bias_meta.value[0], axes).astype(bias_meta.value[1])
    return (x_bar.astype(x.dtype), s_bar, b_bar)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


# --- rms_norm --------------------------------------------------------------------------------

def _rms_norm_forward(x, scale, axis, epsilon):
    """(y, r): the output, and r = 1/√(mean x² + ε) per row in the compute dtype."""
    x, axes, eps = _norm_setup("rms_norm", x, axis, epsilon)
    s = _param("rms_norm", "scale", scale, x, axes)
    dt = _compute_dtype(x, s)
    xc = x.astype(dt)
    r = lax.rsqrt(_sum(xc * xc, axes) / _count(x.shape, axes, None, dt) + eps)
    y = xc * r if s is None else xc * r * s.astype(dt)
    return y.astype(_out_dtype(x, s)), r


@rule(settings=("axis", "epsilon"), floats=("x", "scale"))
def rms_norm(x: ArrayLike, scale: ArrayLike | None = None, *, axis: Axis = -1, epsilon: float = 1e-6) -> Array:
    r"""Root-mean-square normalization over ``axis`` (an int or a tuple), then scale.

    .. math:: y = \hat x ∘ s,\quad \hat x = x\,r,\quad r = \frac{1}{\sqrt{\operatorname{mean}_A x^2 + ε}},
              \qquad \bar x = r\,(\hat g - \hat x \operatorname{mean}_A(\hat g ∘ \hat x)),\quad \hat g = \bar y ∘ s,
              \quad \bar s = \textstyle\sum \bar y ∘ \hat x

    ``scale`` broadcasts to the normalized axes' shape, as in :func:`layer_norm`. Keeps the input
    x (one full-size array), the scale, and r (one number per row).
    """
    return _rms_norm_forward(x, scale, axis, epsilon)[0]


def _rms_norm_fwd(x, scale, axis, epsilon):
    y, r = _rms_norm_forward(x, scale, axis, epsilon)
    return y, (x, scale, r)


def _rms_norm_bwd(axis, epsilon, res, g):
    x, scale, r = res
    axes = _checks.axes("rms_norm", axis, x.ndim)
    s = _param("rms_norm", "scale", scale, x, axes)
    dt = r.dtype
    g = g.astype(dt)
    xhat = x.astype(dt) * r
    gh = g if s is None else g * s.astype(dt)
    x_bar = r * (gh - xhat * (_sum(gh * xhat, axes) / _count(x.shape, axes, None, dt)))
    s_bar = None if scale is None else _param_bar(g * xhat, scale.shape, axes).astype(scale.dtype)
    return (x_bar.astype(x.dtype), s_bar)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


# --- standardize -----------------------------------------------------------------------------

_ALGORITHMS = ("fast", "stable")


def _standardize_setup(x, axis, mean, variance, epsilon, where, algorithm):
    rule_ = "standardize"
    x = floating(rule_, "x", x)
    axes = _checks.axes(rule_, axis, x.ndim)
    if variance is None and algorithm not in _ALGORITHMS:  # checked where jax.nn checks it
        raise ValueError(f"standardize: algorithm must be 'fast' or 'stable', got {algorithm!r}")
    if epsilon is None:
        raise TypeError("standardize: epsilon must be a number or an array, got None")
    named = {"mean": mean, "variance": variance, "epsilon": epsilon}
    for name, v in named.items():
        if v is not None:
            floating(rule_, name, v)
    broadcast_shapes(rule_, x=x.shape, **{k: jnp.shape(v) for k, v in named.items() if v is not None})
    return x, axes, _checks.mask(rule_, where, x.shape)


def _standardize_forward(x, axis, mean, variance, epsilon, where, algorithm):
    """(y, r) in the compute dtype."""
    x, axes, mask = _standardize_setup(x, axis, mean, variance, epsilon, where, algorithm)
    dt = _compute_dtype(x, mean, variance, epsilon)
    xc = x.astype(dt)
    n = _count(x.shape, axes, mask, dt)
    if mean is None:
        mu1, c, v = _centred(xc, axes, mask, n)
        d = (xc - mu1) - c
    else:
        m = mean.astype(dt)
        d = xc - m
    if variance is not None:
        v = variance.astype(dt)
    elif mean is not None and algorithm == "stable":
        v = _sum(d * d, axes, mask) / n
    elif mean is not None:  # "fast" with a given mean: jax.nn's mean(x²) − mean², clipped at 0
        v = jnp.maximum(_sum(xc * xc, axes, mask) / n - m * m, 0)
    r = lax.rsqrt(v + epsilon.astype(dt))
    return d * r, r


@rule(like=jax.nn.standardize, settings=("axis", "algorithm"), floats=("x", "mean", "variance", "epsilon"))
def standardize(x: ArrayLike, axis: Axis = -1, mean: ArrayLike | None = None, variance: ArrayLike | None = None,
                epsilon: ArrayLike = 1e-5, where: ArrayLike | None = None, *, algorithm: str = "fast") -> Array:
    r"""``jax.nn.standardize``: zero mean and unit variance over ``axis``, with its signature and values.

    .. math:: y = (x - μ)\,r,\quad r = \frac{1}{\sqrt{v + ε}},
              \qquad \bar x = r\,(\bar y - \tfrac{w}{n}\textstyle\sum_A \bar y - \tfrac{w}{n}\, y \textstyle\sum_A \bar y ∘ y)

    (μ and v computed over the entries where ``where`` (w) holds, n of them per row). μ is
    ``mean`` if given, else the mean of x; v is ``variance`` if given, else the variance of x about
    μ. ``mean``, ``variance`` and ``epsilon`` are arrays broadcasting against x, and each gets its
    cotangent (μ̄ = −Σ_A ȳ r, v̄ = ε̄ = −½ Σ ȳ ∘ y r²).

    ``algorithm`` (keyword-only, as in jax.nn) chooses how a variance that is not given is
    computed. Without ``mean`` both choices compute the variance itself, by the corrected two-pass
    algorithm (module doc), so ``"fast"`` is as accurate as ``"stable"`` here, where jax.nn's
    ``"fast"`` forms mean(x²) − mean(x)² and loses every digit on rows far from zero. With a given
    ``mean`` m, ``"stable"`` is mean((x − m)²) and ``"fast"`` is jax.nn's mean(x²) − m² clipped at 0
    (they differ when m is not the mean of x). Any other string raises a ValueError when the
    variance is computed (as in jax.nn).

    Keeps the output y and r (one number per row) when the mean is computed or the variance given;
    with a given mean and a computed variance, x, the mean and r. A row with no entry where
    ``where`` holds gives NaN, as in jax.nn.
    """
    y, _ = _standardize_forward(x, axis, mean, variance, epsilon, where, algorithm)
    return y.astype(_out_dtype(x, mean, variance, epsilon))


def _standardize_fwd(x, axis, mean, variance, epsilon, where, algorithm):
    yc, r = _standardize_forward(x, axis, mean, variance, epsilon, where, algorithm)
    y = yc.astype(_out_dtype(x, mean, variance, epsilon))
    shapes = Static(tuple(None if a is None else (a.shape, a.dtype) for a in (x, mean, variance, epsilon)))
    mask = None if where is None else _checks.mask("standardize", where, x.shape)
    if mean is not None and variance is None:  # the variance depends on x and the mean: keep them
        return y, (None, r, mask, (x, mean), shapes)
    return y, (y, r, mask, None, shapes)


def _standardize_bwd(axis, algorithm, res, g):
    y, r, mask, given, shapes = res
    (x_shape, x_dtype), m_meta, v_meta, (e_shape, e_dtype) = shapes.value
    axes = _checks.axes("standardize", axis, len(x_shape))
    dt = r.dtype
    g = g.astype(dt)
    n = _count(x_shape, axes, mask, dt)
    w_n = 1 / max(n, 1) if mask is None else mask / n  # ∂(mean over the row)/∂x (rows of no entry: no x̄)
    gr = g * r
    if given is None:
        yc = y.astype(dt)
        q = -0.5 * g * yc * r * r  # ∂ℓ/∂v, entry by entry (v + ε broadcast against x)
        x_bar = gr
        if m_meta is None:  # μ = mean x: μ̄ = −Σ_A ȳ r flows back to every counted entry
            x_bar = x_bar - w_n * jnp.sum(gr, axis=axes, keepdims=True)
        if v_meta is None:  # v = mean (x − μ)²: v̄ flows back as 2 v̄ (x − μ)/n, x − μ = y/r
            x_bar = x_bar + w_n * (2 * jnp.sum(q, axis=axes, keepdims=True)) * (yc / r)
        m_bar = None if m_meta is None else -unbroadcast(gr, m_meta[0]).astype(m_meta[1])
    else:  # a given mean m, the variance v computed from x and m (m may vary along the axes too)
        x, m = given
        xc, mc = x.astype(dt), m.astype(dt)
        d = xc - mc
        q = -0.5 * g * d * r * r * r
        if algorithm == "stable":  # v = mean (x − m)²
            v_bar = jnp.sum(q, axis=axes, keepdims=True)
            dbar = gr + w_n * 2 * v_bar * d
            x_bar, m_bar = dbar, -unbroadcast(dbar, m.shape)
        else:  # v = max(mean x² − m², 0), shaped like m broadcast against the rows; at 0, jnp.clip's slope ½
            raw = _sum(xc * xc, axes, mask) / n - mc * mc
            v_bar = unbroadcast(q, raw.shape) * jnp.where(raw > 0, 1.0, jnp.where(raw == 0, 0.5, 0.0)).astype(dt)
            rows = tuple(1 if i in axes else k for i, k in enumerate(x_shape))
            x_bar = gr + w_n * 2 * unbroadcast(v_bar, rows) * xc
            m_bar = -unbroadcast(gr, m.shape) - unbroadcast(2 * mc * v_bar, m.shape)
        m_bar = m_bar.astype(m.dtype)
    v_bar = None if v_meta is None else unbroadcast(q, v_meta[0]).astype(v_meta[1])
    e_bar = unbroadcast(q, e_shape).astype(e_dtype)
    return (unbroadcast(x_bar, x_shape).astype(x_dtype), m_bar, v_bar, e_bar, None)


standardize.defvjp(_standardize_fwd, _standardize_bwd)
