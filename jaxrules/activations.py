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


# --- accurate pieces -------------------------------------------------------------------------
# Shared by the rules that keep their input (see the accuracy table in the README: every rule's
# value is within 4 units of the exact one, measured against mpmath by jaxrules.accuracy).

def _exp_split(z: Array, deep: Array) -> Array:
    """One exponential for two uses: e^{z/2} where ``deep`` (far below, for _halves), e^{−z} elsewhere
    (for σ(z) = 1/(1 + e^{−z}) and the like). Elsewhere z ≥ −80, so e^{−z} does not overflow."""
    return jnp.exp(jnp.where(deep, z / 2, -z))


def _sigmoid_pair(e: Array, z: Array) -> tuple[Array, Array]:
    """(σ(z), σ(−z)) from e = e^{−z}, each to about an ulp: σ(z) = 1/(1 + e), and σ(−z) = e·σ(z) for
    z ≥ 0 but 1 − σ(z) below (where σ(z) ≤ ½: nothing cancels). 1 − σ(z) for z > 0 would lose all of
    σ(−z) once σ(z) rounds to 1 (z > 17 in float32)."""
    r = 1 / (1 + e)
    return r, jnp.where(z >= 0, e * r, 1 - r)


def _times(x: Array, w: Array) -> Array:
    """x·w, taken as 0 where w is 0 (its limit as |x| → ∞), so that ±inf · 0 gives 0, not NaN."""
    return jnp.where(w == 0, 0, x * w)


def _halves(a: Array, h: Array) -> Array:
    """a·h·h as (a·h)·h, 0 where h is 0: a·e^{2v} with h = e^v, whose factor e^{2v} alone would be
    subnormal (and flushed to 0 by XLA's CPU) while the product is a normal number."""
    return jnp.where(h == 0, 0, (a * h) * h)


# Below this argument x·σ(x) ≈ x·e^x (silu, mish) is taken from _halves: e^x is then below
# ulp(1) (so σ(x) = e^x to working precision) and soon subnormal (float32: from x = −87.3).
_EXP_TAIL = -80.0


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

def _alpha_expm1(a: float, z: Array) -> Array:
    """α(e^z − 1) for z ≤ 0, for a backward that takes αe^z = y + α from the kept output y.

    Below z = −1 it is computed as αe^z − α, whose one rounding that matters is the last: y + α is
    then αe^z to half an ulp of y, whereas α·expm1(z) adds the roundings of expm1 and of the
    product, about twice as far (the slope saturates either way, as jax.nn's does: it is below ulp(α)
    from z = −17). Above −1, α·expm1(z), which does not cancel near 0."""
    return jnp.where(z < -1, a * jnp.exp(z) - a, a * jnp.expm1(z))


@rule(like=jax.nn.elu, settings=("alpha",))
def elu(x: ArrayLike, alpha: float = 1.0) -> Array:
    r"""Exponential linear unit, saving its output (for α ≥ 0).

    .. math:: y = x \text{ if } x > 0 \text{ else } α(e^x - 1),
              \bar x = (1 \text{ if } y > 0 \text{ else } y + α) ∘ \bar y

    For α ≥ 0, y > 0 exactly when x > 0 and αe^x = y + α, so y suffices; for α < 0 the input is
    kept instead. At x = 0 the slope is α, as in ``jax.nn.elu``.
    """
    a = static_number("elu", "alpha", alpha)
    return jnp.where(x > 0, x, _alpha_expm1(a, jnp.where(x > 0, 0, x)))


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
              \bar x = (1 \text{ if } y > 0 \text{ else } (y + α)/α) ∘ \bar y

    y > 0 exactly when x > 0 (for any α ≠ 0), and e^{x/α} = (y + α)/α below, where y + α is exact
    (y/α + 1 would add a rounding). Slope 1 at x = 0.
    """
    a = static_number("celu", "alpha", alpha)
    if a == 0:
        raise ValueError("celu: alpha must be nonzero, got 0.0")
    z = jnp.minimum(x, 0.0) / a
    return jnp.maximum(x, 0.0) + (_alpha_expm1(a, z) if a > 0 else a * jnp.expm1(z))


def _celu_fwd(x, alpha):
    y = celu.call(x, alpha)
    return y, y


def _celu_bwd(alpha, y, g):
    return (g * jnp.where(y > 0, 1, (y + alpha) / alpha),)


celu.defvjp(_celu_fwd, _celu_bwd)


# --- selu ------------------------------------------------------------------------------------

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_SELU_SCALE_ALPHA = _SELU_SCALE * _SELU_ALPHA


@rule(like=jax.nn.selu)
def selu(x: ArrayLike) -> Array:
    r"""Scaled ELU (λ ≈ 1.0507, α ≈ 1.6733), saving its output.

    .. math:: y = λ(x \text{ if } x > 0 \text{ else } α(e^x - 1)),
              \bar x = (λ \text{ if } y > 0 \text{ else } y + λα) ∘ \bar y
    """
    # λα(e^x − 1) with λα rounded once, to the constant the backward adds back, so that y + λα is
    # λαe^x up to y's own rounding (λ·(α·expm1(x)) rounded three times, and met another λα)
    return jnp.where(x > 0, _SELU_SCALE * x, _alpha_expm1(_SELU_SCALE_ALPHA, jnp.where(x > 0, 0, x)))


def _selu_fwd(x):
    y = selu.call(x)
    return y, y


def _selu_bwd(y, g):
    return (g * jnp.where(y > 0, _SELU_SCALE, y + _SELU_SCALE_ALPHA),)


selu.defvjp(_selu_fwd, _selu_bwd)


# --- gelu ------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_SQRT_HALF = math.sqrt(0.5)
_GELU_TAIL = -10.0  # below it the exact gelu uses the asymptotic series of Φ (erfc(−x/√2) is subnormal at −13)


def _gelu_u(x: Array) -> tuple[Array, Array]:
    """(u, u′) of the tanh form: u = √(2/π)(x + 0.044715x³)."""
    return _SQRT_2_OVER_PI * (x + 0.044715 * (x ** 3)), _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * (x * x))


def _gelu_exact_tail(x: Array) -> tuple[Array, Array]:
    """(S, p) for x ≤ −10: Φ(x) = φ(x)·S/|x|, S = 1 − 1/x² + 3/x⁴ − 15/x⁶ + 105/x⁸ (1e-7 from the
    sum at x = −10, where the input's rounding alone moves gelu by 1e-5), and φ(x) = p·p/√(2π) with
    p = e^{−x²/4}: normal where φ alone would be subnormal."""
    t = 1 / (x * x)
    return 1 + t * (-1 + t * (3 + t * (-15 + t * 105))), jnp.exp(-(x * x) / 4)


@rule(like=jax.nn.gelu, settings=("approximate",))
def gelu(x: ArrayLike, approximate: bool = True) -> Array:
    r"""Gaussian error linear unit, saving its input.

    Exact (``approximate=False``), with Φ the standard normal CDF and φ its density:

    .. math:: y = xΦ(x) = \tfrac12 x \operatorname{erfc}(-x/\sqrt2),        \bar x = (Φ(x) + xφ(x)) ∘ \bar y

    (erfc, not 1 + erf, which cancels for x < −3). Below x = −10 the value comes from the asymptotic
    series Φ(x) = φ(x)(1 − 1/x² + 3/x⁴ − …)/|x|, since erfc(−x/√2) turns subnormal (and XLA's CPU
    flushes it to 0) at x = −13 while xΦ(x) is still a normal number.

    Tanh approximation (default, as ``jax.nn.gelu``), with u = \sqrt{2/π}(x + 0.044715x^3):

    .. math:: y = \tfrac12 x(1 + \tanh u) = xσ(2u),        \bar x = (σ(2u) + 2xσ(2u)σ(-2u)u') ∘ \bar y

    ½(1 + tanh u) is computed as σ(2u) = 1/(1 + e^{−2u}), which does not cancel for x < 0 (jax.nn's
    1 + tanh u does, from x ≈ −3), and σ(−2u) on its own rather than as 1 − σ(2u). Values are within
    a few ulps everywhere (README, accuracy table), slopes too but where they are below 1e-37
    (x < −10); the limits at ±inf are 0 and x, with slopes 0 and 1 (jax.nn: NaN).
    """
    static_bool("gelu", "approximate", approximate)
    if approximate:
        u, _ = _gelu_u(x)
        # xσ(2u) as x/(1 + e^{−2u}): no subnormal σ(2u) on the way (x·σ(2u) flushes it to 0 from
        # 2u = −87.3, where the product is still normal); where e^{−2u} overflows the result is
        # within 2.5 ulps of the smallest normal, and 0 at x = −inf
        e = jnp.exp(-2 * u)
        return jnp.where(jnp.isinf(e), 0, x / (1 + e))
    s, p = _gelu_exact_tail(x)
    tail = -_halves(_INV_SQRT_2PI * s, p)  # xΦ(x) = −φ(x)·S
    # (½x)·erfc: halved first, since erfc(−x/√2) = 2 at the top and 2x would overflow
    return jnp.where(x < _GELU_TAIL, tail, (0.5 * x) * lax.erfc(-x * _SQRT_HALF)).astype(x.dtype)


def _gelu_fwd(x, approximate):
    return gelu.call(x, approximate), x


def _gelu_bwd(approximate, x, g):
    if approximate:
        u, du = _gelu_u(x)
        s, s_minus = _sigmoid_pair(jnp.exp(-2 * u), 2 * u)
        w = s * s_minus
        return (g * (s + jnp.where(w == 0, 0, 2 * x * du * w)),)  # 0 where σ′ is 0, even if x·u′ overflowed
    # Φ + xφ, with x·e^{−x²/2} formed before the factor 1/√(2π), which would make it subnormal first
    xq = _times(x, jnp.exp(-0.5 * (x * x)))
    return (g * (0.5 * lax.erfc(-x * _SQRT_HALF) + _INV_SQRT_2PI * xq).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


# --- silu / swish ----------------------------------------------------------------------------

@rule(like=jax.nn.silu)
def silu(x: ArrayLike) -> Array:
    r"""SiLU (swish), x·σ(x), saving its input.

    .. math:: y = xσ(x),        \bar x = (σ(x) + xσ(x)σ(-x)) ∘ \bar y

    σ(−x) is computed on its own, not as 1 − σ(x) (which loses it once σ(x) rounds to 1). At
    x = ±inf value and slope are their limits (0 and ∞, slopes 0 and 1), never ∞·0 = NaN; the same
    for gelu and mish. Below x = −80, xσ(x) = x·e^{x/2}·e^{x/2}: σ(x) alone is subnormal (flushed to
    0 on CPU) from x = −87 while xσ(x) is a normal number down to −92.
    """
    deep = x < _EXP_TAIL
    e = _exp_split(x, deep)
    return jnp.where(deep, _halves(x, e), x / (1 + e))


def _silu_fwd(x):
    return silu.call(x), x


def _silu_bwd(x, g):
    deep = x < _EXP_TAIL
    e = _exp_split(x, deep)
    s, s_minus = _sigmoid_pair(e, x)
    # below −80, e^x(1 + x): normal down to x = −92, where σ(x) alone is not
    return (g * jnp.where(deep, _halves(1 + x, e), s + _times(x, s * s_minus)),)


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

    1 − tanh²(s) is computed as 4σ(−2s)σ(2s), which does not cancel where tanh(s) rounds to 1
    (x > 8). mish(−inf) = 0 (its limit; jax.nn gives NaN), with slope 0. Below x = −80,
    mish(x) = x·e^{x/2}·e^{x/2} to working precision, as for silu.
    """
    deep = x < _EXP_TAIL
    e = jnp.exp(jnp.where(deep, x / 2, -jnp.abs(x)))  # e^{−|x|}, or e^{x/2} far below: one exponential
    s = jnp.maximum(x, 0) + jnp.log1p(e)  # softplus, as jnp.logaddexp(x, 0) computes it
    return jnp.where(deep, _halves(x, e), _times(x, jnp.tanh(s)))


def _mish_fwd(x):
    return mish.call(x), x


def _mish_bwd(x, g):
    deep = x < _EXP_TAIL
    e = jnp.exp(jnp.where(deep, x / 2, -jnp.abs(x)))
    s = jnp.maximum(x, 0) + jnp.log1p(e)
    a = lax.logistic(-2 * s)  # σ(−2s) ∈ (0, ½]: 1 − tanh s = 2a, 1 − tanh² s = 4a(1 − a)
    sig = jnp.where(x >= 0, 1, e) / (1 + e)  # σ(x) from e^{−|x|}
    main = jnp.tanh(s) + _times(x, 4 * a * (1 - a) * sig)
    return (g * jnp.where(deep, _halves(1 + x, e), main),)  # e^x(1 + x) far below


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
    return _times(x, jnp.minimum(jnp.maximum(x + 3.0, 0), 6.0) / 6.0)  # hard_silu(−inf) = 0, its limit


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
    soft_sign(±inf) = ±1, its limit (jax.nn gives NaN).
    """
    return jnp.where(jnp.isinf(x), jnp.sign(x), x / (jnp.abs(x) + 1))


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
    # 1/(1 + b/(2y)²): no inf/inf when y² overflows, and (2y)² is normal down to slopes of 4y²/b
    # (y² alone is subnormal from x = −1.8e19)
    q = 2 * y
    ratio = b / jnp.where(y == 0, 1, q * q)
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


