r"""Attention, recognised in a traced program and replaced by ``jr.dot_product_attention``.

Two forms, measured on jax 0.10.2, flax 0.12.8 and equinox 0.13.8:

* ``jax.nn.dot_product_attention`` (``implementation="xla"``), which ``nnx.MultiHeadAttention``
  calls: plain operations with no name (the softmax is batched, with transposes around it). It is
  recognised by tracing jax.nn's own function on the candidate's shapes with each combination of
  bias, mask and ``is_causal``, and its scale (the default, or the literal it multiplies by).
* Scores, softmax, weighted sum, as flax linen's ``dot_product_attention``, NNX's
  ``dot_product_attention_weights`` path, ``eqx.nn.MultiheadAttention`` (per head, vmapped) and
  hand-written ``einsum``/``softmax``/``einsum`` attention compute it::

      s = dot_general(q, k)              one contracted axis (head_dim), batch axes (batch, heads)
      s = s * c  or  s / c               optional literal scales
      s = s + bias                       optional, any broadcast of a smaller bias
      s = where(mask, s, fill)           optional, fill = -inf or a number at the bottom of the dtype
      p = jax.nn.softmax(s, axis=keys)   exactly jax.nn's softmax (traced and compared)
      o = dot_general(p, v)              contracting the key axis

  Queries scaled before the product (linen, Equinox) stay outside: lean passes the scaled queries
  with scale 1. Anything else between these steps (dropout on the weights, a mask applied another
  way, an unknown fill value) leaves the attention, softmax included, exactly as it was.

Masks. jax.nn and the frameworks fill masked scores with a finite number, so a query row whose keys
are all masked gets the mean of the values, as ``jr.dot_product_attention`` gives it; with a
``-inf`` fill such a row is NaN, and its gradient NaN everywhere, which the rule does not reproduce:
there lean replaces only a mask it can read when tracing (a causal mask made from ``iota``, a
constant) and finds no empty row in. A mask known to be causal becomes ``is_causal=True``.

``jax.nn.dot_product_attention``'s ``query_seq_lengths`` and ``key_value_seq_lengths`` are passed
on; a ``local_window_size`` is not read (such an attention is left as it was).
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxrules as jr
from jaxrules.lean import _ir
from jaxrules.lean._ir import Node, Value
from jaxrules.lean._match import (TRANSPARENT, Match, aval_key, closed, exact, fold, known_scalar, only_use, peels,
                                  rank_key, skeleton, stand_in, struct, template)
from jaxrules.lean.rewrite import register


# --- masks known when tracing ------------------------------------------------------------------

def _causal(t: int, s: int) -> np.ndarray:
    return np.tril(np.ones((t, s), bool))


def _read_mask(m4: np.ndarray, causal: bool, t: int, s: int) -> tuple[str, bool]:
    """('causal' | 'mask', a query row may see no key) for a known 4-d mask (B|1, N|1, T, S)."""
    live = m4 & _causal(t, s) if causal else m4
    if np.array_equal(np.broadcast_to(m4, live.shape), np.broadcast_to(_causal(t, s), live.shape)):
        return "causal", False
    return "mask", bool(np.any(~np.any(live, axis=-1)))


# --- jax.nn.dot_product_attention ----------------------------------------------------------------

#: (bias, mask, is_causal, query_seq_lengths, key_value_seq_lengths) combinations tried
_VARIANTS = ([(b, m, c, False, False) for b, m, c in itertools.product((False, True), repeat=3)]
             + [(False, m, c, ql, kl) for m, c, ql, kl in itertools.product((False, True), repeat=4) if ql or kl])


def _dpa(scale: float | None, variant: tuple):
    has_bias, has_mask, causal, has_ql, has_kl = variant

    def f(q, k, v, *rest):
        it = iter(rest)
        bias = next(it) if has_bias else None
        mask = next(it) if has_mask else None
        ql = next(it) if has_ql else None
        kl = next(it) if has_kl else None
        return jax.nn.dot_product_attention(q, k, v, bias, mask, scale=scale, is_causal=causal, query_seq_lengths=ql,
                                            key_value_seq_lengths=kl, implementation="xla")
    return f


def _probe_avals(y: Any, variant: tuple) -> list:
    has_bias, has_mask, _, has_ql, has_kl = variant
    q = struct(y)
    if len(y.shape) == 4:
        full = (y.shape[0], y.shape[2], y.shape[1], y.shape[1])
    else:
        full = (y.shape[1], y.shape[0], y.shape[0])
    out = [q, q, q]
    if has_bias:
        out.append(jax.ShapeDtypeStruct(full, y.dtype))
    if has_mask:
        out.append(jax.ShapeDtypeStruct(full, jnp.bool_))
    out += [jax.ShapeDtypeStruct(y.shape[:1], jnp.int32)] * (int(has_ql) + int(has_kl))
    return out


def _dpa_anchor() -> set[str]:
    names = set()
    for nd in (3, 4):
        y = jax.ShapeDtypeStruct((2, 5, 3, 4)[4 - nd:], jnp.float32)
        for variant in _VARIANTS:
            try:
                prog = _ir.trace(_dpa(None, variant), *_probe_avals(y, variant))
                names.add(prog.outs[0].node.name)
            except Exception:  # noqa: BLE001 - jax.nn refuses sequence lengths without a batch axis
                pass
    return names or {"reshape"}


@register(*_dpa_anchor())
def find_jax_nn_attention(node: Node) -> Match | None:
    y = node.outs[0]
    if len(node.outs) != 1 or y.aval.ndim not in (3, 4) or not jnp.issubdtype(y.aval.dtype, jnp.floating):
        return None
    if not _weighted_sum_of_softmax(y):
        return None
    for variant in _VARIANTS:
        if y.aval.ndim == 3 and (variant[3] or variant[4]):
            continue
        probe = template(("dpa-probe", variant, rank_key(y)), _dpa(None, variant),
                         *_probe_avals(stand_in(y), variant))
        b = skeleton(probe, y)
        if b is None or any(v is None for v in b.inputs(probe)):
            continue
        scales = [None] + sorted({float(w.const) for n in b.nodes.values() if n.name == "mul"
                                  for w in n.ins if w.literal and np.ndim(w.const) == 0})
        for ins in peels(b.inputs(probe)):
            for scale in scales:
                key = ("dpa", variant, scale, tuple(aval_key(v) for v in ins))
                tmpl = template(key, _dpa(scale, variant), *[struct(v) for v in ins])
                bb = exact(tmpl, y)
                if bb is None or any(bb.values.get(t) is not g for t, g in zip(tmpl.ins, ins)):
                    continue
                nodes = closed(set(bb.nodes.values()), [y])
                if nodes is None:
                    return None
                return _nn_match(nodes, ins, y, scale, variant)
    return None


def _through_layout(v: Value) -> Value:
    while v.node is not None and v.node.name in TRANSPARENT:
        v = v.node.ins[0]
    return v


def _weighted_sum_of_softmax(y: Value) -> bool:
    """y is, up to layout and products (jax.nn masks rows past the query lengths by one), a product of
    which one factor is, up to layout, a quotient (a softmax): a cheap test before tracing jax.nn's
    attention for a candidate."""
    todo = [y]
    for _ in range(6):
        nxt = []
        for v in todo:
            n = _through_layout(v).node
            if n is None:
                continue
            if n.name == "dot_general":
                if any((w := _through_layout(i)).node is not None and w.node.name == "div" for i in n.ins):
                    return True
            elif n.name == "mul":
                nxt.extend(n.ins)
        todo = nxt
    return False


def _nn_match(nodes, ins, y, scale, variant) -> Match:
    has_bias, has_mask, causal, has_ql, has_kl = variant
    q, k = ins[0].aval, ins[1].aval
    drop_mask = False
    if has_mask:  # a causal mask known when tracing: is_causal, and no mask to keep
        m = fold(ins[4 if has_bias else 3])
        if m is not None:
            drop_mask = _read_mask(m.reshape((1,) * (4 - m.ndim) + m.shape), causal, q.shape[-3], k.shape[-3])[0] \
                == "causal"

    def emit(qv, kv, vv, *rest):
        it = iter(rest)
        bias = next(it) if has_bias else None
        mask = next(it) if has_mask else None
        ql = next(it) if has_ql else None
        kl = next(it) if has_kl else None
        return [jr.dot_product_attention(qv, kv, vv, bias, None if drop_mask else mask, scale=scale,
                                         is_causal=causal or drop_mask, query_seq_lengths=ql, key_value_seq_lengths=kl)]
    return Match("dot_product_attention", nodes, list(ins), [y], emit, key=("jax.nn", scale, variant, drop_mask))


# --- scores, softmax, weighted sum -------------------------------------------------------------

def _softmax_input(p: Value) -> tuple[Value, set, int] | None:
    """(input, nodes, axis) if p is jax.nn.softmax of one axis, compared equation for equation."""
    n = p.node
    if n is None or n.name != "div":
        return None
    red = _through_layout(n.ins[1]).node
    if red is None or red.name != "reduce_sum" or len(red.params["axes"]) != 1:
        return None
    axis = int(red.params["axes"][0])
    probe = template(("softmax-probe", axis, rank_key(p)), lambda x: jax.nn.softmax(x, axis=axis), stand_in(p))
    if skeleton(probe, p) is None:
        return None
    tmpl = template(("softmax", axis, aval_key(p)), lambda x: jax.nn.softmax(x, axis=axis), struct(p))
    b = exact(tmpl, p)
    if b is None:
        return None
    return b.values[tmpl.ins[0]], set(b.nodes.values()), axis


def _skip_converts(v: Value, nodes: set) -> Value:
    while v.node is not None and v.node.name == "convert_element_type" and len(v.uses) == 1 and not v.is_out:
        nodes.add(v.node)
        v = v.node.ins[0]
    return v


def _fill(v: Value, dtype: Any) -> str | None:
    """'nan' for a -inf fill, 'mean' for a finite one at the bottom of the dtype, None otherwise."""
    c = known_scalar(v)
    if c is None:
        return None
    if c == -np.inf:
        return "nan"
    if np.isfinite(c) and c <= 0.5 * float(jnp.finfo(dtype).min):
        return "mean"
    return None


def _source(v: Value, rank: int, nodes: set) -> tuple[Value, list[int]] | None:
    """(src, axes): v is src broadcast into a rank-``rank`` array, src axis i landing on axes[i]
    (in increasing order). Broadcasts used only on the way are added to nodes."""
    axes = list(range(rank))
    while v.node is not None and v.node.name == "broadcast_in_dim" and only_use(v, nodes):
        dims = [int(d) for d in v.node.params["broadcast_dimensions"]]
        if any(a >= b for a, b in zip(dims, dims[1:])):
            return None
        nodes.add(v.node)
        axes = [axes[d] for d in dims]
        v = v.node.ins[0]
    if len(axes) != v.aval.ndim:
        return None
    return v, axes


def _expand(src: Any, axes: list[int], full: tuple[int, ...]) -> Any:
    """src reshaped to rank len(full): its axes at ``axes``, size 1 elsewhere (no copy)."""
    shape = [1] * len(full)
    for i, a in enumerate(axes):
        shape[a] = src.shape[i]
    return jnp.reshape(src, shape)


def _dims(dn: Any) -> tuple:
    (lc, rc), (lb, rb) = dn
    return tuple(map(int, lc)), tuple(map(int, rc)), tuple(map(int, lb)), tuple(map(int, rb))


def _free(rank: int, *used: tuple) -> list[int]:
    taken = set(itertools.chain(*used))
    return [d for d in range(rank) if d not in taken]


@register("dot_general")
def find_attention(node: Node) -> Match | None:
    y = node.outs[0]
    lc, rc, lb, rb = _dims(node.params["dimension_numbers"])
    for p_side in (0, 1):
        m = _attention(node, y, p_side, (lc, rc, lb, rb))
        if m is not None:
            return m
    return None


def _attention(node: Node, y: Value, p_side: int, dn: tuple) -> Match | None:
    nodes: set = {node}
    pc, vc = (dn[0], dn[1]) if p_side == 0 else (dn[1], dn[0])
    pb, vb = (dn[2], dn[3]) if p_side == 0 else (dn[3], dn[2])
    p = node.ins[p_side]
    if not only_use(p, nodes):
        return None
    p = _skip_converts(p, nodes)
    sm = _softmax_input(p)
    if sm is None or not only_use(p, nodes):
        return None
    s, sm_nodes, s_axis = sm
    nodes |= sm_nodes
    score_rank = p.aval.ndim
    # the chain from the scores product to the softmax
    s = _skip_converts(s, nodes) if only_use(s, nodes) else None
    if s is None or not only_use(s, nodes):
        return None
    mask = fill = bias = None
    negate = False
    n = s.node
    if n is not None and n.name == "select_n" and len(n.ins) == 3:
        pred, a, c = n.ins
        if pred.aval.dtype != jnp.bool_:
            return None
        dtype = s.aval.dtype
        if _fill(a, dtype) is not None:
            fill, mask, s = _fill(a, dtype), pred, c
        elif _fill(c, dtype) is not None:
            fill, mask, s, negate = _fill(c, dtype), pred, a, True
        else:
            return None  # a mask lean does not know: the attention stays as it was
        nodes.add(n)
        fv = n.ins[1] if not negate else n.ins[2]
        _source(fv, fv.aval.ndim, nodes)  # drop the broadcast fill with the select
        if not only_use(s, nodes):
            return None
        s = _skip_converts(s, nodes)
    n = s.node
    if n is not None and n.name == "add":
        chain = [i for i in (0, 1) if n.ins[i].node is not None
                 and n.ins[i].node.name in ("dot_general", "mul", "div", "convert_element_type")]
        if not chain:
            return None
        s, bias = n.ins[chain[0]], n.ins[1 - chain[0]]
        nodes.add(n)
        if not only_use(s, nodes):
            return None
        s = _skip_converts(s, nodes)
    scale = 1.0
    while s.node is not None and s.node.name in ("mul", "div"):
        n = s.node
        k = [known_scalar(w) if w.aval.ndim == 0 else None for w in n.ins]
        if n.name == "mul" and k[0] is not None:
            scale *= k[0]
            s = n.ins[1]
        elif k[1] is not None:
            scale = scale * k[1] if n.name == "mul" else scale / k[1]
            s = n.ins[0]
        else:
            return None
        nodes.add(n)
        if not only_use(s, nodes):
            return None
        s = _skip_converts(s, nodes)
    qk = s.node
    if qk is None or qk.name != "dot_general" or qk.params.get("precision") not in (None,):
        return None
    nodes.add(qk)
    return _layout(node, y, qk, nodes, p_side, pc, vc, pb, vb, s_axis, score_rank, mask, negate, fill, bias, scale)


def _layout(node, y, qk, nodes, p_side, pc, vc, pb, vb, s_axis, score_rank, mask, negate, fill, bias, scale):
    lc, rc, lb, rb = _dims(qk.params["dimension_numbers"])
    left, right = qk.ins
    nb = len(lb)
    if len(lc) != 1 or nb > 2 or score_rank != nb + 2:
        return None
    lfree, rfree = _free(left.aval.ndim, lc, lb), _free(right.aval.ndim, rc, rb)
    if len(lfree) != 1 or len(rfree) != 1:
        return None
    if s_axis == nb + 1:       # q on the left: scores (batch..., T, S)
        q, k, qc, kc, qb, kb, qf, kf, t_axis = left, right, lc[0], rc[0], lb, rb, lfree[0], rfree[0], nb
    elif s_axis == nb:         # k on the left: scores (batch..., S, T)
        q, k, qc, kc, qb, kb, qf, kf, t_axis = right, left, rc[0], lc[0], rb, lb, rfree[0], lfree[0], nb + 1
    else:
        return None
    # the weighted sum: contract the key axis, batch over the score batch axes, keep T and head_dim
    if pc != (s_axis,) or sorted(pb) != list(range(nb)) or len(vc) != 1:
        return None
    pfree = _free(score_rank, pc, pb)
    vfree = _free(v_rank := node.ins[1 - p_side].aval.ndim, vc, vb)
    if pfree != [t_axis] or len(vfree) != 1 or v_rank != nb + 2:
        return None
    v = node.ins[1 - p_side]
    vb_of = {pb[j]: vb[j] for j in range(nb)}  # score batch axis -> v axis
    dtype = q.aval.dtype
    if k.aval.dtype != dtype or v.aval.dtype != dtype or not jnp.issubdtype(dtype, jnp.floating):
        return None
    # each of q, k, v as (batch..., length, head_dim); the batch axes become (B, N) of the rule
    q_perm = [qb[i] for i in range(nb)] + [qf, qc]
    k_perm = [kb[i] for i in range(nb)] + [kf, kc]
    v_perm = [vb_of[i] for i in range(nb)] + [vc[0], vfree[0]]
    T, S = q.aval.shape[qf], k.aval.shape[kf]
    H, Hv = q.aval.shape[qc], v.aval.shape[vfree[0]]
    if H != Hv or v.aval.shape[vc[0]] != S:
        return None
    if any(q.aval.shape[qb[i]] != k.aval.shape[kb[i]] for i in range(nb)):
        return None
    score_shape = [0] * score_rank
    for i in range(nb):
        score_shape[i] = q.aval.shape[qb[i]]
    score_shape[t_axis] = T
    score_shape[s_axis] = S
    inputs = [q, k, v]
    msrc = bsrc = None
    if mask is not None:
        msrc = _source(mask, score_rank, nodes)
        if msrc is None:
            return None
        inputs.append(msrc[0])
    if bias is not None:
        if not jnp.issubdtype(bias.aval.dtype, jnp.floating):
            return None
        bsrc = _source(bias, score_rank, nodes)
        if bsrc is None:
            return None
        inputs.append(bsrc[0])
    group = closed(nodes, [y])
    if group is None:
        return None
    # the weighted sum's axes: the score batch axes in pb order, then its left operand's free axis, the right's
    out_axes = list(pb) + ([nb, nb + 1] if p_side == 0 else [nb + 1, nb])
    to4 = _to4(nb, t_axis, s_axis)
    mode = "none"
    if mask is not None:
        mode, empty = "mask", True
        mval = fold(msrc[0])
        if mval is not None:
            m4 = to4(_expand_np(mval, msrc[1], score_rank))
            mode, empty = _read_mask(~m4 if negate else m4, False, T, S)
        if empty and fill == "nan":
            # a -inf fill on rows that may see no key: the original's output is NaN there and its
            # gradient NaN everywhere; lean does not reproduce that, it leaves the attention alone
            return None

    def canon(a, perm):  # (batch..., L, H) -> (B, L, N, H)
        a = jnp.transpose(a, perm)
        return jnp.swapaxes(a.reshape((1,) * (2 - nb) + a.shape), 1, 2)

    def emit(qv, kv, vv, *rest):
        it = iter(rest)
        m4 = b4 = None
        if mask is not None:
            m4 = to4(_expand(next(it), msrc[1], score_shape))
            m4 = ~m4 if negate else m4
        if bias is not None:
            b4 = to4(_expand(next(it), bsrc[1], score_shape))
        causal = mode == "causal"
        vc4 = canon(vv, v_perm)
        out = jr.dot_product_attention(canon(qv, q_perm), canon(kv, k_perm), vc4, b4, None if causal else m4,
                                       scale=float(scale), is_causal=causal)
        out = jnp.swapaxes(out, 1, 2)                      # (B, N, T, H)
        out = out.reshape(out.shape[2 - nb:])              # (batch..., T, H)
        return [jnp.transpose(out, out_axes).astype(y.aval.dtype)]
    return Match("dot_product_attention", group, inputs, [y], emit,
                 key=("generic", p_side, tuple(q_perm), tuple(k_perm), tuple(v_perm), tuple(out_axes), mode,
                      negate, fill, float(scale), nb, t_axis, s_axis,
                      None if msrc is None else tuple(msrc[1]), None if bsrc is None else tuple(bsrc[1])))


def _expand_np(src: np.ndarray, axes: list[int], rank: int) -> np.ndarray:
    shape = [1] * rank
    for i, a in enumerate(axes):
        shape[a] = src.shape[i]
    return src.reshape(shape)


def _to4(nb: int, t_axis: int, s_axis: int):
    """A score-layout array (batch..., T|S, S|T) -> (B|1, N|1, T, S)."""
    def f(a):
        if s_axis < t_axis:
            a = jnp.swapaxes(a, -1, -2) if not isinstance(a, np.ndarray) else np.swapaxes(a, -1, -2)
        return a.reshape((1,) * (2 - nb) + a.shape)
    return f
