"""Hypothesis strategies: for every rule name in the catalog, random shapes and settings.

Each strategy draws an :class:`Example`: the rule and its reference with the drawn settings bound,
and a sampler (a catalog sampler, so values keep away from kinks and ties) with the drawn case.
Shapes include size-0 and size-1 axes, broadcastable pairs and negative axes.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxrules as jr
from jaxrules import catalog


class Example(NamedTuple):
    fn: Callable[..., Any]
    reference: Callable[..., Any]
    sample: Callable[[int, Any, Any], tuple[Any, ...]]
    case: Any
    note: str


ROWS = {}
for _r in catalog.RULES:
    ROWS.setdefault(_r.name, []).append(_r)

SIDE = 4  # largest axis: keeps low-precision sums within their tolerance and compilation quick
shapes = partial(hnp.array_shapes, min_side=0, max_side=SIDE)


def _axis(ndim: int, draw) -> Any:
    """An int axis in [-ndim, ndim)."""
    return draw(st.integers(-ndim, ndim - 1))


def _axes(ndim: int, draw, allow_none: bool = True) -> Any:
    """None, an int, or a tuple of distinct axes (some negative)."""
    kind = draw(st.sampled_from(["int", "tuple"] + (["none"] if allow_none else [])))
    if kind == "none":
        return None
    if kind == "int":
        return _axis(ndim, draw)
    picked = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return tuple(a - ndim if draw(st.booleans()) else a for a in picked)


@st.composite
def elementwise(draw, name):
    row = draw(st.sampled_from(ROWS[name]))
    shape = draw(shapes(min_dims=0, max_dims=3))
    return Example(row.fn, row.reference, row.sample, shape, f"{row.id} on {shape}")


@st.composite
def broadcast_pair(draw, name):
    (row,) = ROWS[name]
    pair = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=0, max_side=SIDE))
    return Example(row.fn, row.reference, row.sample, pair.input_shapes, f"{name} on {pair.input_shapes}")


@st.composite
def matmul(draw):
    n, k, m = (draw(st.integers(0 if i != 1 else 1, SIDE)) for i in range(3))
    kind = draw(st.sampled_from(["mm", "vm", "mv", "vv", "batched"]))
    a, b = {"mm": ((n, k), (k, m)), "vm": ((k,), (k, m)), "mv": ((n, k), (k,)), "vv": ((k,), (k,)),
            "batched": None}[kind] or (None, None)
    if kind == "batched":
        batch = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=1, max_dims=2, min_side=1, max_side=3))
        a, b = batch.input_shapes[0] + (n, k), batch.input_shapes[1] + (k, m)
    return Example(jr.matmul, jnp.matmul, catalog._normal(), (a, b), f"matmul {a} @ {b}")


@st.composite
def dense(draw):
    lead = draw(shapes(min_dims=0, max_dims=2))
    d, v = draw(st.integers(1, SIDE)), draw(st.integers(0, SIDE))
    bias = draw(st.booleans())
    (row,) = ROWS["dense"]
    case = (lead + (d,), (d, v), (v,) if bias else None)
    return Example(row.fn, row.reference, row.sample, case, f"dense {case}")


def _window_setup(draw, n: int, dims: tuple[int, ...]):
    """strides, padding and dilation for n spatial dims of sizes dims; output size >= 1."""
    window = tuple(draw(st.integers(1, 3)) for _ in range(n))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    kind = draw(st.sampled_from(["VALID", "SAME", "pairs"]))
    padding = kind if kind != "pairs" else tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(n))
    # grow the input until every window fits once
    size = []
    for i in range(n):
        need = (window[i] - 1) * dilation[i] + 1 - (0 if kind != "pairs" else sum(padding[i]))
        size.append(max(dims[i], need, 1))
    return window, strides, dilation, padding, tuple(size)


@st.composite
def conv(draw):
    n = draw(st.integers(1, 2))
    window, strides, dilation, padding, size = _window_setup(draw, n, tuple(draw(st.integers(1, 5)) for _ in range(n)))
    cin, cout, batch = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    bias = draw(st.booleans())
    settings = dict(strides=strides, padding=padding, dilation=dilation)
    case = ((batch, *size, cin), (*window, cin, cout), (cout,) if bias else None)
    return Example(partial(jr.conv, **settings), catalog._conv_reference(**settings), catalog._normal(), case,
                   f"conv {case} {settings}")


@st.composite
def softmax_like(draw, name):
    shape = draw(shapes(min_dims=1, max_dims=3))
    ax = _axes(len(shape), draw, allow_none=False)
    masked = draw(st.booleans())
    ours, theirs = getattr(jr, name), getattr(jax.nn, name)
    if masked:
        return Example(lambda x, w: ours(x, ax, w), lambda x, w: theirs(x, ax, where=w), catalog._masked, shape,
                       f"{name}(axis={ax}, where=mask) on {shape}")
    return Example(partial(ours, axis=ax), partial(theirs, axis=ax), catalog._normal(), (shape,),
                   f"{name}(axis={ax}) on {shape}")


@st.composite
def logsumexp(draw):
    shape = draw(shapes(min_dims=1, max_dims=3))
    ax, keep = _axes(len(shape), draw), draw(st.booleans())
    kind = draw(st.sampled_from(["plain", "b", "where"]))
    note = f"logsumexp(axis={ax}, keepdims={keep}, {kind}) on {shape}"
    if kind == "b":
        bshape = draw(hnp.broadcastable_shapes(shape, min_dims=0, max_dims=len(shape), min_side=1, max_side=SIDE))
        return Example(lambda a, b: jr.logsumexp(a, ax, b, keep), lambda a, b: jax.nn.logsumexp(a, ax, b, keep),
                       catalog._logits_and_weights, (shape, bshape), note + f", b {bshape}")
    if kind == "where":
        return Example(lambda a, w: jr.logsumexp(a, ax, keepdims=keep, where=w),
                       lambda a, w: jax.nn.logsumexp(a, ax, keepdims=keep, where=w), catalog._masked, shape, note)
    return Example(partial(jr.logsumexp, axis=ax, keepdims=keep), partial(jax.nn.logsumexp, axis=ax, keepdims=keep),
                   catalog._normal(), (shape,), note)


@st.composite
def halves(draw, name):
    shape = list(draw(shapes(min_dims=1, max_dims=3)))
    ax = _axis(len(shape), draw)
    shape[ax] = 2 * draw(st.integers(0, 2))
    shape = tuple(shape)
    ref = (partial(jax.nn.glu, axis=ax) if name == "glu" else
           lambda x: jnp.moveaxis(jnp.moveaxis(x, ax, -1)[..., 0::2] * jnp.moveaxis(x, ax, -1)[..., 1::2], -1, ax))
    return Example(partial(getattr(jr, name), axis=ax), ref, catalog._normal(), (shape,), f"{name}(axis={ax}) on {shape}")


@st.composite
def maximum(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=SIDE))
    ax, keep = _axes(len(shape), draw), draw(st.booleans())
    return Example(partial(jr.max, axis=ax, keepdims=keep), partial(jnp.max, axis=ax, keepdims=keep),
                   catalog.distinct, shape, f"max(axis={ax}, keepdims={keep}) on {shape}")


@st.composite
def pool(draw, name):
    n = draw(st.integers(1, 2))
    window, strides, _, padding, size = _window_setup(draw, n, tuple(draw(st.integers(1, 5)) for _ in range(n)))
    lead = draw(hnp.array_shapes(min_dims=0, max_dims=1, min_side=1, max_side=2))
    shape = (*lead, *size, draw(st.integers(1, 2)))
    settings = dict(window_shape=window, strides=strides, padding=padding)
    if name == "avg_pool":
        settings["count_include_pad"] = draw(st.booleans())
    op = "max" if name == "max_pool" else "avg"
    ref = catalog._window_reference(op, **settings)
    sample = catalog.distinct if op == "max" else catalog._normal()
    return Example(partial(getattr(jr, name), **settings), ref, sample, shape if op == "max" else (shape,),
                   f"{name} on {shape} {settings}")


@st.composite
def regression(draw, name):
    shape = draw(shapes(min_dims=0, max_dims=3))
    case = (shape, shape if draw(st.booleans()) else None)
    return Example(getattr(jr, name), getattr(optax, name), catalog._normal(), case, f"{name} on {case}")


@st.composite
def classification(draw, name):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=SIDE).filter(lambda s: s[-1] >= 1))
    (row,) = [r for r in ROWS[name] if not r.settings]
    return Example(getattr(jr, name), getattr(optax, name), row.sample, shape, f"{name} on {shape}")


@st.composite
def binary(draw):
    shape = draw(shapes(min_dims=0, max_dims=3))
    row = draw(st.sampled_from(ROWS["sigmoid_binary_cross_entropy"]))
    return Example(row.fn, row.reference, row.sample, shape, f"{row.id} on {shape}")


@st.composite
def linear_xent(draw):
    n, d, v = draw(st.integers(0, 6)), draw(st.integers(1, SIDE)), draw(st.integers(1, 9))
    bias, masked = draw(st.booleans()), draw(st.booleans())
    options = dict(chunk_size=draw(st.one_of(st.none(), st.integers(1, 10))),
                   reduction=draw(st.sampled_from(["none", "mean", "sum"])),
                   label_smoothing=draw(st.sampled_from([0.0, 0.1, 1.0])), z_loss=draw(st.sampled_from([0.0, 1e-2])),
                   logit_softcap=draw(st.sampled_from([None, 2.0, 30.0])))
    if options["reduction"] == "mean" and (n == 0 or masked):
        masked = False  # a mean over no rows is NaN, and finite differences of NaN say nothing
        n = max(n, 1)

    def fn(x, W, c, b, w=None):
        return jr.linear_softmax_cross_entropy(x, W, c, b, where=w, **options)
    reference = catalog.linear_xent_reference(**{k: o for k, o in options.items() if k != "chunk_size"})
    return Example(fn, lambda x, W, c, b, w=None: reference(x, W, c, b, w), catalog._linear_xent_sample,
                   (n, d, v, bias, masked), f"linear_softmax_cross_entropy N={n} D={d} V={v} bias={bias} "
                   f"where={masked} {options}")


@st.composite
def attention(draw):
    b, t, s = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    kv, groups, h = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, SIDE))
    batched = draw(st.booleans())
    q_shape, kv_shape = (b, t, kv * groups, h), (b, s, kv, h)
    full = (b, kv * groups, t, s)
    if not batched:
        q_shape, kv_shape, full = q_shape[1:], kv_shape[1:], full[1:]
    fits = lambda sh: all(d in (1, f) for d, f in zip(sh[::-1], full[::-1]))  # noqa: E731
    bias = draw(st.one_of(st.none(), hnp.broadcastable_shapes(full, min_dims=2, max_dims=len(full)).filter(fits)))
    # masks keep key 0 of every row unless rows are drawn empty, so they span the keys
    mask = draw(st.one_of(st.none(), hnp.broadcastable_shapes(full, min_dims=2, max_dims=len(full))
                          .filter(lambda m: fits(m) and m[-1] == s)))
    extra = draw(st.sampled_from(["", "lengths"] + (["empty rows"] if mask is not None else [])))
    window = draw(st.one_of(st.none(), st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3))))
    block = draw(st.one_of(st.none(), st.integers(1, 6), st.tuples(st.integers(1, 6), st.integers(1, 6))))
    settings = dict(scale=draw(st.one_of(st.none(), st.floats(0.1, 2.0))), is_causal=draw(st.booleans()),
                    local_window_size=window, return_residual=draw(st.booleans()))
    case = (q_shape, kv_shape, bias, mask) + ((extra,) if extra else ())
    return Example(catalog._attention({**settings, "block_size": block}), catalog.attention_reference(**settings),
                   catalog._attention_sample, case, f"dot_product_attention q {q_shape} kv {kv_shape} bias {bias} "
                   f"mask {mask} {extra} {settings} block_size={block}")


# --- normalization and transformer blocks ------------------------------------------------------

def _to(shape):
    """Shapes that broadcast to ``shape`` (not merely with it)."""
    fits = lambda sh: all(d in (1, n) for d, n in zip(sh[::-1], shape[::-1]))  # noqa: E731
    return hnp.broadcastable_shapes(shape, min_dims=0, max_dims=len(shape), min_side=1, max_side=SIDE).filter(fits)


@st.composite
def norm(draw, name):
    """layer_norm / rms_norm over None, an int or a tuple of axes, scale (and bias) broadcasting to them."""
    shape = draw(shapes(min_dims=1, max_dims=3))
    ax = _axes(len(shape), draw)
    target = tuple(shape[a] for a in catalog._norm_axes(ax, len(shape)))
    param = st.one_of(st.none(), _to(target))
    eps = draw(st.sampled_from([1e-6, 1e-2]))
    case = (shape, draw(param)) + ((draw(param),) if name == "layer_norm" else ())
    ours = partial(getattr(jr, name), axis=ax, epsilon=eps)
    ref = partial(getattr(catalog, f"{name}_reference"), axis=ax, epsilon=eps)
    return Example(ours, ref, catalog._normal(), case, f"{name}(axis={ax}, epsilon={eps}) on {case}")


@st.composite
def standardize(draw):
    shape = draw(shapes(min_dims=1, max_dims=3))
    ax = _axes(len(shape), draw)
    # mean, variance and ε as arguments: not on empty arrays, where rows without entries make jax.nn's
    # cotangents of them NaN and ours 0 (the output does not depend on them; tests/test_normalization.py)
    kind = draw(st.sampled_from(["plain", "where"] + (["mean", "variance", "both"] if 0 not in shape else [])))
    algorithm = draw(st.sampled_from(["fast", "stable"]))
    note = f"standardize(axis={ax}, {kind}, algorithm={algorithm!r}) on {shape}"
    if kind == "where":
        return Example(lambda x, w: jr.standardize(x, ax, where=w, algorithm=algorithm),
                       lambda x, w: catalog.standardize_reference(x, ax, where=w, algorithm=algorithm),
                       catalog._standardize_where(ax), shape, note)
    stats = tuple(1 if i in catalog._norm_axes(ax, len(shape)) else n for i, n in enumerate(shape))
    given = draw(st.one_of(_to(stats), _to(shape)))  # per row, or varying along the axes too
    eps = draw(st.one_of(st.none(), st.just(()))) if 0 not in shape else None
    case = (shape, given if kind in ("mean", "both") else None, given if kind in ("variance", "both") else None, eps)
    return Example(lambda x, m, v, e=1e-5: jr.standardize(x, ax, m, v, e, algorithm=algorithm),
                   lambda x, m, v, e=1e-5: catalog.standardize_reference(x, ax, m, v, e, algorithm=algorithm),
                   lambda seed, case, dtype: catalog._standardize_given(seed, case, dtype)[: 3 if eps is None else 4],
                   case, note + f" given {case[1:]}")


@st.composite
def dropout(draw):
    shape = draw(shapes(min_dims=0, max_dims=3))
    rate, training = draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])), draw(st.booleans())
    return Example(lambda x, key: jr.dropout(x, key, rate, training=training),
                   catalog.dropout_reference(rate, training), catalog._dropout_sample, shape,
                   f"dropout(rate={rate}, training={training}) on {shape}")


@st.composite
def embedding(draw):
    table = (draw(st.integers(1, SIDE)),) + draw(shapes(min_dims=0, max_dims=2))
    ids = draw(shapes(min_dims=0, max_dims=3))
    return Example(jr.embedding, lambda t, i: jnp.take(t, i, axis=0), catalog._embedding_sample, (table, ids),
                   f"embedding table {table} ids {ids}")


@st.composite
def rope(draw):
    lead = draw(shapes(min_dims=0, max_dims=2))
    t, heads, half = draw(st.integers(0, SIDE)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
    x = lead + (t, heads, 2 * half)
    kind = draw(st.sampled_from(["default", "T", "lead", "broadcast"]))
    pos = {"default": None, "T": (t,), "lead": lead + (t,), "broadcast": (1,) * len(lead) + (t,)}[kind]
    base = draw(st.sampled_from([10000.0, 100.0]))
    return Example(partial(jr.rope, base=base), partial(catalog.rope_reference, base=base), catalog._rope_sample,
                   (x, pos), f"rope(base={base}) x {x} positions {pos}")


@st.composite
def gated(draw, name):
    pair = draw(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=0, max_side=SIDE))
    if name == "swiglu":
        return Example(jr.swiglu, lambda a, b: jax.nn.silu(a) * b, catalog._pair(), pair.input_shapes,
                       f"swiglu on {pair.input_shapes}")
    approximate = draw(st.booleans())
    return Example(partial(jr.geglu, approximate=approximate), lambda a, b: jax.nn.gelu(a, approximate) * b,
                   catalog._pair(), pair.input_shapes, f"geglu(approximate={approximate}) on {pair.input_shapes}")


def strategy(name: str):
    """The strategy of Examples for the rule jr.<name>."""
    rows = ROWS[name]
    if rows[0].elementwise:
        return elementwise(name)
    table = {
        "add": broadcast_pair, "subtract": broadcast_pair, "multiply": broadcast_pair, "divide": broadcast_pair,
        "matmul": lambda _: matmul(), "dense": lambda _: dense(), "conv": lambda _: conv(),
        "softmax": softmax_like, "log_softmax": softmax_like, "logsumexp": lambda _: logsumexp(),
        "glu": halves, "pair_product": halves, "max": lambda _: maximum(), "max_pool": pool, "avg_pool": pool,
        "squared_error": regression, "l2_loss": regression, "kl_divergence": classification,
        "softmax_cross_entropy": classification, "softmax_cross_entropy_with_integer_labels": classification,
        "sigmoid_binary_cross_entropy": lambda _: binary(),
        "linear_softmax_cross_entropy": lambda _: linear_xent(), "dot_product_attention": lambda _: attention(),
        "layer_norm": norm, "rms_norm": norm, "standardize": lambda _: standardize(), "dropout": lambda _: dropout(),
        "embedding": lambda _: embedding(), "rope": lambda _: rope(), "swiglu": gated, "geglu": gated,
    }
    return table[name](name)


NAMES = tuple(ROWS)
