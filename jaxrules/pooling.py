r"""Max over subsets and pooling (seed 003, "Subgradients and the Max").

For y_j = max_{l ∈ δ_j} z_l the seed's subgradient sends ȳ_j to one maximal element of δ_j:

.. math:: \frac{∂y_j}{∂z_i} = 1 \text{ if } i = \operatorname{argmax}_{l ∈ δ_j} z_l, \text{ else } 0.

Ties go to the first maximal element in row-major order (the lowest flat index), so the
backward is deterministic. (``jax.grad`` of ``jnp.max`` instead splits ȳ evenly among ties.)
The pools follow ``flax.linen``'s conventions: x is (batch, *spatial, features) or (*spatial,
features), the window slides over the spatial axes.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxrules import _checks, _windows
from jaxrules._broadcast import Static
from jaxrules._checks import floating
from jaxrules._rule import rule

Array = jax.Array

__all__ = ["max", "max_pool", "avg_pool"]

_builtin_max = max


# --- max -------------------------------------------------------------------------------------

def _max_setup(x: Any, axis: Any):
    x = floating("max", "x", x)
    axes = _checks.axes("max", axis, x.ndim)
    if any(x.shape[a] == 0 for a in axes):
        raise ValueError(f"max: cannot reduce x of shape {x.shape} over a zero-sized axis {axes}")
    return x, axes


def _max_index(x: Array, axes: tuple[int, ...]) -> Array:
    """Flat index (row-major over the reduced axes) of the first maximum of each reduction."""
    kept = tuple(a for a in range(x.ndim) if a not in axes)
    xt = jnp.transpose(x, kept + axes)
    flat = xt.reshape(tuple(x.shape[a] for a in kept) + (_windows.numel([x.shape[a] for a in axes]),))
    return jnp.argmax(flat, axis=-1).astype(jnp.int32)


@rule(settings=("axis", "keepdims"))
def max(x: ArrayLike, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array:  # noqa: A001
    r"""Maximum over ``axis`` (an int, a tuple, or None for all), as ``jnp.max``.

    .. math:: y = \max_{l} x_l,        \bar x_i = \bar y \text{ if } i = \operatorname{argmax} x \text{ else } 0

    Ties: ȳ goes to the first maximal element in row-major order over the reduced axes. Keeps the
    int32 index of the maximum per output element (4 bytes per output, nothing per input).
    """
    x, axes = _max_setup(x, axis)
    return jnp.max(x, axis=axes, keepdims=keepdims)


def _max_fwd(x, axis, keepdims):
    x, axes = _max_setup(x, axis)
    return max.call(x, axis, keepdims), (_max_index(x, axes), Static((x.shape, x.dtype)))


def _max_bwd(axis, keepdims, res, g):
    idx, meta = res
    shape, dtype = meta.value
    axes = _checks.axes("max", axis, len(shape))
    kept = tuple(a for a in range(len(shape)) if a not in axes)
    if keepdims:
        g = jnp.squeeze(g, axis=axes)
    n = _windows.numel([shape[a] for a in axes])
    hot = (jnp.arange(n, dtype=jnp.int32) == idx[..., None]).astype(g.dtype) * g[..., None]
    xt_shape = tuple(shape[a] for a in kept) + tuple(shape[a] for a in axes)
    x_bar = hot.reshape(xt_shape)
    return (jnp.transpose(x_bar, np.argsort(kept + axes)).astype(dtype),)


max.defvjp(_max_fwd, _max_bwd)


# --- pooling settings ------------------------------------------------------------------------

def _pool_setup(rule: str, x: Any, window_shape: Any, strides: Any, padding: Any):
    """x with a batch axis, and (window, strides, pads) over the spatial axes, all checked."""
    x = floating(rule, "x", x)
    if not isinstance(window_shape, (tuple, list)):
        raise ValueError(f"{rule}: window_shape must be a tuple of ints, got {window_shape!r}")
    n = len(window_shape)
    window = _windows.ints(rule, "window_shape", tuple(window_shape), n)
    if x.ndim not in (n + 1, n + 2):
        raise ValueError(f"{rule}: x must have shape (batch, *spatial, features) or (*spatial, features) with "
                         f"{n} spatial dimensions for window_shape {window}, got {x.shape}")
    s = window if strides is None else _windows.ints(rule, "strides", strides, n)
    spatial = x.shape[-n - 1:-1]
    p = _windows.pads(rule, padding, spatial, window, s)
    _windows.out_shape(rule, spatial, window, s, p)
    return x, (window, s, p)


def _full(x: Array, window, s, p):
    """Window settings over all axes of x (1 for batch and features)."""
    lead = x.ndim - len(window) - 1
    return ((1,) * lead + window + (1,), (1,) * lead + s + (1,), ((0, 0),) * lead + p + ((0, 0),))


# --- max_pool --------------------------------------------------------------------------------

def _argmax_reducer(a, b):
    """(value, index) pairs: the larger value wins; NaN wins; on a tie the smaller index wins."""
    va, ia = a
    vb, ib = b
    a_nan, b_nan = jnp.isnan(va), jnp.isnan(vb)
    tie = (va == vb) | (a_nan & b_nan)
    a_wins = (va > vb) | (a_nan & ~b_nan) | (tie & (ia < ib))
    return jnp.where(a_wins, va, vb), jnp.where(a_wins, ia, ib)


@rule(settings=("window_shape", "strides", "padding"))
def max_pool(x: ArrayLike, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID") -> Array:
    r"""Max pooling (``flax.linen.max_pool``'s conventions): the max over each window.

    .. math:: y_j = \max_{l ∈ δ_j} x_l,        \bar x_i = \textstyle\sum_{j: i = \operatorname{argmax}_{δ_j} x} \bar y_j

    Ties within a window: the first element in row-major order. The forward finds value and
    flat index of each window's maximum in one variadic ``reduce_window``; the backward keeps only
    those int32 indices (one per output element) and scatter-adds ȳ to them.
    strides default to window_shape; padding is "VALID", "SAME" or (low, high) pairs.
    """
    x, (window, s, p) = _pool_setup("max_pool", x, window_shape, strides, padding)
    dims, st, pads = _full(x, window, s, p)
    return lax.reduce_window(x, -jnp.inf, lax.max, dims, st, pads)


def _max_pool_fwd(x, window_shape, strides, padding):
    x, (window, s, p) = _pool_setup("max_pool", x, window_shape, strides, padding)
    dims, st, pads = _full(x, window, s, p)
    index = lax.iota(jnp.int32, x.size).reshape(x.shape)
    # the variadic reduce_window has no derivative of its own: it only finds the indices, and the
    # value is gathered from x through them, so that this fwd stays differentiable (grad of grad)
    _, arg = lax.reduce_window((lax.stop_gradient(x), index), (jnp.array(-jnp.inf, x.dtype), jnp.int32(x.size)),
                               _argmax_reducer, dims, st, pads)
    y = jnp.take(x.reshape(-1), arg, mode="fill", fill_value=-jnp.inf)
    return y, (arg, Static((x.shape, x.dtype)))


def _max_pool_bwd(window_shape, strides, padding, res, g):
    arg, meta = res
    shape, dtype = meta.value
    size = _windows.numel(shape)
    # windows made only of padding point past the end (index = size) and are dropped
    x_bar = jnp.zeros((size,), g.dtype).at[arg.reshape(-1)].add(g.reshape(-1), mode="drop")
    return (x_bar.reshape(shape).astype(dtype),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# --- avg_pool --------------------------------------------------------------------------------

def _window_counts(shape, window, s, p, dtype):
    """How many real (unpadded) elements each window covers: a constant of the output's shape.

    Window sums start from a Python 0, which lax recognises as reduce_window_sum: transposable, so
    the backward's transpose (the forward-mode twin) exists."""
    ones = jnp.ones(shape[-len(window) - 1:-1] + (1,), dtype)
    dims, st, pads = _full(ones, window, s, p)
    return lax.reduce_window(ones, 0, lax.add, dims, st, pads)


@rule(settings=("window_shape", "strides", "padding", "count_include_pad"))
def avg_pool(x: ArrayLike, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID", count_include_pad: bool = True) -> Array:
    r"""Average pooling (``flax.linen.avg_pool``'s conventions).

    .. math:: y_j = \frac{1}{c_j} \textstyle\sum_{l ∈ δ_j} x_l,        \bar x_i = \textstyle\sum_{j: i ∈ δ_j} \bar y_j / c_j

    c_j is the window size, or with ``count_include_pad=False`` the number of real elements in
    window j. The backward is a stride-1 window sum over ȳ/c dilated by the strides and padded
    (the transpose of the window sum); it keeps no arrays, only shapes. A window that covers only
    padding has c = 0 there and averages to NaN (0/0), as in flax.
    """
    _checks.static_bool("avg_pool", "count_include_pad", count_include_pad)
    x, (window, s, p) = _pool_setup("avg_pool", x, window_shape, strides, padding)
    dims, st, pads = _full(x, window, s, p)
    total = lax.reduce_window(x, 0, lax.add, dims, st, pads)
    if count_include_pad:
        return total / _windows.numel(window)
    return total / _window_counts(x.shape, window, s, p, x.dtype)


def _avg_pool_fwd(x, window_shape, strides, padding, count_include_pad):
    y = avg_pool.call(x, window_shape, strides, padding, count_include_pad)
    return y, Static((jnp.shape(x), jnp.result_type(x)))


def _avg_pool_bwd(window_shape, strides, padding, count_include_pad, meta, g):
    shape, dtype = meta.value
    n = len(window_shape)
    window = tuple(window_shape)
    s = window if strides is None else _windows.ints("avg_pool", "strides", strides, n)
    p = _windows.pads("avg_pool", padding, shape[-n - 1:-1], window, s)
    g = g / (_windows.numel(window) if count_include_pad else _window_counts(shape, window, s, p, g.dtype))
    lead = len(shape) - n - 1
    tp = _windows.transpose_pads(shape[-n - 1:-1], window, s, g.shape[-n - 1:-1], p)
    config = ((0, 0, 0),) * lead + tuple((lo, hi, st - 1) for (lo, hi), st in zip(tp, s)) + ((0, 0, 0),)
    g = lax.pad(g, jnp.array(0, g.dtype), config)
    dims = (1,) * lead + window + (1,)
    x_bar = lax.reduce_window(g, 0, lax.add, dims, (1,) * len(shape), "VALID")
    return (x_bar.astype(dtype),)


avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)
