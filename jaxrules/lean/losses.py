"""optax's softmax cross-entropies, and the output layer fused with the integer-label one.

``optax.softmax_cross_entropy_with_integer_labels`` is plain operations in a jaxpr (a
``take_along_axis`` and jax.nn's ``logsumexp``); ``optax.softmax_cross_entropy`` is jax.nn's
``log_softmax`` (a named jit), a product and a sum. Both are recognised by tracing optax's own
function on the candidate's shapes (see _match).

Where the logits of the integer-label cross-entropy are a matrix product, plus a bias, used by
nothing else, the three become one ``jr.linear_softmax_cross_entropy``, which never holds the
logits: the product of activations (…, D) with a weight (D, V) or (V, D) (a tied embedding, or
Equinox's ``Linear`` under ``vmap``, whose product comes out transposed), the bias any broadcast of
a (V,) vector along the last axis.

optax reads a negative label as counting from the end (``take_along_axis``); the jaxrules rules
give NaN for labels outside [0, V), so lean adds V to negative labels first, as optax does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

import jaxrules as jr
from jaxrules.lean import _ir
from jaxrules.lean._ir import Node, Value
from jaxrules.lean._match import (Match, aval_key, closed, exact, group, last_axis_vector, only_use, peels,
                                  rank_key, skeleton, stand_in, struct, template)
from jaxrules.lean.rewrite import register

_V = 7  # stand-in number of classes for the skeleton


def _int_ce(logits, labels, where=None):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels, where=where)


def _anchor(f, *avals) -> set[str]:
    try:
        return {_ir.trace(f, *avals).outs[0].node.name}
    except Exception:  # noqa: BLE001
        return set()


def _wrap(labels: jax.Array, v: int) -> jax.Array:
    return jnp.where(labels < 0, labels + v, labels)


_PROBE = (jax.ShapeDtypeStruct((3, _V), jnp.float32), jax.ShapeDtypeStruct((3,), jnp.int32),
          jax.ShapeDtypeStruct((3,), jnp.bool_))


@register(*_anchor(_int_ce, *_PROBE[:2]), *_anchor(_int_ce, *_PROBE))
def find_integer_cross_entropy(node: Node) -> Match | None:
    """optax's integer-label cross-entropy (optionally with a per-example ``where``)."""
    found = _integer_cross_entropy(node)
    if found is None:
        return None
    y, nodes, ins = found
    logits, labels = ins[:2]
    where = ins[2] if len(ins) > 2 else None
    v = logits.aval.shape[-1]
    fused = _linear(logits, nodes)
    if fused is not None:
        return _fused_match(y, y, nodes | fused[0], labels, where, v, *fused[1:])

    def emit(z, c, w=None):
        return [jr.softmax_cross_entropy_with_integer_labels(z, _wrap(c, v), where=w)]
    return Match("softmax_cross_entropy_with_integer_labels", nodes, ins, [y], emit, key=("ice", where is not None))


def _integer_cross_entropy(node: Node) -> tuple[Value, set, list] | None:
    """(output, nodes, [logits, labels(, where)]) if node ends optax's integer-label cross-entropy."""
    y = node.outs[0]
    if len(node.outs) != 1 or not jnp.issubdtype(y.aval.dtype, jnp.floating):
        return None
    sy = stand_in(y)
    probe_avals = [jax.ShapeDtypeStruct(sy.shape + (_V,), sy.dtype), jax.ShapeDtypeStruct(sy.shape, jnp.int32),
                   jax.ShapeDtypeStruct(sy.shape, jnp.bool_)]
    for has_where in (False, True):
        n_in = 3 if has_where else 2
        probe = template(("ice-probe", has_where, rank_key(y)), _int_ce, *probe_avals[:n_in])
        b = skeleton(probe, y)
        if b is None or None in b.inputs(probe):
            continue
        for ins in peels(b.inputs(probe)):
            logits, labels = ins[:2]
            if not jnp.issubdtype(labels.aval.dtype, jnp.integer) or logits.aval.shape[:-1] != y.aval.shape \
                    or labels.aval.shape != y.aval.shape \
                    or (has_where and (ins[2].aval.dtype != jnp.bool_ or ins[2].aval.shape != y.aval.shape)):
                continue
            tmpl = template(("ice", tuple(aval_key(v) for v in ins)), _int_ce, *[struct(v) for v in ins])
            bb = exact(tmpl, y)
            if bb is not None and all(bb.values.get(t) is g for t, g in zip(tmpl.ins, ins)):
                nodes = group(bb, [y])
                return None if nodes is None else (y, nodes, list(ins))
    return None


def _fused_match(y, out, nodes, labels, where, v, a, w, w_axis, bias, reduction="none") -> Match:
    """The fused rule for the cross-entropy y (per example) whose value ``out`` (y itself, or its mean or
    sum) the group computes."""
    d = a.aval.shape[-1]
    inputs = [a, w, labels] + ([where] if where is not None else []) + ([bias] if bias is not None else [])

    def emit(x, W, c, *rest):
        it = iter(rest)
        m = next(it) if where is not None else None
        b = next(it) if bias is not None else None
        x2 = x.reshape(-1, d)
        W2 = W if w_axis == 0 else W.T
        loss = jr.linear_softmax_cross_entropy(x2, W2, _wrap(c.reshape(-1), v), None if b is None else b.reshape(v),
                                               where=None if m is None else m.reshape(-1), reduction=reduction,
                                               chunk_size=chunk_rows(x2.shape[0], v))
        return [loss.reshape(out.aval.shape).astype(out.aval.dtype)]
    return Match("linear_softmax_cross_entropy", nodes, inputs, [out], emit,
                 key=("lsce", w_axis, bias is not None, where is not None, reduction))


#: logits per chunk lean asks the fused rule for: 4M (16 MB in float32). The rule's default (16M, at
#: least 128 and at most 2048 rows) holds every row of a 2048 × 8192 head at once, which saves nothing
#: in a model's step (0.71x of stock memory where 512-row chunks give 0.44x); 512 rows is also where
#: the chunk's products reach full speed (FINDINGS.md).
CHUNK_LOGITS = 1 << 22


def chunk_rows(n: int, v: int) -> int:
    """Rows per chunk of the fused cross-entropy: about CHUNK_LOGITS logits, 128 to 2048 rows."""
    return max(128, min(2048, CHUNK_LOGITS // max(v, 1)))


# --- the loss's mean or sum: the fused rule's reduction ------------------------------------------

def _reductions() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, f in (("mean", jnp.mean), ("sum", jnp.sum)):
        for dtype in (jnp.float32, jnp.bfloat16):
            out.setdefault(name, set()).update(_anchor(f, jax.ShapeDtypeStruct((2, 3), dtype)))
    return out


_REDUCE = {"mean": jnp.mean, "sum": jnp.sum}


@register(*set().union(*_reductions().values()))
def find_reduced_cross_entropy(node: Node) -> Match | None:
    """jnp.mean or jnp.sum (over every axis) of the fused cross-entropy → its ``reduction``. A mean of
    losses masked by ``where`` divides by every example, the rule's by the kept ones: left per example."""
    out = node.outs[0]
    if len(node.outs) != 1 or out.aval.ndim != 0 or not jnp.issubdtype(out.aval.dtype, jnp.floating):
        return None
    n = node
    for _ in range(3):  # the reduce_sum is the anchor, or a cast or division away from it
        if n.name == "reduce_sum":
            break
        n = next((i.node for i in n.ins if i.node is not None and not i.known), None)
        if n is None:
            return None
    else:
        return None
    y = n.ins[0]
    if y.node is None:
        return None
    for reduction, f in _REDUCE.items():
        tmpl = template(("reduce", reduction, aval_key(y)), f, struct(y))
        bb = exact(tmpl, out)
        if bb is None or bb.values.get(tmpl.ins[0]) is not y:
            continue
        red = set(bb.nodes.values())
        if not only_use(y, red):
            return None
        found = _integer_cross_entropy(y.node)
        if found is None or found[0] is not y:
            return None
        _, nodes, ins = found
        logits, labels = ins[:2]
        where = ins[2] if len(ins) > 2 else None
        if where is not None and reduction == "mean":
            return None
        fused = _linear(logits, nodes)
        if fused is None:
            return None
        group_ = closed(nodes | fused[0] | red, [out])
        if group_ is None:
            return None
        return _fused_match(y, out, group_, labels, where, logits.aval.shape[-1], *fused[1:], reduction=reduction)
    return None


def _linear(logits: Value, ce: set) -> tuple | None:
    """(nodes, activations, weight, its contracted axis, bias or None) if logits = a @ W (+ b), used only
    by the cross-entropy ``ce``."""
    nodes: set = set()
    inside = ce
    if not only_use(logits, inside):
        return None
    v = logits.aval.shape[-1]
    bias = None
    z = logits
    n = z.node
    if n is not None and n.name == "add":
        for i in (0, 1):
            src = last_axis_vector(n.ins[1 - i], v, logits.aval.ndim, nodes | {n})
            if src is not None and n.ins[i].node is not None and n.ins[i].node.name in ("dot_general", "transpose"):
                bias, z = src, n.ins[i]
                nodes.add(n)
                break
        else:
            return None
        if not only_use(z, inside | nodes):
            return None
    perm = None
    n = z.node
    if n is not None and n.name == "transpose":
        perm = [int(p) for p in n.params["permutation"]]
        nodes.add(n)
        z = n.ins[0]
        if not only_use(z, inside | nodes):
            return None
    n = z.node
    if n is None or n.name != "dot_general" or n.params.get("precision") is not None:
        return None
    (lc, rc), (lb, rb) = n.params["dimension_numbers"]
    if lb or rb or len(lc) != 1:
        return None
    pet = n.params.get("preferred_element_type")
    dtype = logits.aval.dtype
    if pet is not None and pet != dtype:
        return None
    for w_side in (1, 0):
        W, A = n.ins[w_side], n.ins[1 - w_side]
        wc, ac = (int(rc[0]), int(lc[0])) if w_side == 1 else (int(lc[0]), int(rc[0]))
        if W.aval.ndim != 2 or ac != A.aval.ndim - 1 or A.aval.ndim < 1 or W.aval.shape[1 - wc] != v:
            continue
        if A.aval.dtype != dtype or W.aval.dtype != dtype:
            continue
        r = A.aval.ndim - 1  # free axes of A, then V (W on the right) or V, then A's (W on the left)
        layout = list(range(r)) + [r] if w_side == 1 else [r] + list(range(r))
        if perm is not None:
            layout = [layout[p] for p in perm]
        if layout != list(range(r + 1)):
            continue
        nodes.add(n)
        if bias is not None and bias.aval.dtype != dtype:
            return None
        return nodes, A, W, wc, bias
    return None


# --- optax.softmax_cross_entropy (distributions as labels) --------------------------------------

def _ce(logits, labels):
    return optax.softmax_cross_entropy(logits, labels)


@register(*_anchor(_ce, _PROBE[0], _PROBE[0]))
def find_cross_entropy(node: Node) -> Match | None:
    y = node.outs[0]
    if len(node.outs) != 1 or not jnp.issubdtype(y.aval.dtype, jnp.floating):
        return None
    sy = stand_in(y)
    pa = jax.ShapeDtypeStruct(sy.shape + (_V,), sy.dtype)
    probe = template(("ce-probe", rank_key(y)), _ce, pa, pa)
    b = skeleton(probe, y)
    if b is None or None in b.inputs(probe):
        return None
    for logits, labels in peels(b.inputs(probe)):
        if logits.aval.shape != labels.aval.shape:
            continue
        tmpl = template(("ce", aval_key(logits), aval_key(labels)), _ce, struct(logits), struct(labels))
        bb = exact(tmpl, y)
        if bb is not None and bb.values.get(tmpl.ins[0]) is logits and bb.values.get(tmpl.ins[1]) is labels:
            break
    else:
        return None
    nodes = group(bb, [y])
    if nodes is None:
        return None
    return Match("softmax_cross_entropy", nodes, [logits, labels], [y],
                 lambda z, d: [jr.softmax_cross_entropy(z, d)], key=("ce",))
