r"""Memory-lean fused rules: where a hand-written pullback chooses what to keep.

``linear_softmax_cross_entropy`` never holds the N×V logits of an output layer: the forward streams
over vocabulary chunks with an online logsumexp and keeps x, W, b, the labels and one logsumexp per
row; the backward recomputes each chunk's logits to form x̄, W̄ and b̄ (Cut Cross-Entropy,
Liger-Kernel's fused linear cross-entropy).

``dot_product_attention`` never holds the T×S scores: blockwise over keys with an online softmax,
keeping the inputs, the output and one logsumexp per query row; the backward recomputes each block
(Rabe & Staats 2021; FlashAttention's backward).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxrules._checks import floating
from jaxrules._rule import rule

Array = jax.Array

__all__ = ["linear_softmax_cross_entropy", "dot_product_attention"]

_CHUNK_ELEMENTS = 1 << 22  # default chunk: about 4M logits (16 MB in float32) at a time


def _lsce_setup(x, W, labels, b, where, chunk_size):
    rule = "linear_softmax_cross_entropy"
    x, W = floating(rule, "x", x), floating(rule, "W", W)
    if x.ndim != 2 or W.ndim != 2 or x.shape[1] != W.shape[0]:
        raise ValueError(f"{rule}: x must have shape (N, D) and W shape (D, V) with the same D, "
                         f"got {x.shape} and {W.shape}")
    n, v = x.shape[0], W.shape[1]
    if isinstance(labels, (list, tuple)) or labels is None:
        raise TypeError(f"{rule}: labels must be an integer array, got {type(labels).__name__}")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{rule}: labels must have an integer dtype (class indices), got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{rule}: labels must have shape ({n},), one per row of x {x.shape}, got {labels.shape}")
    if b is not None:
        b = floating(rule, "b", b)
        if b.shape != (v,):
            raise ValueError(f"{rule}: b must have shape ({v},) to match W {W.shape}, got {b.shape}")
    if where is not None:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_ or where.shape != (n,):
            raise ValueError(f"{rule}: where must be a boolean mask of shape ({n},), got {where.dtype}{where.shape}")
    if chunk_size is None:
        chunk = max(128, min(v, _CHUNK_ELEMENTS // max(n, 1)))
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{rule}: chunk_size must be a positive int, got {chunk_size!r}")
    else:
        chunk = chunk_size
    return x, W, labels, b, where, min(chunk, max(v, 1))


def _varying(init: Any, *like: Any) -> Any:
    """A scan's initial carry, varying over every manual mesh axis its inputs vary over.

    Inside ``jax.shard_map`` a carry built with jnp.zeros is the same on every device, while the
    loop body's output (computed from the inputs) varies per device; lax.scan needs both alike.
    Outside shard_map this returns init unchanged.
    """
    names: set = set()
    for a in like:
        if a is not None:
            t = jax.typeof(a)  # jax 0.10: t.manual_axis_type.varying; earlier releases: t.vma
            names |= set(getattr(getattr(t, "manual_axis_type", None), "varying", None) or getattr(t, "vma", ()) or ())
    if not names:
        return init
    return jax.tree_util.tree_map(lambda t: lax.pcast(t, tuple(sorted(names)), to="varying"), init)


def _chunks(W: Array, b: Array | None, chunk: int):
    """W padded with zero columns to a multiple of chunk; the number of chunks."""
    v = W.shape[1]
    k = -(-v // chunk)
    pad = k * chunk - v
    if pad:
        W = jnp.pad(W, ((0, 0), (0, pad)))
        b = None if b is None else jnp.pad(b, (0, pad))
    return W, b, k


def _chunk_logits(x, Wp, bp, j, chunk, v):
    """Logits of vocabulary chunk j (N, chunk), −inf in the padding columns; and the column ids."""
    cols = j * chunk + jnp.arange(chunk)
    z = x @ lax.dynamic_slice_in_dim(Wp, j * chunk, chunk, axis=1)
    if bp is not None:
        z = z + lax.dynamic_slice_in_dim(bp, j * chunk, chunk)
    return jnp.where(cols < v, z, -jnp.inf), cols


def _lsce_forward(x, W, labels, b, where, chunk):
    """(per-row loss, per-row logsumexp), streaming over vocabulary chunks with an online logsumexp."""
    n, v = x.shape[0], W.shape[1]
    Wp, bp, k = _chunks(W, b, chunk)
    acc = jnp.promote_types(x.dtype, jnp.float32)

    def body(carry, j):
        m, s, picked = carry
        z, cols = _chunk_logits(x, Wp, bp, j, chunk, v)
        z = z.astype(acc)
        m_new = jnp.maximum(m, jnp.max(z, axis=1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[:, None]), axis=1)
        picked = picked + jnp.sum(jnp.where(cols[None, :] == labels[:, None], z, 0), axis=1)
        return (m_new, s, picked), None

    init = (jnp.full((n,), -jnp.inf, acc), jnp.zeros((n,), acc), jnp.zeros((n,), acc))
    (m, s, picked), _ = lax.scan(body, _varying(init, x, W, labels, b), jnp.arange(k))
    lse = m + jnp.log(s)
    loss = jnp.where((labels >= 0) & (labels < v), lse - picked, jnp.nan)
    if where is not None:
        loss = jnp.where(where, loss, 0)
    return loss.astype(x.dtype), lse


@rule(settings=("chunk",))
def _lsce(x, W, labels, b, where, chunk):
    return _lsce_forward(x, W, labels, b, where, chunk)[0]


def _lsce_fwd(x, W, labels, b, where, chunk):
    loss, lse = _lsce_forward(x, W, labels, b, where, chunk)
    return loss, (x, W, labels, b, where, lse)


def _lsce_bwd(chunk, res, g):
    x, W, labels, b, where, lse = res
    v = W.shape[1]
    Wp, bp, k = _chunks(W, b, chunk)
    g = g.astype(lse.dtype)
    if where is not None:
        g = jnp.where(where, g, 0)
    finite = jnp.isfinite(lse)
    lse0 = jnp.where(finite, lse, 0)

    def body(carry, j):
        x_bar, W_bar = carry
        z, cols = _chunk_logits(x, Wp, bp, j, chunk, v)
        p = jnp.where(finite[:, None], jnp.exp(z.astype(lse.dtype) - lse0[:, None]), 0)
        dz = (g[:, None] * (p - (cols[None, :] == labels[:, None]))).astype(x.dtype)  # (N, chunk)
        Wj = lax.dynamic_slice_in_dim(Wp, j * chunk, chunk, axis=1)
        x_bar = x_bar + dz @ Wj.T
        W_bar = lax.dynamic_update_slice_in_dim(W_bar, (x.T @ dz).astype(W.dtype), j * chunk, axis=1)
        return (x_bar, W_bar), jnp.sum(dz, axis=0)

    init = (jnp.zeros(x.shape, x.dtype), jnp.zeros(Wp.shape, W.dtype))
    (x_bar, W_bar), b_bars = lax.scan(body, _varying(init, x, W, labels, b, g, lse), jnp.arange(k))
    b_bar = None if b is None else b_bars.reshape(-1)[:v].astype(b.dtype)
    return x_bar, W_bar[:, :v], None, b_bar, None


_lsce.defvjp(_lsce_fwd, _lsce_bwd)


def linear_softmax_cross_entropy(x: ArrayLike, W: ArrayLike, labels: ArrayLike, b: ArrayLike | None = None, *,
                                 where: ArrayLike | None = None, chunk_size: int | None = None) -> Array:
    r"""Per-row softmax cross-entropy of the logits x W + b and integer labels, without the logits.

    Equal to ``softmax_cross_entropy_with_integer_labels(x @ W + b, labels)``, for x of shape (N, D),
    W (D, V), b (V,) or None, labels (N,) int. With z = xW + b and c the labels:

    .. math:: \ell = \log\textstyle\sum_v e^{z_v} - z_c,        \bar z = \bar\ell ∘ (\mathrm{softmax}(z) - \mathrm{onehot}(c)),
              \bar x = \bar z W^T,        \bar W = x^T \bar z,        \bar b = \textstyle\sum_n \bar z

    computed chunk by chunk over the vocabulary, so that at most N × chunk_size logits exist at a
    time (default: about 4M logits). Keeps x, W, b, the labels and one logsumexp per row.
    ``where`` (N,) masks rows out (padding tokens): their loss and gradients are zero. A label
    outside [0, V) gives a NaN loss. Any N and V (V need not be a multiple of the chunk).
    """
    x, W, labels, b, where, chunk = _lsce_setup(x, W, labels, b, where, chunk_size)
    return _lsce(x, W, labels, b, where, chunk)


# --- dot_product_attention -------------------------------------------------------------------

def _as4(rule: str, name: str, a: Any, full: tuple[int, int, int, int], boolean: bool):
    """bias or mask as a 4-d array broadcastable to (B, N, T, S), or None."""
    if a is None:
        return None
    a = jnp.asarray(a)
    if boolean and a.dtype != jnp.bool_:
        raise TypeError(f"{rule}: {name} must be a boolean array, got dtype {a.dtype}")
    if not boolean:
        a = floating(rule, name, a)
    if a.ndim > 4 or any(d not in (1, f) for d, f in zip(a.shape[::-1], full[::-1])):
        raise ValueError(f"{rule}: {name} with shape {a.shape} does not broadcast to (batch, heads, "
                         f"q_length, kv_length) = {full}")
    return a.reshape((1,) * (4 - a.ndim) + a.shape)


def _attention_setup(query, key, value, bias, mask, scale, is_causal):
    rule = "dot_product_attention"
    q, k, v = (floating(rule, n, a) for n, a in (("query", query), ("key", key), ("value", value)))
    if q.ndim not in (3, 4) or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"{rule}: query, key and value must all be (batch, length, heads, head_dim) or "
                         f"(length, heads, head_dim), got {q.shape}, {k.shape}, {v.shape}")
    if q.ndim == 3:
        q, k, v = q[None], k[None], v[None]
    B, T, N, H = q.shape
    _, S, K, _ = k.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != H or N % K:
        raise ValueError(f"{rule}: key and value must have shape (batch, kv_length, kv_heads, head_dim) with "
                         f"query's batch and head_dim and kv_heads dividing query's heads; got query {q.shape}, "
                         f"key {k.shape}, value {v.shape}")
    full = (B, N, T, S)
    b4 = _as4(rule, "bias", bias, full, False)
    m4 = _as4(rule, "mask", mask, full, True)
    if scale is None:
        scale = 1.0 / float(H) ** 0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{rule}: scale must be a Python number or None, got {type(scale).__name__}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"{rule}: is_causal must be a bool, got {type(is_causal).__name__}")
    return q, k, v, b4, m4, float(scale)


def _heads_first(q, k, v):
    """(B, N, T, H) query and (B, N, S, H) key/value, the kv heads repeated for grouped queries."""
    groups = q.shape[2] // k.shape[2]
    k, v = (jnp.repeat(a, groups, axis=2) if groups > 1 else a for a in (k, v))
    return tuple(jnp.swapaxes(a, 1, 2) for a in (q, k, v))


def _block(a4, j, blk, S):
    """Key block j of a 4-d bias or mask (its last axis is S or 1)."""
    if a4 is None or a4.shape[3] == 1:
        return a4
    return lax.dynamic_slice_in_dim(a4, j * blk, blk, axis=3)


def _pad_keys(a4, pad, value):
    if a4 is None or a4.shape[3] == 1 or not pad:
        return a4
    return jnp.pad(a4, ((0, 0),) * 3 + ((0, pad),), constant_values=value)


def _scores(qh, kj, b4j, m4j, j, blk, S, scale, is_causal, acc):
    """Scores of key block j, (B, N, T, blk), and which of them are live (not masked or padding)."""
    s = jnp.einsum("bnth,bnsh->bnts", qh, kj, preferred_element_type=acc) * scale
    if b4j is not None:
        s = s + b4j.astype(acc)
    cols = j * blk + jnp.arange(blk)
    live = cols < S
    if is_causal:
        live = live & (cols[None, :] <= jnp.arange(qh.shape[2])[:, None])
    if m4j is not None:
        live = live & m4j
    return jnp.where(live, s, -jnp.inf), live


def _attention_forward(q, k, v, b4, m4, scale, is_causal, block):
    qh, kh, vh = _heads_first(q, k, v)
    B, N, T, H = qh.shape
    S = kh.shape[2]
    blk = min(block, S)
    nb = -(-S // blk)
    pad = nb * blk - S
    kh, vh = (jnp.pad(a, ((0, 0), (0, 0), (0, pad), (0, 0))) if pad else a for a in (kh, vh))
    b4, m4 = _pad_keys(b4, pad, 0), _pad_keys(m4, pad, False)
    acc = jnp.promote_types(q.dtype, jnp.float32)

    def body(carry, j):
        m, l, o = carry
        kj, vj = (lax.dynamic_slice_in_dim(a, j * blk, blk, axis=2) for a in (kh, vh))
        s, _ = _scores(qh, kj, _block(b4, j, blk, S), _block(m4, j, blk, S), j, blk, S, scale, is_causal, acc)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0)
        p = jnp.exp(s - m_safe[..., None])
        corr = jnp.exp(m - m_safe)
        l = l * corr + jnp.sum(p, axis=-1)
        o = o * corr[..., None] + jnp.einsum("bnts,bnsh->bnth", p, vj.astype(acc))
        return (m_new, l, o), None

    init = (jnp.full((B, N, T), -jnp.inf, acc), jnp.zeros((B, N, T), acc), jnp.zeros((B, N, T, H), acc))
    (m, l, o), _ = lax.scan(body, _varying(init, q, k, v, b4, m4), jnp.arange(nb))
    live = l > 0
    o = jnp.where(live[..., None], o / jnp.where(live, l, 1)[..., None], 0)
    lse = jnp.where(live, jnp.where(jnp.isfinite(m), m, 0) + jnp.log(jnp.where(live, l, 1)), -jnp.inf)
    return jnp.swapaxes(o, 1, 2).astype(q.dtype), lse


@rule(settings=("scale", "is_causal", "block"))
def _attention(q, k, v, b4, m4, scale, is_causal, block):
    return _attention_forward(q, k, v, b4, m4, scale, is_causal, block)[0]


def _attention_fwd(q, k, v, b4, m4, scale, is_causal, block):
    out, lse = _attention_forward(q, k, v, b4, m4, scale, is_causal, block)
    return out, (q, k, v, b4, m4, out, lse)


def _attention_bwd(scale, is_causal, block, res, g):
    q, k, v, b4, m4, out, lse = res
    qh, kh, vh = _heads_first(q, k, v)
    B, N, T, H = qh.shape
    S, K = kh.shape[2], k.shape[2]
    blk = min(block, S)
    nb = -(-S // blk)
    pad = nb * blk - S
    kh, vh = (jnp.pad(a, ((0, 0), (0, 0), (0, pad), (0, 0))) if pad else a for a in (kh, vh))
    b4p, m4p = _pad_keys(b4, pad, 0), _pad_keys(m4, pad, False)
    acc = lse.dtype
    do = jnp.swapaxes(g, 1, 2).astype(acc)
    delta = jnp.sum(do * jnp.swapaxes(out, 1, 2).astype(acc), axis=-1)  # Σ_h dO·O per row
    lse0 = jnp.where(jnp.isfinite(lse), lse, 0)
    bias_full = b4 is not None and b4.shape[3] != 1

    def body(carry, j):
        dq, dk, dv, db = carry
        kj, vj = (lax.dynamic_slice_in_dim(a, j * blk, blk, axis=2) for a in (kh, vh))
        s, live = _scores(qh, kj, _block(b4p, j, blk, S), _block(m4p, j, blk, S), j, blk, S, scale, is_causal, acc)
        p = jnp.where(live & jnp.isfinite(lse)[..., None], jnp.exp(s - lse0[..., None]), 0)
        dv = lax.dynamic_update_slice_in_dim(dv, jnp.einsum("bnts,bnth->bnsh", p, do), j * blk, axis=2)
        ds = p * (jnp.einsum("bnth,bnsh->bnts", do, vj.astype(acc)) - delta[..., None])
        dq = dq + jnp.einsum("bnts,bnsh->bnth", ds, kj.astype(acc)) * scale
        dk = lax.dynamic_update_slice_in_dim(dk, jnp.einsum("bnts,bnth->bnsh", ds, qh.astype(acc)) * scale,
                                             j * blk, axis=2)
        if b4 is not None:
            dsb = jnp.sum(ds, axis=tuple(i for i in range(3) if b4.shape[i] == 1), keepdims=True)
            if bias_full:
                db = lax.dynamic_update_slice_in_dim(db, dsb, j * blk, axis=3)
            else:
                db = db + jnp.sum(dsb, axis=3, keepdims=True)
        return (dq, dk, dv, db), None

    db0 = None if b4 is None else jnp.zeros(b4.shape[:3] + ((nb * blk,) if bias_full else (1,)), acc)
    init = (jnp.zeros((B, N, T, H), acc), jnp.zeros((B, N, nb * blk, H), acc), jnp.zeros((B, N, nb * blk, H), acc), db0)
    (dq, dk, dv, db), _ = lax.scan(body, _varying(init, q, k, v, b4, m4, out, lse, g), jnp.arange(nb))
    dk, dv = dk[:, :, :S], dv[:, :, :S]
    if N != K:  # grouped queries: each kv head served N/K query heads
        dk, dv = (a.reshape(B, K, N // K, S, H).sum(axis=2) for a in (dk, dv))
    q_bar, k_bar, v_bar = (jnp.swapaxes(a, 1, 2).astype(ref.dtype) for a, ref in ((dq, q), (dk, k), (dv, v)))
    b_bar = None if b4 is None else db[..., :S].astype(b4.dtype) if bias_full else db.astype(b4.dtype)
    return q_bar, k_bar, v_bar, b_bar, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def dot_product_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike, bias: ArrayLike | None = None,
                          mask: ArrayLike | None = None, *, scale: float | None = None, is_causal: bool = False,
                          block_size: int = 256) -> Array:
    r"""Scaled dot-product attention with ``jax.nn.dot_product_attention``'s signature and layout.

    query (B, T, N, H), key and value (B, S, K, H) with K dividing N (grouped queries), or the same
    without the batch axis; bias broadcastable to (B, N, T, S); mask a boolean array broadcastable
    to (B, N, T, S) (True = attend); ``is_causal`` lets query i see keys j ≤ i. Per head:

    .. math:: P = \mathrm{softmax}(s QK^T + \mathrm{bias}),  O = PV;
              \bar V = P^T \bar O,  \bar P = \bar O V^T,  \bar S = P ∘ (\bar P - \mathrm{rowsum}(\bar O ∘ O)),
              \bar Q = s\,\bar S K,  \bar K = s\,\bar S^T Q,  \overline{\mathrm{bias}} = \bar S

    Blockwise over keys (``block_size`` at a time) with an online softmax: the forward keeps the
    inputs, the output and one logsumexp per query row, never the T × S scores; the backward
    recomputes each block. A fully masked query row gives output zeros and zero gradients, not NaN.
    Of ``jax.nn``'s further keywords, sequence lengths, local windows and ``implementation`` are not
    taken (express them with ``mask``); ``block_size`` is ours.
    """
    q, k, v, b4, m4, s = _attention_setup(query, key, value, bias, mask, scale, is_causal)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"dot_product_attention: block_size must be a positive int, got {block_size!r}")
    out = _attention(q, k, v, b4, m4, s, is_causal, block_size)
    return out[0] if jnp.ndim(query) == 3 else out

