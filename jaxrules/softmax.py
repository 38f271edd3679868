r"""Vector activations and multiplicative combinations (seed 003).

Softmax is a vector activation: its Jacobian is full, J = diag(y) − y yᵀ, so the pullback is

.. math:: \bar x = J^T \bar y = y ∘ (\bar y - \langle \bar y, y \rangle),

which needs only the output y. ``where`` masks entries out along the reduced axes: they get
output 0 (softmax), −∞ (log_softmax) and zero gradient; a fully masked row gives zeros, never NaN.
All three subtract the (masked) maximum first, so logits of any finite size are safe.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxrules import _checks
from jaxrules._broadcast import Static, unbroadcast
from jaxrules._checks import floating
from jaxrules._rule import rule

Array = jax.Array
Axis = int | tuple[int, ...] | None

__all__ = ["softmax", "log_softmax", "logsumexp", "glu", "pair_product"]


def _setup(rule: str, x: Any, axis: Axis, where: Any):
    """x as a float array, the reduced axes, and the mask broadcast to x's shape (or None)."""
    x = floating(rule, "x", x)
    axes = _checks.axes(rule, axis, x.ndim)
    return x, axes, _checks.mask(rule, where, x.shape)


def _shifted(x: Array, axes: tuple[int, ...], mask: Array | None):
    """(m, e, s): the masked maximum m (0 where a row has no finite entry), e = exp(x − m) (0 where
    masked) and s = Σ e, all with keepdims."""
    xm = x if mask is None else jnp.where(mask, x, -jnp.inf)
    m = jnp.max(xm, axis=axes, keepdims=True, initial=-jnp.inf)
    m = lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0))
    e = jnp.exp(xm - m)
    return m, e, jnp.sum(e, axis=axes, keepdims=True)


def _masked_max(x: Array, axes: tuple[int, ...], mask: Array | None) -> Array:
    """The maximum over axes with keepdims (masked entries left out), 0 where it is not finite."""
    xm = x if mask is None else jnp.where(mask, x, -jnp.inf)
    m = jnp.max(xm, axis=axes, keepdims=True, initial=-jnp.inf)
    return lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0))


def _weights(x: Array, log_s: Array, axes: tuple[int, ...], mask: Array | None) -> Array:
    """e^{x − m − log s}, the softmax weights, from the log-sum log s = log Σ e^{x − m} of the shifted
    logits (m the maximum, found again): x − m is exact near the top, so this is as accurate as
    softmax itself. From a rounded y = m + log s instead, e^{x − y} is off by y's rounding, 5e-4
    near logits of 1e4. 0 where masked, and where log s is not finite (no entry, or an infinite one)."""
    m = _masked_max(x, axes, mask)
    finite = jnp.isfinite(log_s)
    p = jnp.where(finite, jnp.exp((x - m) - jnp.where(finite, log_s, 0)), 0)
    return p if mask is None else jnp.where(mask, p, 0)


# --- softmax ---------------------------------------------------------------------------------

@rule(like=jax.nn.softmax, settings=("axis",))
def softmax(x: ArrayLike, axis: Axis = -1, where: ArrayLike | None = None) -> Array:
    r"""Softmax along ``axis`` (an int or a tuple), saving only its output.

    .. math:: y = \frac{e^{x - \max x}}{\sum e^{x - \max x}},        \bar x = y ∘ (\bar y - \textstyle\sum \bar y ∘ y)

    Masked entries (``where`` False) get y = 0 and x̄ = 0; a fully masked row gives zeros.
    """
    x, axes, mask = _setup("softmax", x, axis, where)
    _, e, s = _shifted(x, axes, mask)
    return e / jnp.where(s == 0, 1, s)


def _softmax_fwd(x, axis, where):
    y = softmax.call(x, axis, where)
    return y, y


def _softmax_bwd(axis, y, g):
    axes = _checks.axes("softmax", axis, y.ndim)
    return y * (g - jnp.sum(g * y, axis=axes, keepdims=True)), None


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def softmax_backward(y_bar: ArrayLike, y: ArrayLike, axis: Axis = -1) -> Array:
    """∇softmax(ȳ, y) = y ∘ (ȳ − Σ ȳ ∘ y): softmax's pullback as a function of its output alone."""
    return _softmax_bwd(axis, jnp.asarray(y), jnp.asarray(y_bar))[0]


# --- log_softmax -----------------------------------------------------------------------------

def _log_softmax_forward(x, axes, mask):
    """log softmax over axes; -inf where masked (and everywhere in a fully masked row)."""
    m, _, s = _shifted(x, axes, mask)
    y = x - m - jnp.log(s)
    return y if mask is None else jnp.where(mask, y, -jnp.inf)


@rule(like=jax.nn.log_softmax, settings=("axis",))
def log_softmax(x: ArrayLike, axis: Axis = -1, where: ArrayLike | None = None) -> Array:
    r"""Log-softmax along ``axis``, saving only its output (and the mask, if given).

    .. math:: y = x - \max x - \log \textstyle\sum e^{x - \max x},        \bar x = \bar y - e^{y} \textstyle\sum \bar y

    e^y is the softmax, so y suffices. Masked entries get y = −∞ and x̄ = 0.
    """
    return _log_softmax_forward(*_setup("log_softmax", x, axis, where))


def _log_softmax_fwd(x, axis, where):
    x, axes, mask = _setup("log_softmax", x, axis, where)
    y = _log_softmax_forward(x, axes, mask)
    return y, (y, mask)


def _log_softmax_bwd(axis, res, g):
    y, mask = res
    axes = _checks.axes("log_softmax", axis, y.ndim)
    if mask is None:
        return g - jnp.exp(y) * jnp.sum(g, axis=axes, keepdims=True), None
    g = jnp.where(mask, g, 0)
    return jnp.where(mask, g - jnp.exp(y) * jnp.sum(g, axis=axes, keepdims=True), 0), None


log_softmax.defvjp(_log_softmax_fwd, _log_softmax_bwd)


# --- logsumexp -------------------------------------------------------------------------------

def _logsumexp_setup(a, axis, b, return_sign, where):
    if return_sign:
        raise NotImplementedError("logsumexp: return_sign=True is not supported; weights b must be >= 0")
    x, axes, mask = _setup("logsumexp", a, axis, where)
    if b is not None:
        b = floating("logsumexp", "b", b)
        try:
            b = jnp.broadcast_to(b, x.shape)
        except ValueError:
            raise ValueError(f"logsumexp: b with shape {b.shape} does not broadcast to a's shape {x.shape}") from None
    return x, axes, mask, b


def _logsumexp_parts(x, axes, mask, b):
    """(y, log s) with keepdims: y = m + log s, s = Σ b·e^{x − m}, m the (masked) maximum."""
    m, e, s = _shifted(x, axes, mask)
    if b is not None:
        s = jnp.sum(b * e, axis=axes, keepdims=True)
    log_s = jnp.log(s)
    return m + log_s, log_s


@rule(like=jax.nn.logsumexp, settings=("axis", "keepdims", "return_sign"), floats=("a", "b"))
def logsumexp(a: ArrayLike, axis: Axis = None, b: ArrayLike | None = None, keepdims: bool = False,
              return_sign: bool = False, where: ArrayLike | None = None) -> Array:
    r"""log Σ b·exp(a) over ``axis`` (None: all axes), with ``jax.nn.logsumexp``'s signature.

    .. math:: y = \max a + \log \textstyle\sum b\, e^{a - \max a},        \bar a = \bar y ∘ b\, e^{a - y},        \bar b = \bar y ∘ e^{a - y}

    b (default 1) are non-negative weights; ``return_sign=True`` (for negative weights) is not
    supported and raises. Keeps a (the input), b and log s = y − max a (reduced). Masked entries get
    zero gradients; a fully masked reduction gives y = −∞ and zero gradients. The backward takes
    e^{a − max a − log s}, not e^{a − y}: y is rounded (by 5e-4 near logits of 1e4), log s is not.
    """
    x, axes, mask, w = _logsumexp_setup(a, axis, b, return_sign, where)
    y, _ = _logsumexp_parts(x, axes, mask, w)
    return y if keepdims else jnp.squeeze(y, axis=axes)


def _logsumexp_fwd(a, axis, b, keepdims, return_sign, where):
    x, axes, mask, w = _logsumexp_setup(a, axis, b, return_sign, where)
    y, log_s = _logsumexp_parts(x, axes, mask, w)
    return (y if keepdims else jnp.squeeze(y, axis=axes)), (x, w, log_s, mask, Static(b is None or jnp.shape(b)))


def _logsumexp_bwd(axis, keepdims, return_sign, res, g):
    x, w, log_s, mask, b_shape = res
    axes = _checks.axes("logsumexp", axis, x.ndim)
    g = g if keepdims else jnp.expand_dims(g, axes)
    p = _weights(x, log_s, axes, mask)  # e^(a − y) with y = m + log s, not the rounded y; 0 where y = ±∞
    a_bar = g * p if w is None else g * w * p
    b_bar = None if w is None else unbroadcast(g * p, b_shape.value).astype(w.dtype)
    return a_bar, b_bar, None


logsumexp.defvjp(_logsumexp_fwd, _logsumexp_bwd)


# --- glu -------------------------------------------------------------------------------------

def _halves(rule: str, x: Any, axis: int):
    x = floating(rule, "x", x)
    if x.ndim == 0:
        raise ValueError(f"{rule}: x must have at least one dimension, got a scalar")
    ax = _checks.axis(rule, axis, x.ndim)
    if x.shape[ax] % 2:
        raise ValueError(f"{rule}: x must have an even size along axis {axis}, got shape {x.shape}")
    return x, ax


@rule(like=jax.nn.glu, settings=("axis",))
def glu(x: ArrayLike, axis: int = -1) -> Array:
    r"""Gated linear unit: x split in halves (a, b) along ``axis``, a gated by σ(b).

    .. math:: y = a ∘ σ(b),        \bar a = \bar y ∘ σ(b),        \bar b = \bar y ∘ a ∘ σ(b)σ(-b)

    Keeps x (the input). σ(−b) is computed on its own, not as 1 − σ(b), which is 0 once σ(b) rounds
    to 1 (b > 17 in float32), where σ′(b) = e^{−b} is not.
    """
    x, ax = _halves("glu", x, axis)
    a, b = jnp.split(x, 2, axis=ax)
    return a * lax.logistic(b)


def _glu_fwd(x, axis):
    return glu.call(x, axis), x


def _glu_bwd(axis, x, g):
    ax = axis % x.ndim
    a, b = jnp.split(x, 2, axis=ax)
    small = lax.logistic(-jnp.abs(b))  # σ(b) and σ(−b), each to an ulp: 1 − σ(b) loses σ(−b) for b > 17
    s, s_minus = jnp.where(b >= 0, 1 - small, small), jnp.where(b >= 0, small, 1 - small)
    return (jnp.concatenate([g * s, g * a * (s * s_minus)], axis=ax),)


glu.defvjp(_glu_fwd, _glu_bwd)


# --- pair_product ----------------------------------------------------------------------------

def _pairs(x: Array, ax: int) -> Array:
    """x with ``ax`` moved last and split into (n/2, 2) pairs of neighbours."""
    x = jnp.moveaxis(x, ax, -1)
    return x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))  # explicit sizes: x may have no elements


@rule(settings=("axis",))
def pair_product(x: ArrayLike, axis: int = -1) -> Array:
    r"""Seed 003's layer of multiplicative combination: products of neighbouring pairs along ``axis``.

    .. math:: y_i = x_{2i-1} x_{2i},        \bar x_{2i-1} = \bar y_i x_{2i},        \bar x_{2i} = \bar y_i x_{2i-1}

    (1-based, as in the seed.) Each input's gradient is the other input times ȳ. Keeps x.
    """
    x, ax = _halves("pair_product", x, axis)
    p = _pairs(x, ax)
    return jnp.moveaxis(p[..., 0] * p[..., 1], -1, ax)


def _pair_product_fwd(x, axis):
    return pair_product.call(x, axis), x


def _pair_product_bwd(axis, x, g):
    ax = axis % x.ndim
    p = _pairs(x, ax)
    gl = jnp.moveaxis(g, ax, -1)[..., None]
    xb = jnp.concatenate([gl * p[..., 1:], gl * p[..., :1]], axis=-1)
    return (jnp.moveaxis(xb.reshape(xb.shape[:-2] + (2 * xb.shape[-2],)), -1, ax),)


pair_product.defvjp(_pair_product_fwd, _pair_product_bwd)
