"""Argument checks shared by every rule: clear errors, raised before XLA sees the input."""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def floating(rule: str, name: str, x: Any) -> jax.Array:
    """``x`` as an array of a floating dtype, or a TypeError naming the rule and the argument."""
    if isinstance(x, (list, tuple, dict, str, bytes)) or x is None:
        raise TypeError(f"{rule}: argument {name} must be an array, got {type(x).__name__}")
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{rule}: argument {name} must have a floating dtype to be differentiated, got {dtype}; "
            f"cast it first, e.g. {name}.astype(jnp.float32)"
        )
    return jnp.asarray(x)


def static_number(rule: str, name: str, v: Any, *, low: float | None = None,
                  high: float | None = None, strict_low: bool = False) -> float:
    """A static Python number (a rule setting, never an array), checked against a range."""
    if isinstance(v, jax.core.Tracer) or not isinstance(v, (numbers.Real, np.ndarray, jax.Array)) \
            or isinstance(v, bool) or np.ndim(v) != 0:
        raise TypeError(
            f"{rule}: {name} is a static setting and must be a Python number, got {type(v).__name__}"
            + (f" with shape {np.shape(v)}" if np.ndim(v) else "")
        )
    v = float(v)
    if low is not None and (v < low or (strict_low and v == low)):
        raise ValueError(f"{rule}: {name} must be {'>' if strict_low else '>='} {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{rule}: {name} must be <= {high}, got {v}")
    return v


def static_bool(rule: str, name: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{rule}: {name} is a static setting and must be a Python bool, got {type(v).__name__}")
    return bool(v)


def axis(rule: str, ax: Any, ndim: int, name: str = "axis") -> int:
    """A single axis normalised to [0, ndim), or a ValueError naming the rule, the axis and ndim."""
    if isinstance(ax, bool) or not isinstance(ax, (numbers.Integral,)):
        raise TypeError(f"{rule}: {name} must be an int, got {type(ax).__name__}")
    if not -ndim <= ax < ndim:
        raise ValueError(f"{rule}: {name}={ax} is out of range for an input with {ndim} dimensions")
    return int(ax) % ndim


def axes(rule: str, ax: Any, ndim: int, name: str = "axis") -> tuple[int, ...]:
    """``None`` (all axes), an int or a tuple of ints, normalised and sorted."""
    if ax is None:
        return tuple(range(ndim))
    if isinstance(ax, (tuple, list)):
        out = tuple(sorted(axis(rule, a, ndim, name) for a in ax))
        if len(set(out)) != len(out):
            raise ValueError(f"{rule}: {name}={tuple(ax)} repeats an axis")
        return out
    return (axis(rule, ax, ndim, name),)


def mask(rule: str, where: Any, shape: tuple[int, ...], missing: tuple[int, ...] | None = None) -> jax.Array | None:
    """A boolean ``where`` broadcast to ``shape`` (None stays None), or an error naming the rule.

    ``missing``: axes a mask of lower rank lacks (optax's losses accept a mask without the class
    axis); they are inserted before broadcasting.
    """
    if where is None:
        return None
    m = jnp.asarray(where)
    if m.dtype != jnp.bool_:
        raise TypeError(f"{rule}: where must be a boolean mask, got dtype {m.dtype}")
    if missing is not None and m.ndim == len(shape) - len(missing):
        m = jnp.expand_dims(m, missing)
    try:
        return jnp.broadcast_to(m, shape)
    except ValueError:
        raise ValueError(f"{rule}: where with shape {jnp.shape(where)} does not broadcast to {shape}") from None
