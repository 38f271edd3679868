r"""Transformer building blocks whose pullbacks keep (almost) nothing: dropout, embedding, rope, swiglu, geglu.

* ``dropout`` keeps its PRNG key and draws the mask again in the backward (8 bytes, not a mask);
* ``embedding`` keeps the ids: the table's cotangent is a scatter-add of ȳ onto the rows;
* ``rope`` keeps the positions: its backward is the rotation by the opposite angle, sin and cos
  recomputed;
* ``swiglu`` and ``geglu`` (the gated MLP activations silu(a)·b and gelu(a)·b) keep a and b only.

bfloat16 and float16 inputs are computed in float32 (rope's angles, the gated products) and the
result has the input's dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrules import activations
from jaxrules._broadcast import Static, broadcast_shapes, unbroadcast
from jaxrules._checks import floating, static_bool, static_number
from jaxrules._rule import rule

Array = jax.Array

__all__ = ["dropout", "embedding", "rope", "swiglu", "geglu"]


def _wide(dtype: Any) -> Any:
    """The dtype a computation on half floats runs in: at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


# --- dropout ---------------------------------------------------------------------------------

def _dropout_key(key: Any, rate: float, training: bool) -> None:
    if not training or rate == 0:
        return
    if key is None:
        raise ValueError(f"dropout: key is None, but dropping at rate {rate} in training needs a PRNG key "
                         "(jax.random.key(seed)); pass training=False for the identity")
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    if not (typed and key.ndim == 0) and not (key.dtype == jnp.uint32 and key.ndim == 1):
        raise TypeError(f"dropout: key must be one PRNG key (jax.random.key(seed), or a raw uint32 key from "
                        f"jax.random.PRNGKey), got an array of dtype {key.dtype} and shape {key.shape}")


def _keep(key: Array, rate: float, shape: tuple[int, ...]) -> Array:
    """The mask of kept entries: Bernoulli(1 − rate) from the key, as flax's Dropout draws it."""
    return jax.random.bernoulli(key, 1.0 - rate, shape)


@rule(settings=("rate", "training"))
def dropout(x: ArrayLike, key: ArrayLike, rate: float, *, training: bool = True) -> Array:
    r"""Dropout: each entry zeroed with probability ``rate``, the others scaled by 1/(1 − rate).

    .. math:: y = \frac{m ∘ x}{1 - p},\quad m \sim \text{Bernoulli}(1 - p),        \qquad \bar x = \frac{m ∘ \bar y}{1 - p}

    The mask is ``jax.random.bernoulli(key, 1 - rate, x.shape)`` (flax's ``Dropout`` draws the same
    one): the same key gives the same mask under jit, vmap, scan and sharding. The backward draws it
    again from the key, so it keeps the key only (8 bytes), never a mask. The key gets no
    cotangent.

    ``rate`` is a static number in [0, 1]. ``rate=0`` and ``training=False`` are the identity
    (``key`` may then be None). ``rate=1`` returns zeros (as flax and PyTorch do), with a zero
    gradient; it does not raise.
    """
    p = static_number("dropout", "rate", rate, low=0.0, high=1.0)
    t = static_bool("dropout", "training", training)
    _dropout_key(key, p, t)
    if not t or p == 0:
        return x
    if p == 1:
        return jnp.zeros_like(x)
    return jnp.where(_keep(key, p, x.shape), x / (1.0 - p), 0)


def _dropout_fwd(x, key, rate, training):
    return dropout.call(x, key, rate, training), (key, Static(x.shape))


def _dropout_bwd(rate, training, res, g):
    key, shape = res
    p = float(rate)
    if not training or p == 0:
        x_bar = g
    elif p == 1:
        x_bar = jnp.zeros_like(g)
    else:
        x_bar = jnp.where(_keep(key, p, shape.value), g / (1.0 - p), 0)
    return (x_bar, None)


dropout.defvjp(_dropout_fwd, _dropout_bwd)


# --- embedding -------------------------------------------------------------------------------

def _embedding_setup(table: Array, ids: Any) -> None:
    if table.ndim == 0:
        raise ValueError("embedding: table must have shape (vocabulary, *features), got a scalar")
    if ids is None or not jnp.issubdtype(ids.dtype, jnp.integer):
        got = "None" if ids is None else f"dtype {ids.dtype}"
        raise TypeError(f"embedding: ids must have an integer dtype (row indices into table with shape "
                        f"{table.shape}), got {got}")
    if table.shape[0] == 0 and ids.size:
        raise ValueError(f"embedding: table with shape {table.shape} has no rows, but ids with shape {ids.shape} "
                         "index it")


@rule(floats=("table",))
def embedding(table: ArrayLike, ids: ArrayLike) -> Array:
    r"""Rows of ``table`` (shape (V, *features)) at integer ``ids`` of any shape: ``jnp.take(table, ids, axis=0)``.

    .. math:: y_{i} = T_{c_i},        \qquad \bar T_k = \textstyle\sum_{i : c_i = k} \bar y_i

    The result has shape ``ids.shape + table.shape[1:]``. T̄ is the scatter-add of ȳ onto the rows
    (repeated ids accumulate). ids in [−V, 0) count from the end; ids outside [−V, V) follow
    ``jnp.take``'s default: their rows are NaN (for a floating table) and they add nothing to T̄.
    Keeps the ids only; the ids get no cotangent (float0 under ``jax.grad(..., allow_int=True)``).
    """
    _embedding_setup(table, ids)
    return jnp.take(table, ids, axis=0)


def _embedding_fwd(table, ids):
    return embedding.call(table, ids), (ids, Static((table.shape, table.dtype)))


def _embedding_bwd(res, g):
    ids, meta = res
    shape, dtype = meta.value
    rows = jnp.where(ids < 0, ids + shape[0], ids)  # jnp.take's wrap of negative ids; the rest are dropped
    table_bar = jnp.zeros(shape, g.dtype).at[rows].add(g, mode="drop", wrap_negative_indices=False)
    return (table_bar.astype(dtype), None)


embedding.defvjp(_embedding_fwd, _embedding_bwd)


# --- rope ------------------------------------------------------------------------------------

def _rope_setup(x: Array, positions: Any, base: Any) -> float:
    if x.ndim < 3:
        raise ValueError(f"rope: x must have shape (..., T, heads, head_dim), got {x.shape}")
    if x.shape[-1] % 2:
        raise ValueError(f"rope: head_dim (the last axis of x) must be even, got x with shape {x.shape}")
    b = static_number("rope", "base", base, low=0.0, strict_low=True)
    if positions is None:
        return b
    if not jnp.issubdtype(positions.dtype, jnp.integer):
        raise TypeError(f"rope: positions must have an integer dtype, got {positions.dtype}")
    t, lead = x.shape[-3], x.shape[:-3]
    fits = positions.ndim >= 1 and positions.shape[-1] == t
    if fits:
        try:
            fits = tuple(jnp.broadcast_shapes(positions.shape[:-1], lead)) == lead
        except ValueError:
            fits = False
    if not fits:
        raise ValueError(f"rope: positions must have shape (T,) or (..., T) broadcasting to x's leading axes: "
                         f"x has shape {x.shape} (T = {t}), positions has shape {positions.shape}")
    return b


def _rotation(positions: Any, t: int, head_dim: int, base: float, dtype: Any) -> tuple[Array, Array]:
    """(cos, sin) of the angles positions·θᵢ, θᵢ = base^(−i/h), with shape (..., T, 1, h)."""
    h = head_dim // 2
    theta = base ** (-jnp.arange(h, dtype=dtype) / h)
    pos = jnp.arange(t, dtype=dtype) if positions is None else positions.astype(dtype)
    angle = pos[..., None, None] * theta
    return jnp.cos(angle), jnp.sin(angle)


def _rotate(x: Array, cos: Array, sin: Array) -> Array:
    """(x₁ cos − x₂ sin, x₂ cos + x₁ sin) on the two halves of the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


@rule(settings=("base",), floats=("x",))
def rope(x: ArrayLike, positions: ArrayLike | None = None, *, base: float = 10000.0) -> Array:
    r"""Rotary position embedding of x with shape (..., T, heads, head_dim) (``jax.nn.dot_product_attention``'s layout).

    Half-split convention: with h = head_dim/2, θᵢ = base^(−i/h), x₁ = x[..., :h], x₂ = x[..., h:] and
    the angle α = position·θᵢ,

    .. math:: y = (x_1 \cos α - x_2 \sin α,\ x_2 \cos α + x_1 \sin α),
              \qquad \bar x = (\bar y_1 \cos α + \bar y_2 \sin α,\ \bar y_2 \cos α - \bar y_1 \sin α)

    (the rotation by −α). ``positions``: integers of shape (T,) or (..., T) broadcasting to x's
    leading axes; default ``arange(T)``. The angles are computed in float32 (float64 for float64 x).
    Keeps the positions only (nothing when they are the default) and recomputes sin and cos.
    """
    b = _rope_setup(x, positions, base)
    cos, sin = _rotation(positions, x.shape[-3], x.shape[-1], b, _wide(x.dtype))
    return _rotate(x.astype(cos.dtype), cos, sin).astype(x.dtype)


def _rope_fwd(x, positions, base):
    return rope.call(x, positions, base), (positions, Static((x.shape, x.dtype)))


def _rope_bwd(base, res, g):
    positions, meta = res
    shape, dtype = meta.value
    cos, sin = _rotation(positions, shape[-3], shape[-1], float(base), _wide(dtype))
    return (_rotate(g.astype(cos.dtype), cos, -sin).astype(dtype), None)


rope.defvjp(_rope_fwd, _rope_bwd)


# --- swiglu / geglu --------------------------------------------------------------------------

def _gated_setup(rule_: str, a: Any, b: Any) -> tuple[Array, Array, Any]:
    a, b = floating(rule_, "a", a), floating(rule_, "b", b)
    broadcast_shapes(rule_, a=a.shape, b=b.shape)
    return a, b, jnp.result_type(a, b)


@rule(floats=("a", "b"))
def swiglu(a: ArrayLike, b: ArrayLike) -> Array:
    r"""SwiGLU's gate: silu(a)·b (a and b broadcast together), keeping a and b only.

    .. math:: y = \operatorname{silu}(a) ∘ b,        \qquad \bar a = \bar y ∘ b ∘ \operatorname{silu}'(a),\quad \bar b = \bar y ∘ \operatorname{silu}(a)

    silu and its slope are ``jr.silu``'s (silu′(a) = σ(a)(1 + a(1 − σ(a))), finite at ±inf).
    """
    a, b, out = _gated_setup("swiglu", a, b)
    dt = _wide(out)
    return (activations.silu.fun(a.astype(dt)) * b.astype(dt)).astype(out)


def _swiglu_fwd(a, b):
    return swiglu.call(a, b), (a, b)


def _swiglu_bwd(res, g):
    a, b = res
    dt = _wide(jnp.result_type(a, b))
    ac, bc, g = a.astype(dt), b.astype(dt), g.astype(dt)
    (a_bar,) = activations._silu_bwd(ac, g * bc)
    b_bar = g * activations.silu.fun(ac)
    return (unbroadcast(a_bar, a.shape).astype(a.dtype), unbroadcast(b_bar, b.shape).astype(b.dtype))


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


@rule(settings=("approximate",), floats=("a", "b"))
def geglu(a: ArrayLike, b: ArrayLike, approximate: bool = True) -> Array:
    r"""GeGLU's gate: gelu(a)·b (a and b broadcast together), keeping a and b only.

    .. math:: y = \operatorname{gelu}(a) ∘ b,        \qquad \bar a = \bar y ∘ b ∘ \operatorname{gelu}'(a),\quad \bar b = \bar y ∘ \operatorname{gelu}(a)

    Tanh form by default (``approximate``, as ``jax.nn.gelu``); both forms with ``jr.gelu``'s value and
    slope (the exact one from ½a·erfc(−a/√2), accurate in the far negative tail): one derivative.
    """
    static_bool("geglu", "approximate", approximate)
    a, b, out = _gated_setup("geglu", a, b)
    dt = _wide(out)
    return (activations.gelu.fun(a.astype(dt), approximate) * b.astype(dt)).astype(out)


def _geglu_fwd(a, b, approximate):
    return geglu.call(a, b, approximate), (a, b)


def _geglu_bwd(approximate, res, g):
    a, b = res
    dt = _wide(jnp.result_type(a, b))
    ac, bc, g = a.astype(dt), b.astype(dt), g.astype(dt)
    (a_bar,) = activations._gelu_bwd(approximate, ac, g * bc)
    b_bar = g * activations.gelu.fun(ac, approximate)
    return (unbroadcast(a_bar, a.shape).astype(a.dtype), unbroadcast(b_bar, b.shape).astype(b.dtype))


geglu.defvjp(_geglu_fwd, _geglu_bwd)
