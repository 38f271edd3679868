r"""Linear maps: matrix product, affine (dense) layer, convolution (seeds 002, 003, 004).

Seed 004 derives the matrix product's pullback by brute force:

.. math:: Z = XY,        \bar X = \bar Z Y^T,        \bar Y = X^T \bar Z.

The affine layer adds a bias whose cotangent is the output cotangent summed over the batch
(seed 002, "Bonus: updating bias"); the convolution's pullback is the same idea with shared
weights: x̄ is a transposed convolution of ȳ with W, W̄ a correlation of x with ȳ.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxrules import _windows
from jaxrules._broadcast import Static, broadcast_shapes, unbroadcast
from jaxrules._checks import floating
from jaxrules._rule import rule

Array = jax.Array

__all__ = ["matmul", "dense", "conv"]


def _like(g: Array, x: Array) -> Array:
    return g.astype(x.dtype)


# --- matmul ----------------------------------------------------------------------------------

def _matmul_check(a, b):
    a, b = floating("matmul", "a", a), floating("matmul", "b", b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: arguments must have at least one dimension, got shapes {a.shape} and {b.shape}")
    k_a = a.shape[-1]
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if k_a != k_b:
        raise ValueError(
            f"matmul: contraction dimensions differ: a has shape {a.shape} (last axis {k_a}), "
            f"b has shape {b.shape} ({'only' if b.ndim == 1 else 'second-to-last'} axis {k_b})"
        )
    if a.ndim > 2 or b.ndim > 2:
        broadcast_shapes("matmul", a_batch=a.shape[:-2], b_batch=b.shape[:-2])
    return a, b


@rule(like=jnp.matmul, floats=("a", "b"))
def matmul(a: ArrayLike, b: ArrayLike) -> Array:
    r"""Matrix product with ``jnp.matmul`` semantics (vectors, broadcast batch dimensions).

    .. math:: Y = AB,        \bar A = \bar Y B^T,        \bar B = A^T \bar Y

    A vector ``a`` is read as a row (1, k) and ``b`` as a column (k, 1), and that axis is dropped
    again; over broadcast batch dimensions the cotangents are summed back (``unbroadcast``).

    Args: a: (..., m, k) or (k,); b: (..., k, n) or (k,). Returns (..., m, n) with the vector axes dropped.
    Keeps a and b (the inputs, alive anyway).
    """
    a, b = _matmul_check(a, b)
    return jnp.matmul(a, b)


def _matmul_fwd(a, b):
    return matmul.call(a, b), (a, b)


def _matmul_bwd(res, g):
    a, b = res
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = jnp.expand_dims(g, -1) if b.ndim == 1 else g  # put the dropped vector axes back
    g2 = jnp.expand_dims(g2, -2) if a.ndim == 1 else g2
    a_bar = unbroadcast(jnp.matmul(g2, jnp.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
    b_bar = unbroadcast(jnp.matmul(jnp.swapaxes(a2, -1, -2), g2), b2.shape).reshape(b.shape)
    return _like(a_bar, a), _like(b_bar, b)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


# --- dense -----------------------------------------------------------------------------------

def _dense_check(x, W, b):
    x, W = floating("dense", "x", x), floating("dense", "W", W)
    if x.ndim == 0 or W.ndim != 2:
        raise ValueError(f"dense: x must have shape (..., in) and W shape (in, out), got {x.shape} and {W.shape}")
    if x.shape[-1] != W.shape[0]:
        raise ValueError(f"dense: x has shape {x.shape} with {x.shape[-1]} input features, but W has shape "
                         f"{W.shape} for {W.shape[0]}")
    if b is not None:
        b = floating("dense", "b", b)
        if b.shape != (W.shape[1],):
            raise ValueError(f"dense: bias b must have shape ({W.shape[1]},) to match W {W.shape}, got {b.shape}")
    return x, W, b


@rule(floats=("x", "W", "b"))
def dense(x: ArrayLike, W: ArrayLike, b: ArrayLike | None = None) -> Array:
    r"""Affine layer y = x W + b, batched over the leading axes of x.

    The seeds write z = W y + b for one column vector; with examples as rows of x this is
    y = x W + b, W of shape (in, out). For x of shape (..., in) and ȳ of shape (..., out):

    .. math:: \bar x = \bar y W^T,        \bar W = \textstyle\sum_{\text{batch}} x^T \bar y,        \bar b = \textstyle\sum_{\text{batch}} \bar y

    ``b`` may be None (no bias; its cotangent is None). Keeps x and W (inputs).
    """
    x, W, b = _dense_check(x, W, b)
    y = jnp.matmul(x, W)
    return y if b is None else y + b


def _dense_fwd(x, W, b):
    return dense.call(x, W, b), (x, W, Static(None if b is None else jnp.result_type(b)))


def _dense_bwd(res, g):
    x, W, b_dtype = res
    lead = tuple(range(x.ndim - 1))
    x_bar = jnp.matmul(g, W.T)
    W_bar = jnp.tensordot(x, g, axes=(lead, lead))  # Σ over the batch of xᵀ ȳ
    b_bar = None if b_dtype.value is None else jnp.sum(g, axis=lead).astype(b_dtype.value)
    return _like(x_bar, x), _like(W_bar, W), b_bar


dense.defvjp(_dense_fwd, _dense_bwd)


# --- conv ------------------------------------------------------------------------------------

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _conv_settings(x, W, b, strides, padding, dilation):
    x, W = floating("conv", "x", x), floating("conv", "W", W)
    n = W.ndim - 2
    if n not in _SPATIAL:
        raise ValueError(f"conv: W must have shape (*window, in_features, out_features) with 1 to 3 window "
                         f"dimensions, got {W.shape}")
    if x.ndim != n + 2:
        raise ValueError(f"conv: x must have shape (batch, *spatial, in_features) with {n} spatial dimensions "
                         f"to match W {W.shape}, got {x.shape}")
    if x.shape[-1] != W.shape[-2]:
        raise ValueError(f"conv: x has {x.shape[-1]} input features (shape {x.shape}) but W expects "
                         f"{W.shape[-2]} (shape {W.shape})")
    if b is not None:
        b = floating("conv", "b", b)
        if b.shape != (W.shape[-1],):
            raise ValueError(f"conv: bias b must have shape ({W.shape[-1]},) to match W {W.shape}, got {b.shape}")
    window = W.shape[:n]
    s = _windows.ints("conv", "strides", strides, n)
    d = _windows.ints("conv", "dilation", dilation, n)
    p = _windows.pads("conv", padding, x.shape[1:-1], window, s, d)
    _windows.out_shape("conv", x.shape[1:-1], window, s, p, d)
    return x, W, b, (s, p, d)


def _conv_forward(x, W, s, p, d):
    sp = _SPATIAL[W.ndim - 2]
    dt = jnp.result_type(x, W)  # lax wants one dtype; mixed inputs are promoted, as jnp would
    return lax.conv_general_dilated(x.astype(dt), W.astype(dt), s, p, rhs_dilation=d,
                                    dimension_numbers=("N" + sp + "C", sp + "IO", "N" + sp + "C"))


@rule(settings=("strides", "padding", "dilation"), floats=("x", "W", "b"))
def conv(x: ArrayLike, W: ArrayLike, b: ArrayLike | None = None, strides: int | Sequence[int] = 1,
         padding: str | Sequence[tuple[int, int]] = "VALID", dilation: int | Sequence[int] = 1) -> Array:
    r"""N-d convolution (cross-correlation) with flax's layout, for 1 to 3 spatial dimensions.

    x: (batch, *spatial, in), W: (*window, in, out), b: (out,) or None. With stride s, padding
    (lo, hi) and kernel dilation δ:

    .. math:: y[n, o, f] = \textstyle\sum_{k, c} x[n, s·o + δ·k - lo, c]\, W[k, c, f] + b[f]

    .. math:: \bar x = \bar y \text{ dilated by } s, \text{ padded, correlated with } W \text{ flipped (in ↔ out)};
              \bar W[k, c, f] = \textstyle\sum_{n, o} x[n, s·o + δ·k - lo, c]\, \bar y[n, o, f];
              \bar b = \textstyle\sum_{n, o} \bar y

    strides and dilation are ints or one per spatial dimension; padding is "VALID", "SAME" or
    (low, high) pairs. They are static settings. Keeps x and W (inputs).
    """
    x, W, b, (s, p, d) = _conv_settings(x, W, b, strides, padding, dilation)
    y = _conv_forward(x, W, s, p, d)
    return y if b is None else y + b


def _conv_fwd(x, W, b, strides, padding, dilation):
    return conv.call(x, W, b, strides, padding, dilation), (x, W, Static(None if b is None else jnp.result_type(b)))


def _conv_bwd(strides, padding, dilation, res, g):
    x, W, b_dtype = res
    n = W.ndim - 2
    sp = _SPATIAL[n]
    window = W.shape[:n]
    s = _windows.ints("conv", "strides", strides, n)
    d = _windows.ints("conv", "dilation", dilation, n)
    p = _windows.pads("conv", padding, x.shape[1:-1], window, s, d)
    # x̄: ȳ dilated by the strides, padded, correlated with W flipped in space, in/out swapped
    tp = _windows.transpose_pads(x.shape[1:-1], window, s, g.shape[1:-1], p, d)
    dt = jnp.result_type(x, W, g)
    xp, Wp, g = x.astype(dt), W.astype(dt), g.astype(dt)
    W_flip = jnp.flip(Wp, axis=tuple(range(n)))
    x_bar = lax.conv_general_dilated(g, W_flip, (1,) * n, tp, lhs_dilation=s, rhs_dilation=d,
                                     dimension_numbers=("N" + sp + "C", sp + "OI", "N" + sp + "C"))
    # W̄: x correlated with ȳ, the batch axis contracted (in_features play the batch's part)
    hi = tuple(((o - 1) * st + 1 - i) + ((k - 1) * dl + 1 - lo - 1)
               for i, o, st, k, dl, (lo, _) in zip(x.shape[1:-1], g.shape[1:-1], s, window, d, p))
    W_bar = lax.conv_general_dilated(xp, g, d, tuple((lo, h) for (lo, _), h in zip(p, hi)), rhs_dilation=s,
                                     dimension_numbers=("C" + sp + "N", "I" + sp + "O", sp + "NC"))
    b_bar = None if b_dtype.value is None else jnp.sum(g, axis=tuple(range(g.ndim - 1))).astype(b_dtype.value)
    return _like(x_bar, x), _like(W_bar, W), b_bar


conv.defvjp(_conv_fwd, _conv_bwd)
