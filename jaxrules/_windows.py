"""Window arithmetic shared by conv and pooling: settings, padding, and the padding of a transpose.

Kept in one place so that the convolution's x̄ and the pools' backward use the same formula.
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
from jax import lax

Pads = tuple[tuple[int, int], ...]


def ints(rule: str, name: str, v: Any, n: int, *, minimum: int = 1) -> tuple[int, ...]:
    """An int or a sequence of n ints (strides, dilation, window), each >= minimum."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        v = (int(v),) * n
    if not isinstance(v, (tuple, list)) or len(v) != n or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in v):
        raise ValueError(f"{rule}: {name} must be an int or a sequence of {n} ints, got {v!r}")
    if any(i < minimum for i in v):
        raise ValueError(f"{rule}: every entry of {name} must be >= {minimum}, got {tuple(v)}")
    return tuple(int(i) for i in v)


def pads(rule: str, padding: Any, in_shape: Sequence[int], window: Sequence[int],
         strides: Sequence[int], dilation: Sequence[int] | None = None) -> Pads:
    """"VALID", "SAME" or explicit (low, high) pairs, as explicit pairs per spatial dimension."""
    n = len(in_shape)
    dilated = tuple((k - 1) * d + 1 for k, d in zip(window, dilation or (1,) * n))
    if isinstance(padding, str):
        if padding.upper() not in ("VALID", "SAME"):
            raise ValueError(f"{rule}: padding must be 'VALID', 'SAME' or (low, high) pairs, got {padding!r}")
        return tuple(lax.padtype_to_pads(tuple(in_shape), dilated, tuple(strides), padding.upper()))
    if isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
        padding = ((int(padding), int(padding)),) * n
    try:
        out = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        raise ValueError(f"{rule}: padding must be 'VALID', 'SAME' or (low, high) pairs, got {padding!r}") from None
    if len(out) != n:
        raise ValueError(f"{rule}: padding needs {n} (low, high) pairs, one per spatial dimension, got {len(out)}")
    return out


def out_shape(rule: str, in_shape: Sequence[int], window: Sequence[int], strides: Sequence[int],
              padding: Pads, dilation: Sequence[int] | None = None) -> tuple[int, ...]:
    """Spatial output shape, or a ValueError when a window is larger than the padded input."""
    n = len(in_shape)
    dilated = tuple((k - 1) * d + 1 for k, d in zip(window, dilation or (1,) * n))
    padded = tuple(i + lo + hi for i, (lo, hi) in zip(in_shape, padding))
    if any(w > p for w, p in zip(dilated, padded)):
        raise ValueError(
            f"{rule}: window {tuple(dilated)} (dilated) is larger than the padded input {padded} "
            f"(spatial input {tuple(in_shape)}, padding {tuple(padding)})"
        )
    return tuple((p - w) // s + 1 for p, w, s in zip(padded, dilated, strides))


def transpose_pads(in_shape: Sequence[int], window: Sequence[int], strides: Sequence[int],
                   out: Sequence[int], padding: Pads, dilation: Sequence[int] | None = None) -> Pads:
    """Padding of the stride-dilated cotangent so that a stride-1 pass over it yields x̄ of in_shape.

    With k = (window - 1)·dilation + 1 and o = (out - 1)·stride + 1, the low pad is k - 1 - low
    and the high pad is whatever makes the result in_shape long.
    """
    n = len(in_shape)
    res = []
    for i, w, s, o, (lo, _), d in zip(in_shape, window, strides, out, padding, dilation or (1,) * n):
        k = (w - 1) * d + 1
        before = k - 1 - lo
        res.append((before, i + k - 1 - ((o - 1) * s + 1) - before))
    return tuple(res)


def numel(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))
