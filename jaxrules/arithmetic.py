r"""Elementwise arithmetic with NumPy broadcasting (seed 001, shape rules of seed 002).

For z = x ⊙ y on broadcast shapes, the pullback of each argument is computed on the broadcast
shape and then summed back to that argument's shape by the one helper
:func:`jaxrules._broadcast.unbroadcast`:

.. math:: \bar x = \mathrm{unbroadcast}(\bar z\,∂z/∂x,\ \mathrm{shape}(x))

Arguments of integer dtype may be mixed in (``add(x, 1)``); they get no cotangent (JAX's float0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrules._broadcast import Static, broadcast_shapes, unbroadcast
from jaxrules._rule import rule

Array = jax.Array

__all__ = ["add", "subtract", "multiply", "divide"]


def _operands(rule: str, x, y):
    """Check the operands of a binary rule: arrays that broadcast, with a floating result."""
    for name, v in (("x", x), ("y", y)):
        if v is None or isinstance(v, (list, tuple, dict, str)):
            raise TypeError(f"{rule}: argument {name} must be an array or a number, got {type(v).__name__}")
    broadcast_shapes(rule, x=jnp.shape(x), y=jnp.shape(y))
    out = jnp.result_type(x, y)
    if not jnp.issubdtype(out, jnp.inexact):
        raise TypeError(
            f"{rule}: at least one argument must have a floating dtype, got {jnp.result_type(x)} "
            f"and {jnp.result_type(y)}"
        )
    return Static(((jnp.shape(x), jnp.result_type(x)), (jnp.shape(y), jnp.result_type(y))))


def _cotangent(g, shape_dtype):
    """g summed back to an argument's shape and cast to its dtype; None for integer arguments."""
    shape, dtype = shape_dtype
    if not jnp.issubdtype(dtype, jnp.inexact):
        return None
    return unbroadcast(g, shape).astype(dtype)


# --- add -------------------------------------------------------------------------------------

@rule(floats=())
def add(x: ArrayLike, y: ArrayLike) -> Array:
    r"""Elementwise sum with broadcasting.

    .. math:: z = x + y,        \bar x = \mathrm{unbroadcast}(\bar z),\ \bar y = \mathrm{unbroadcast}(\bar z)

    Keeps no arrays for the backward, only the two shapes.
    """
    _operands("add", x, y)
    return jnp.add(x, y)


def _add_fwd(x, y):
    return add.call(x, y), _operands("add", x, y)


def _add_bwd(meta, g):
    sx, sy = meta.value
    return _cotangent(g, sx), _cotangent(g, sy)


add.defvjp(_add_fwd, _add_bwd)


# --- subtract --------------------------------------------------------------------------------

@rule(floats=())
def subtract(x: ArrayLike, y: ArrayLike) -> Array:
    r"""Elementwise difference with broadcasting.

    .. math:: z = x - y,        \bar x = \mathrm{unbroadcast}(\bar z),\ \bar y = -\mathrm{unbroadcast}(\bar z)
    """
    _operands("subtract", x, y)
    return jnp.subtract(x, y)


def _subtract_fwd(x, y):
    return subtract.call(x, y), _operands("subtract", x, y)


def _subtract_bwd(meta, g):
    sx, sy = meta.value
    return _cotangent(g, sx), _cotangent(-g, sy)


subtract.defvjp(_subtract_fwd, _subtract_bwd)


# --- multiply --------------------------------------------------------------------------------

@rule(floats=())
def multiply(x: ArrayLike, y: ArrayLike) -> Array:
    r"""Elementwise (Hadamard) product with broadcasting (seed 001, "Product").

    .. math:: z = x ∘ y,        \bar x = \mathrm{unbroadcast}(\bar z ∘ y),\ \bar y = \mathrm{unbroadcast}(\bar z ∘ x)

    Keeps the two inputs, which are alive anyway.
    """
    _operands("multiply", x, y)
    return jnp.multiply(x, y)


def _multiply_fwd(x, y):
    return multiply.call(x, y), (x, y, _operands("multiply", x, y))


def _multiply_bwd(res, g):
    x, y, meta = res
    sx, sy = meta.value
    return _cotangent(g * y, sx), _cotangent(g * x, sy)


multiply.defvjp(_multiply_fwd, _multiply_bwd)


# --- divide ----------------------------------------------------------------------------------

@rule(floats=())
def divide(x: ArrayLike, y: ArrayLike) -> Array:
    r"""Elementwise true division with broadcasting.

    .. math:: z = x / y,        \bar x = \mathrm{unbroadcast}(\bar z / y),\ \bar y = -\mathrm{unbroadcast}(\bar z ∘ (x / y) / y)

    ȳ is formed as (z̄·x/y)/y rather than z̄·x/y², which overflows for small y.
    """
    _operands("divide", x, y)
    return jnp.true_divide(x, y)


def _divide_fwd(x, y):
    return divide.call(x, y), (x, y, _operands("divide", x, y))


def _divide_bwd(res, g):
    x, y, meta = res
    sx, sy = meta.value
    gx = g / y
    return _cotangent(gx, sx), _cotangent(-(gx * x) / y, sy)


divide.defvjp(_divide_fwd, _divide_bwd)
