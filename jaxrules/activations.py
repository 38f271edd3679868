r"""Elementwise ("broadcast") activations with hand-written pullbacks (seeds 000, 001, 003).

For ``y = σ(x)`` applied elementwise the Jacobian is diagonal, so the pullback is

.. math:: \bar x = σ'(x) ∘ \bar y,        \mathcal B(f, (x,), (\bar y,)) = ((σ(x),), (σ'(x) ∘ \bar y,)).

Each rule keeps the least its backward needs (STYLE.md, point 3): the output ``y`` where σ' is a
function of it, a one-byte mask where σ' is piecewise constant, and the input ``x`` otherwise. Names,
arguments and defaults follow ``jax.nn``; settings such as ``negative_slope`` or ``approximate`` are
static Python values (``nondiff_argnums``), never arrays. At a kink each docstring says which
subgradient is chosen; it is the one ``jax.nn`` uses unless stated.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxrules._rule import rule
from jaxrules._checks import static_bool, static_number

Array = jax.Array

__all__ = [
    "sigmoid", "tanh", "relu", "leaky_relu", "elu", "celu", "selu", "gelu", "silu", "swish",
    "softplus", "log_sigmoid", "mish", "relu6", "hard_sigmoid", "hard_silu", "hard_swish",
    "hard_tanh", "soft_sign", "squareplus", "sparse_plus", "sparse_sigmoid", "rrelu",
]


# --- masks -----------------------------------------------------------------------------------
# Rules whose slope is piecewise constant keep one byte per element: 1 where the condition holds,
# 0 where it does not, -1 where x is NaN, so that NaN in still gives NaN out in the backward
# (a boolean mask would silently turn it into a slope of 0 or 1).

def _mask(x, cond):
    return jnp.where(jnp.isnan(x), jnp.int8(-1), cond.astype(jnp.int8))


def _slope(m, g, on=1, off=0):
    """σ'(x) from the mask, in g's dtype: ``on`` where it holds, ``off`` where not, NaN where x was NaN.

    The backward multiplies ȳ by it (linear in ȳ, so the forward-mode twin is its transpose)."""
    return jnp.where(m > 0, jnp.asarray(on, g.dtype), jnp.where(m == 0, jnp.asarray(off, g.dtype), jnp.nan))


# --- sigmoid ---------------------------------------------------------------------------------

@rule(like=jax.nn.sigmoid)
def sigmoid(x: ArrayLike) -> Array:
    r"""Logistic sigmoid, saving only its output.

    .. math:: y = σ(x) = \frac{1}{1 + e^{-x}},        \bar x = y (1 - y) ∘ \bar y

    Args: x: floating array of any shape. Returns: y, same shape and dtype.
    Finite for every input: σ'(±1000) = 0, not NaN.
    """
    return lax.logistic(x)


def _sigmoid_fwd(x):
    y = sigmoid.call(x)
    return y, y


def _sigmoid_bwd(y, g):
    return (g * y * (1 - y),)


sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)


# --- tanh ------------------------------------------------------------------------------------

@rule(like=jax.nn.tanh)
def tanh(x: ArrayLike, /) -> Array:
    r"""Hyperbolic tangent, saving only its output.

    .. math:: y = \tanh(x),        \bar x = (1 - y^2) ∘ \bar y
    """
    return jnp.tanh(x)


def _tanh_fwd(x):
    y = tanh.call(x)
    return y, y


def _tanh_bwd(y, g):
    return (g * (1 - y * y),)


tanh.defvjp(_tanh_fwd, _tanh_bwd)


# --- relu ------------------------------------------------------------------------------------

@rule(like=jax.nn.relu, settings=("grad_at_zero",))
def relu(x: ArrayLike, *, grad_at_zero: float = 0.0) -> Array:
    r"""Rectified linear unit, saving a one-byte mask.

    .. math:: y = \max(x, 0),        \bar x = 1[x > 0] ∘ \bar y  (+ c · 1[x = 0] ∘ \bar y)

    At the kink any c ∈ [0, 1] is a valid subgradient (seed 003). The default c = 0 is what
    ``jax.nn.relu`` and PyTorch use; ``grad_at_zero`` (a static number in [0, 1]) chooses another.
    Keeps one byte per element whatever c is. x̄ is NaN where x is NaN (``jax.nn.relu`` gives 0).
    """
    static_number("relu", "grad_at_zero", grad_at_zero, low=0.0, high=1.0)
    return jnp.maximum(x, 0).astype(x.dtype)


def _relu_fwd(x, grad_at_zero):
    y = relu.call(x, grad_at_zero)
    c = float(grad_at_zero)
    if c in (0.0, 1.0):
        return y, _mask(x, x > 0 if c == 0.0 else x >= 0)
    return y, jnp.where(x == 0, jnp.int8(2), _mask(x, x > 0))  # 2 marks the kink


def _relu_bwd(grad_at_zero, m, g):
    if float(grad_at_zero) in (0.0, 1.0):  # the kink is folded into the mask
        return (g * _slope(m, g),)
    return (g * jnp.where(m == 2, jnp.asarray(grad_at_zero, g.dtype), _slope(m, g)),)


relu.defvjp(_relu_fwd, _relu_bwd)


# --- leaky_relu ------------------------------------------------------------------------------

@rule(like=jax.nn.leaky_relu, settings=("negative_slope",))
def leaky_relu(x: ArrayLike, negative_slope: float = 0.01) -> Array:
    r"""Leaky ReLU with slope α below zero, saving a one-byte mask.

    .. math:: y = x \text{ if } x ≥ 0 \text{ else } αx,        \bar x = (1 \text{ if } x ≥ 0 \text{ else } α) ∘ \bar y

    At x = 0 the slope is 1, as in ``jax.nn.leaky_relu``. α (``negative_slope``) is static.
    """
    a = static_number("leaky_relu", "negative_slope", negative_slope)
    return jnp.where(x >= 0, x, a * x)


def _leaky_relu_fwd(x, negative_slope):
    return leaky_relu.call(x, negative_slope), _mask(x, x >= 0)


def _leaky_relu_bwd(negative_slope, m, g):
    return (g * _slope(m, g, 1, negative_slope),)


leaky_relu.defvjp(_leaky_relu_fwd, _leaky_relu_bwd)


# --- elu -------------------------------------------------------------------------------------

@rule(like=jax.nn.elu, settings=("alpha",))
def elu(x: ArrayLike, alpha: float = 1.0) -> Array:
    r"""Exponential linear unit, saving its output (for α ≥ 0).

    .. math:: y = x \text{ if } x > 0 \text{ else } α(e^x - 1),
              \bar x = (1 \text{ if } y > 0 \text{ else } y + α) ∘ \bar y

    For α ≥ 0, y > 0 exactly when x > 0 and αe^x = y + α, so y suffices; for α < 0 the input is
    kept instead. At x = 0 the slope is α, as in ``jax.nn.elu``.
    """
    a = static_number("elu", "alpha", alpha)
    return jnp.where(x > 0, x, a * jnp.expm1(jnp.where(x > 0, 0, x)))


def _elu_fwd(x, alpha):
    y = elu.call(x, alpha)
    return y, (y if alpha >= 0 else x)


def _elu_bwd(alpha, r, g):
    if alpha >= 0:
        return (g * jnp.where(r > 0, 1, r + alpha),)
    return (g * jnp.where(r > 0, 1, alpha * jnp.exp(jnp.minimum(r, 0))),)


elu.defvjp(_elu_fwd, _elu_bwd)


# --- celu ------------------------------------------------------------------------------------

@rule(like=jax.nn.celu, settings=("alpha",))
def celu(x: ArrayLike, alpha: float = 1.0) -> Array:
    r"""Continuously-differentiable ELU, saving its output.

    .. math:: y = \max(x, 0) + α(e^{\min(x, 0)/α} - 1),
              \bar x = (1 \text{ if } y > 0 \text{ else } y/α + 1) ∘ \bar y

    y > 0 exactly when x > 0 (for any α ≠ 0), and e^{x/α} = y/α + 1 below. Slope 1 at x = 0.
    """
    a = static_number("celu", "alpha", alpha)
    if a == 0:
        raise ValueError("celu: alpha must be nonzero, got 0.0")
    return jnp.maximum(x, 0.0) + a * jnp.expm1(jnp.minimum(x, 0.0) / a)


def _celu_fwd(x, alpha):
    y = celu.call(x, alpha)
    return y, y


def _celu_bwd(alpha, y, g):
    return (g * jnp.where(y > 0, 1, y / alpha + 1),)


celu.defvjp(_celu_fwd, _celu_bwd)


# --- selu ------------------------------------------------------------------------------------

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


@rule(like=jax.nn.selu)
def selu(x: ArrayLike) -> Array:
    r"""Scaled ELU (λ ≈ 1.0507, α ≈ 1.6733), saving its output.

    .. math:: y = λ(x \text{ if } x > 0 \text{ else } α(e^x - 1)),
              \bar x = (λ \text{ if } y > 0 \text{ else } y + λα) ∘ \bar y
    """
    return _SELU_SCALE * jnp.where(x > 0, x, _SELU_ALPHA * jnp.expm1(jnp.where(x > 0, 0, x)))


def _selu_fwd(x):
    y = selu.call(x)
    return y, y


def _selu_bwd(y, g):
    return (g * jnp.where(y > 0, _SELU_SCALE, y + _SELU_SCALE * _SELU_ALPHA),)


selu.defvjp(_selu_fwd, _selu_bwd)


# --- gelu ------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _times(x: Array, w: Array) -> Array:
    """x·w, taken as 0 where w is 0 (its limit as |x| → ∞), so that ±inf · 0 gives 0, not NaN."""
    return jnp.where(w == 0, 0, x * w)


@rule(like=jax.nn.gelu, settings=("approximate",))
def gelu(x: ArrayLike, approximate: bool = True) -> Array:
    r"""Gaussian error linear unit, saving its input.

    Exact (``approximate=False``), with Φ the standard normal CDF and φ its density:

    .. math:: y = xΦ(x),        \bar x = (Φ(x) + xφ(x)) ∘ \bar y

    Tanh approximation (default, as ``jax.nn.gelu``), with u = \sqrt{2/π}(x + 0.044715x^3), t = tanh(u):

    .. math:: y = \tfrac12 x(1 + t),        \bar x = (\tfrac12(1 + t) + \tfrac12 x(1 - t^2)\sqrt{2/π}(1 + 0.134145x^2)) ∘ \bar y

    Where |x| is so large that 1 - t² is 0, the second term is taken as 0 (never 0·∞ = NaN).
    """
    static_bool("gelu", "approximate", approximate)
    if approximate:
        cdf = 0.5 * (1.0 + jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * (x ** 3))))
        return x * cdf
    return (x * ((lax.erf(x / math.sqrt(2)) + 1) / 2)).astype(x.dtype)  # x·Φ(x): 2x would overflow at the top


def _gelu_fwd(x, approximate):
    return gelu.call(x, approximate), x


def _gelu_bwd(approximate, x, g):
    if approximate:
        t = jnp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * (x ** 3)))
        sech2 = 1 - t * t
        slope = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        # where 1 - t² is 0 the tail is 0, even where the slope factor has overflowed (float16 at 1e4)
        tail = jnp.where(sech2 == 0, 0, 0.5 * x * sech2 * slope)
        return (g * (0.5 * (1 + t) + tail),)
    cdf = 0.5 * (1 + lax.erf(x / math.sqrt(2)))
    pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)
    return (g * (cdf + _times(x, pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


# --- silu / swish ----------------------------------------------------------------------------

@rule(like=jax.nn.silu)
def silu(x: ArrayLike) -> Array:
    r"""SiLU (swish), x·σ(x), saving its input.

    .. math:: y = xσ(x),        \bar x = σ(x)(1 + x(1 - σ(x))) ∘ \bar y

    At x = ±inf the slope is its limit (1, 0), never ∞·0 = NaN; the same for gelu and mish.
    """
    return x * lax.logistic(x)


def _silu_fwd(x):
    return silu.call(x), x


def _silu_bwd(x, g):
    s = lax.logistic(x)
    return (g * (s + _times(x, s * (1 - s))),)


silu.defvjp(_silu_fwd, _silu_bwd)

swish = silu


# --- softplus --------------------------------------------------------------------------------

@rule(like=jax.nn.softplus)
def softplus(x: ArrayLike) -> Array:
    r"""Softplus, log(1 + eˣ), saving its output.

    .. math:: y = \log(1 + e^x),        \bar x = σ(x) ∘ \bar y = (1 - e^{-y}) ∘ \bar y

    1 - e^{-y} is computed as -expm1(-y): exact for tiny y (x → -∞), 1 at x = +∞, 1/2 at 0.
    """
    return jnp.logaddexp(x, 0)


def _softplus_fwd(x):
    y = softplus.call(x)
    return y, y


def _softplus_bwd(y, g):
    return (g * -jnp.expm1(-y),)


softplus.defvjp(_softplus_fwd, _softplus_bwd)


# --- log_sigmoid -----------------------------------------------------------------------------

@rule(like=jax.nn.log_sigmoid)
def log_sigmoid(x: ArrayLike) -> Array:
    r"""log σ(x) = -softplus(-x), saving its output.

    .. math:: y = \log σ(x),        \bar x = (1 - σ(x)) ∘ \bar y = -\operatorname{expm1}(y) ∘ \bar y
    """
    return -jnp.logaddexp(-x, 0)


def _log_sigmoid_fwd(x):
    y = log_sigmoid.call(x)
    return y, y


def _log_sigmoid_bwd(y, g):
    return (g * -jnp.expm1(y),)


log_sigmoid.defvjp(_log_sigmoid_fwd, _log_sigmoid_bwd)


# --- mish ------------------------------------------------------------------------------------

@rule(like=jax.nn.mish)
def mish(x: ArrayLike) -> Array:
    r"""Mish, x·tanh(softplus(x)), saving its input.

    .. math:: y = x\tanh(s), s = \log(1 + e^x),
              \bar x = (\tanh(s) + x(1 - \tanh^2(s))σ(x)) ∘ \bar y
    """
    return x * jnp.tanh(jnp.logaddexp(x, 0))


def _mish_fwd(x):
    return mish.call(x), x


def _mish_bwd(x, g):
    t = jnp.tanh(jnp.logaddexp(x, 0))
    return (g * (t + _times(x, (1 - t * t) * lax.logistic(x))),)


mish.defvjp(_mish_fwd, _mish_bwd)


# --- relu6 -----------------------------------------------------------------------------------

@rule(like=jax.nn.relu6)
def relu6(x: ArrayLike) -> Array:
    r"""ReLU capped at 6, saving a one-byte mask.

    .. math:: y = \min(\max(x, 0), 6),        \bar x = 1[0 < x < 6] ∘ \bar y

    Slope 0 at both kinks (x = 0 and x = 6), as in ``jax.nn.relu6``.
    """
    return jnp.minimum(jnp.maximum(x, 0), 6.0)


def _relu6_fwd(x):
    return relu6.call(x), _mask(x, (x > 0) & (x < 6))


def _relu6_bwd(m, g):
    return (g * _slope(m, g),)


relu6.defvjp(_relu6_fwd, _relu6_bwd)


# --- hard_sigmoid ----------------------------------------------------------------------------

@rule(like=jax.nn.hard_sigmoid)
def hard_sigmoid(x: ArrayLike) -> Array:
    r"""Hard sigmoid, relu6(x + 3)/6, saving a one-byte mask.

    .. math:: y = \mathrm{relu6}(x + 3)/6,        \bar x = \tfrac16 1[-3 < x < 3] ∘ \bar y

    Slope 0 at x = ±3, as in ``jax.nn.hard_sigmoid``.
    """
    return jnp.minimum(jnp.maximum(x + 3.0, 0), 6.0) / 6.0


def _hard_sigmoid_fwd(x):
    return hard_sigmoid.call(x), _mask(x, (x > -3) & (x < 3))


def _hard_sigmoid_bwd(m, g):
    return (g * _slope(m, g, 1 / 6),)


hard_sigmoid.defvjp(_hard_sigmoid_fwd, _hard_sigmoid_bwd)


# --- hard_silu / hard_swish ------------------------------------------------------------------

@rule(like=jax.nn.hard_silu)
def hard_silu(x: ArrayLike) -> Array:
    r"""Hard SiLU (hard swish), x·hard_sigmoid(x), saving its input.

    .. math:: y = x\,h(x), h(x) = \mathrm{relu6}(x + 3)/6,
              \bar x = (h(x) + \tfrac{x}{6} 1[-3 < x < 3]) ∘ \bar y
    """
    return x * (jnp.minimum(jnp.maximum(x + 3.0, 0), 6.0) / 6.0)


def _hard_silu_fwd(x):
    return hard_silu.call(x), x


def _hard_silu_bwd(x, g):
    h = jnp.minimum(jnp.maximum(x + 3.0, 0), 6.0) / 6.0
    return (g * (h + jnp.where((x > -3) & (x < 3), x / 6, 0)),)


hard_silu.defvjp(_hard_silu_fwd, _hard_silu_bwd)

hard_swish = hard_silu


# --- hard_tanh -------------------------------------------------------------------------------

@rule(like=jax.nn.hard_tanh)
def hard_tanh(x: ArrayLike) -> Array:
    r"""Hard tanh, x clipped to [-1, 1], saving a one-byte mask.

    .. math:: y = \max(-1, \min(x, 1)),        \bar x = 1[-1 ≤ x ≤ 1] ∘ \bar y

    Slope 1 at x = ±1, as in ``jax.nn.hard_tanh``.
    """
    return jnp.where(x > 1, 1, jnp.where(x < -1, -1, x)).astype(x.dtype)


def _hard_tanh_fwd(x):
    return hard_tanh.call(x), _mask(x, (x >= -1) & (x <= 1))


def _hard_tanh_bwd(m, g):
    return (g * _slope(m, g),)


hard_tanh.defvjp(_hard_tanh_fwd, _hard_tanh_bwd)


# --- soft_sign -------------------------------------------------------------------------------

@rule(like=jax.nn.soft_sign)
def soft_sign(x: ArrayLike) -> Array:
    r"""Softsign, x/(|x| + 1), saving its input.

    .. math:: y = \frac{x}{|x| + 1},        \bar x = \frac{1}{(|x| + 1)^2} ∘ \bar y

    The input is kept rather than y: (1 - |y|)² would lose all precision for large |x|.
    """
    return x / (jnp.abs(x) + 1)


def _soft_sign_fwd(x):
    return soft_sign.call(x), x


def _soft_sign_bwd(x, g):
    d = 1 / (jnp.abs(x) + 1)
    return (g * d * d,)


soft_sign.defvjp(_soft_sign_fwd, _soft_sign_bwd)


# --- squareplus ------------------------------------------------------------------------------

@rule(like=jax.nn.squareplus, settings=("b",))
def squareplus(x: ArrayLike, b: float = 4) -> Array:
    r"""Squareplus, (x + √(x² + b))/2, saving its output.

    .. math:: y = \frac{x + \sqrt{x^2 + b}}{2},        \bar x = \frac{y}{\sqrt{x^2 + b}} ∘ \bar y = \frac{y^2}{y^2 + b/4} ∘ \bar y

    Since y(√(x²+b) - y) = b/4, the slope is a function of y alone. For x < 0 the output is
    computed as (b/4) / (√(x²+b)/2 - x/2), free of the cancellation in x + √(x²+b), and √(x²+b)
    as hypot(x, √b), free of the overflow of x²; halves are taken before the sums, which would
    overflow near the largest float16.
    """
    bb = static_number("squareplus", "b", b, low=0.0)
    r = jnp.hypot(x, math.sqrt(bb))  # √(x² + b) without overflow of x²
    half_r, half_x = r / 2, x / 2  # halved first: x + r overflows at the top of float16 and bfloat16
    neg = jnp.where(x < 0, (bb / 4) / (half_r - half_x), 0)
    return jnp.where(x < 0, neg, half_x + half_r).astype(x.dtype)


def _squareplus_fwd(x, b):
    y = squareplus.call(x, b)
    return y, y


def _squareplus_bwd(b, y, g):
    ratio = (b / 4) / jnp.where(y == 0, 1, y * y)  # 1/(1 + b/4y²): no inf/inf when y² overflows
    return (g * jnp.where(y == 0, 0, 1 / (1 + ratio)),)


squareplus.defvjp(_squareplus_fwd, _squareplus_bwd)


# --- sparse_plus -----------------------------------------------------------------------------

@rule(like=jax.nn.sparse_plus)
def sparse_plus(x: ArrayLike) -> Array:
    r"""Sparse plus, saving its output.

    .. math:: y = 0 \;(x ≤ -1),\; \tfrac14(x + 1)^2 \;(-1 < x < 1),\; x \;(x ≥ 1),
              \bar x = \min(\sqrt y, 1) ∘ \bar y

    On (-1, 1), √y = (x + 1)/2; below, y = 0; above, y ≥ 1: the slope is min(√y, 1).
    """
    return jnp.where(x <= -1.0, 0.0, jnp.where(x >= 1.0, x, (x + 1.0) ** 2 / 4)).astype(x.dtype)


def _sparse_plus_fwd(x):
    y = sparse_plus.call(x)
    return y, y


def _sparse_plus_bwd(y, g):
    positive = y > 0  # keeps sqrt away from 0, where its own derivative is infinite (grad of grad)
    return (g * jnp.where(positive, jnp.minimum(jnp.sqrt(jnp.where(positive, y, 1)), 1), y * 0),)


sparse_plus.defvjp(_sparse_plus_fwd, _sparse_plus_bwd)


# --- sparse_sigmoid --------------------------------------------------------------------------

@rule(like=jax.nn.sparse_sigmoid)
def sparse_sigmoid(x: ArrayLike) -> Array:
    r"""Sparse sigmoid, the slope of sparse_plus, saving a one-byte mask.

    .. math:: y = \tfrac12 \operatorname{clip}(x + 1, 0, 2),        \bar x = \tfrac12 1[-1 < x < 1] ∘ \bar y

    Slope 0 at x = ±1 (jax differentiates ``clip`` to 1/4 there; both lie in the subdifferential).
    """
    return 0.5 * jnp.clip(x + 1.0, 0.0, 2.0)


def _sparse_sigmoid_fwd(x):
    return sparse_sigmoid.call(x), _mask(x, (x > -1) & (x < 1))


def _sparse_sigmoid_bwd(m, g):
    return (g * _slope(m, g, 0.5),)


sparse_sigmoid.defvjp(_sparse_sigmoid_fwd, _sparse_sigmoid_bwd)


# --- rrelu -----------------------------------------------------------------------------------

def _rrelu_slopes(key, shape, dtype, lower, upper, training):
    if training:  # drawn in float32 whatever the dtype: the same key gives the same slopes
        return jax.random.uniform(key, shape, jnp.float32, lower, upper).astype(dtype)
    return jnp.full(shape, (lower + upper) / 2, dtype)


@rule(settings=("lower", "upper", "training"))
def rrelu(x: ArrayLike, key: ArrayLike, lower: float = 1 / 8, upper: float = 1 / 3,
          training: bool = True) -> Array:
    r"""Randomized leaky ReLU (seed 003): a slope a ~ U(lower, upper) per element below zero.

    .. math:: y = x \text{ if } x ≥ 0 \text{ else } a x,        \bar x = (1 \text{ if } x ≥ 0 \text{ else } a) ∘ \bar y

    When ``training`` is False, a = (lower + upper)/2 everywhere. The backward keeps a one-byte
    mask and the key, and draws the same slopes again (1 byte per element instead of 4).
    ``key`` gets no cotangent.
    """
    lo = static_number("rrelu", "lower", lower)
    hi = static_number("rrelu", "upper", upper, low=lo)
    static_bool("rrelu", "training", training)
    a = _rrelu_slopes(key, x.shape, x.dtype, lo, hi, training)
    return jnp.where(x >= 0, x, a * x)


def _rrelu_fwd(x, key, lower, upper, training):
    return rrelu.call(x, key, lower, upper, training), (_mask(x, x >= 0), key)


def _rrelu_bwd(lower, upper, training, res, g):
    m, key = res
    a = _rrelu_slopes(key, g.shape, g.dtype, float(lower), float(upper), training)
    return g * _slope(m, g, 1, a), None


rrelu.defvjp(_rrelu_fwd, _rrelu_bwd)


