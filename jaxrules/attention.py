r"""Scaled dot-product attention over 2-D tiles (FlashAttention's algorithm, in XLA loops).

``dot_product_attention`` takes every argument of ``jax.nn.dot_product_attention`` with the same
meaning, and never holds the T×S scores. The forward walks over tiles of queries × keys with an
online softmax and keeps only the output and one logsumexp per query row; the backward walks over
the same tiles again (key tiles outside, query tiles inside, as FlashAttention-2), recomputes each
tile's probabilities from the logsumexp and accumulates dq per query tile and dk, dv per key tile.

What the tiles buy besides memory:

* a tile that causality, the local window, the sequence lengths or the mask leave wholly masked
  is skipped (a ``lax.switch`` around the tile's work), in the forward and in the backward, and a
  tile that nothing masks is computed without a mask;
* grouped kv heads (K kv heads for N = K·G query heads) are read once per group and never
  repeated to the query heads: a tile's scores are (K, G, queries, keys), and dk, dv are
  accumulated per kv head (the sum over the group is part of the product);
* the layout stays (batch, length, heads, head_dim): tiles are slices along the length.

Masked scores are never filled with −∞, so the rule runs under ``jax.debug_infs(True)`` and
``jax.debug_nans(True)``. A query row with no visible key gets what ``jax.nn`` gives it (jax.nn
fills masked scores with a large finite negative number, so the softmax of such a row is uniform):
the mean of the values over all keys, and rows past ``query_seq_lengths`` get zeros.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxrules._checks import floating
from jaxrules._rule import rule
from jaxrules.cross_entropy import _varying  # the one helper for scan carries inside shard_map

Array = jax.Array

__all__ = ["dot_product_attention"]

#: (queries, keys) per tile: the fastest measured on a 2-core CPU at T = 4096 (FINDINGS.md).
DEFAULT_BLOCK = (256, 512)


def _fill(dtype: Any) -> float:
    """The masked score: −0.7 × the largest float32 (as jax.nn), finite in every dtype we compute in."""
    return float(-0.7 * np.finfo(np.float32).max)


def _dead_lse(S: int) -> float:
    """jax.nn's logsumexp of a row with every score masked: fill + log S, computed in float32 as it does."""
    return float(np.float32(_fill(np.float32)) + np.float32(np.log(max(S, 1))))


@jax.custom_batching.custom_vmap
def _any_member(state):
    """A tile's state (0 skipped, 1 visited unmasked, 2 visited masked), which under ``jax.vmap`` is
    one state for all members: the members' common state, or 2 where they differ.

    A batched index would turn ``lax.switch`` into a select of every branch (so nothing is skipped),
    and inside ``jax.shard_map`` JAX's select path fails on the branches' constants ("requires
    varying manual axes to match"). Visiting with the mask is exact for every member: a tile that
    holds no visible score adds nothing, one whose scores are all visible loses none."""
    return state


@_any_member.def_vmap
def _any_member_vmap(axis_size, in_batched, state):
    if not in_batched[0]:
        return state, False
    lo, hi = jnp.min(state), jnp.max(state)
    return jnp.where(lo == hi, hi, 2).astype(state.dtype), False


# --- tiles -----------------------------------------------------------------------------------

class _Tiles:
    """Static geometry: tile sizes, counts, and the clamped start of each tile.

    A tile whose rows would pass the end is moved back to end there (start = min(i·bq, T − bq));
    the rows it shares with the tile before are not its own (``own`` below) and are masked in
    sums over rows, so that every row and column counts once.
    """

    def __init__(self, T: int, S: int, block: tuple[int, int]):
        self.T, self.S = T, S
        self.bq, self.bk = min(block[0], T), min(block[1], S)
        self.nq, self.nk = -(-T // self.bq), -(-S // self.bk)

    def q_start(self, i, xp=jnp):
        return xp.minimum(i * self.bq, self.T - self.bq)

    def k_start(self, j, xp=jnp):
        return xp.minimum(j * self.bk, self.S - self.bk)


class _Masking:
    """Everything that masks scores: static settings and the (possibly absent) arrays."""

    def __init__(self, is_causal, window, bias, mask, q_len, kv_len, scale):
        self.is_causal, self.window, self.scale = is_causal, window, scale
        self.bias, self.mask, self.q_len, self.kv_len = bias, mask, q_len, kv_len

    def may_empty_rows(self) -> bool:
        """Can a query row (within the query lengths) have no visible key?"""
        return self.mask is not None or self.kv_len is not None or self.window is not None

    def dynamic(self) -> bool:
        """Do arrays (lengths, a mask) hide scores, beyond what the static settings hide?"""
        return self.q_len is not None or self.kv_len is not None or self.mask is not None

    def possible_states(self, tl: _Tiles, own_rows: bool) -> tuple[int, ...]:
        """The states tiles can take (see tile_state), known from the static geometry alone: every
        tile's state without the lengths and the mask, which can then hide a tile (0) or part of it (2).
        A state no tile can take needs no branch (and its code is not compiled)."""
        static = _Masking(self.is_causal, self.window, None, None, None, None, self.scale)
        table = static.tile_state(tl, None, *np.indices((tl.nq, tl.nk)), own_rows, xp=np)
        states = set(np.unique(table).tolist())
        if self.dynamic() and states - {0}:
            states |= {0, 2}
        return tuple(sorted(states))

    def tile_state(self, tl: _Tiles, b, i, j, own_rows: bool, xp=jnp):
        """What tile (b, i, j) holds: 0 no visible score (skipped), 1 only visible scores (no mask to
        apply), 2 some of each. Conservative: 2 where unsure. An int32 scalar, under jax.vmap one for
        all members (``_any_member``); or, with ``xp=np``, NumPy arrays of i and j and no lengths or
        mask, a NumPy table."""
        qs, ks = tl.q_start(i, xp), tl.k_start(j, xp)
        r0 = xp.maximum(qs, i * tl.bq) if own_rows else qs  # the rows and columns the tile owns
        r1 = qs + tl.bq - 1
        c0, c1 = xp.maximum(ks, j * tl.bk), ks + tl.bk - 1
        some, every = xp.bool_(True), c0 == ks
        if own_rows:
            every &= r0 == qs
        if self.is_causal:
            some, every = some & (c0 <= r1), every & (c1 <= r0)
        if self.window is not None:
            left, right = self.window
            some &= (c1 >= r0 - left) & (c0 <= r1 + right)
            every &= (c0 >= r1 - left) & (c1 <= r0 + right)
        if self.q_len is not None:
            some, every = some & (r0 < self.q_len[b]), every & (r1 < self.q_len[b])
        if self.kv_len is not None:
            some, every = some & (c0 < self.kv_len[b]), every & (c1 < self.kv_len[b])
        if self.mask is not None:
            m = self.mask_tile(tl, b, qs, ks)
            some, every = some & jnp.any(m), every & jnp.all(m)
        state = xp.where(some, xp.where(every, 1, 2), 0).astype(xp.int32)
        return _any_member(state) if xp is jnp else state

    def mask_tile(self, tl: _Tiles, b, qs, ks):
        m = self.mask
        return lax.dynamic_slice(m, _bias_starts(m.shape, b, qs, ks),
                                 (1, m.shape[1], tl.bq if m.shape[2] > 1 else 1, tl.bk if m.shape[3] > 1 else 1))[0]

    def bias_tile(self, tl: _Tiles, b, qs, ks):
        a = self.bias
        return lax.dynamic_slice(a, _bias_starts(a.shape, b, qs, ks),
                                 (1, a.shape[1], tl.bq if a.shape[2] > 1 else 1, tl.bk if a.shape[3] > 1 else 1))[0]

    def scores(self, tl: _Tiles, b, i, j, qg, kg, own_rows: bool, acc, keys_first: bool = False,
               masked: bool = True, prescaled: bool = False):
        """Scores of tile (b, i, j), (K, G, bq, bk) or, ``keys_first``, (K, bk, G, bq); and which of them
        are visible (a mask broadcastable to them; None when not ``masked``: all are).

        qg (K, G·bq, H) and kg (K, bk, H), heads first: the products are plain batched matrix products
        (rows × head_dim times keys × head_dim), which XLA's CPU runs without copies. One of them comes
        scaled (see ``_prescale``) when ``prescaled``; else the scores are scaled here."""
        K = kg.shape[0]
        G = qg.shape[1] // tl.bq
        qs, ks = tl.q_start(i), tl.k_start(j)
        s = _nt(kg, qg, acc) if keys_first else _nt(qg, kg, acc)
        s = s.reshape((K, tl.bk, G, tl.bq) if keys_first else (K, G, tl.bq, tl.bk))
        s = s if prescaled else s * jnp.asarray(self.scale, acc)

        def arrange(a):  # a (heads or 1, rows or 1, keys or 1) to the scores' layout
            a = a.reshape(K, G, *a.shape[1:]) if a.shape[0] > 1 else a[None]
            return jnp.transpose(a, (0, 3, 1, 2)) if keys_first else a
        if self.bias is not None:
            s = s + arrange(self.bias_tile(tl, b, qs, ks).astype(acc))
        if not masked:
            return s, None
        rows = (qs + jnp.arange(tl.bq)).reshape((1, 1, 1, tl.bq) if keys_first else (1, 1, tl.bq, 1))
        cols = (ks + jnp.arange(tl.bk)).reshape((1, tl.bk, 1, 1) if keys_first else (1, 1, 1, tl.bk))
        live = cols >= j * tl.bk  # each key column in the one tile that owns it
        if own_rows:
            live &= rows >= i * tl.bq
        if self.is_causal:
            live &= cols <= rows
        if self.window is not None:
            left, right = self.window
            live &= (cols >= rows - left) & (cols <= rows + right)
        if self.q_len is not None:
            live &= rows < self.q_len[b]
        if self.kv_len is not None:
            live &= cols < self.kv_len[b]
        if self.mask is not None:
            live = live & arrange(self.mask_tile(tl, b, qs, ks))
        return s, live


def _prescale(t, scale, acc):
    """(t·scale, True) when t is in the accumulation dtype (float32 and wider): scaling the tile that
    stays fixed over the inner loop once is cheaper than scaling every tile of scores; else (t, False)
    (in bfloat16 and float16 the scores are scaled after the product, in float32)."""
    return (t * jnp.asarray(scale, acc), True) if t.dtype == acc else (t, False)


def _nt(a, b, acc):
    """a bᵀ per head: (K, M, C) × (K, N, C) → (K, M, N)."""
    return lax.dot_general(a, b.astype(a.dtype), (((2,), (2,)), ((0,), (0,))), preferred_element_type=acc)


def _nn(a, b, acc):
    """a b per head: (K, M, C) × (K, C, N) → (K, M, N)."""
    return lax.dot_general(a, b.astype(a.dtype), (((2,), (1,)), ((0,), (0,))), preferred_element_type=acc)


def _exp_visible(s, shift, live):
    """exp(s − shift) where visible, 0 elsewhere; never an overflow or an infinity in between."""
    if live is None:
        return jnp.exp(s - shift)
    return jnp.where(live, jnp.exp(jnp.where(live, s - shift, 0)), 0)


def _by_state(state, fn, skip, operand, possible: tuple[int, ...]):
    """fn(operand, masked) for the tile's state (0: skip(operand), 1: unmasked, 2: masked), among the
    ``possible`` states: a lax.switch over their branches only, so that a skipped tile costs nothing
    and a whole one no mask; no switch where one state is possible."""
    branches = {0: skip, 1: lambda o: fn(o, False), 2: lambda o: fn(o, True)}
    if len(possible) == 1:
        return branches[possible[0]](operand)
    index = sum((state > p).astype(jnp.int32) for p in possible[:-1])  # the state's place in ``possible``
    return lax.switch(index, [branches[p] for p in possible], operand)


def _q_tile(a, b, start, bq, K):
    """Rows [start, start + bq) of batch member b of a (B, T, N, H) array, heads first: (K, G·bq, H)."""
    t = lax.dynamic_slice(a, (b, start, 0, 0), (1, bq) + a.shape[2:])[0]
    G, H = a.shape[2] // K, a.shape[3]
    return jnp.transpose(t.reshape(bq, K, G, H), (1, 2, 0, 3)).reshape(K, G * bq, H)


def _rows_tile(a, b, start, bq, K):
    """Rows of a (B, T, N) array as (K, G, bq)."""
    t = lax.dynamic_slice(a, (b, start, 0), (1, bq, a.shape[2]))[0]
    return jnp.moveaxis(t.reshape(bq, K, -1), 0, -1)


def _kv_tile(a, b, start, bk):
    """Keys [start, start + bk) of batch member b of a (B, S, K, H) array, heads first: (K, bk, H)."""
    return jnp.transpose(lax.dynamic_slice(a, (b, start, 0, 0), (1, bk) + a.shape[2:])[0], (1, 0, 2))


def _to_rows(t, bq):
    """A heads-first tile (K, G·bq, H) or (K, G, bq, H) as rows (bq, N, H)."""
    K, H = t.shape[0], t.shape[-1]
    return jnp.transpose(t.reshape(K, -1, bq, H), (2, 0, 1, 3)).reshape(bq, -1, H)


def _add_at(acc, update, starts):
    """acc with update added at starts (a linear map of both, as lax.dynamic_update_slice is)."""
    cur = lax.dynamic_slice(acc, starts, update.shape)
    return lax.dynamic_update_slice(acc, cur + update.astype(acc.dtype), starts)


# --- forward ---------------------------------------------------------------------------------

def _attention_forward(q, k, v, bias, mask, q_len, kv_len, scale, is_causal, window, block):
    """(out (B, T, N, H) in q's dtype, lse (B, T, N) in the accumulation dtype)."""
    B, T, N, H = q.shape
    _, S, K, _ = k.shape
    G = N // K
    acc = jnp.promote_types(q.dtype, jnp.float32)
    dead = _dead_lse(S)
    if B * T * N == 0 or S == 0:  # no rows, or no keys (jax.nn: an empty sum, and lse = −∞ ... kept finite here)
        return jnp.zeros(q.shape, q.dtype), jnp.full((B, T, N), dead, acc)
    tl = _Tiles(T, S, block)
    mk = _Masking(is_causal, window, bias, mask, q_len, kv_len, scale)
    fill = jnp.asarray(_fill(acc), acc)
    mean_v = jnp.mean(v, axis=1, dtype=acc) if mk.may_empty_rows() else None  # (B, K, H)
    states = mk.possible_states(tl, False)

    def query_tile(carry, bi):
        out, lse = carry
        b, i = bi // tl.nq, bi % tl.nq
        qs = tl.q_start(i)
        qg, prescaled = _prescale(_q_tile(q, b, qs, tl.bq, K), scale, acc)

        def key_tile(state, j):
            def visit(state, masked):
                m, l, o = state  # (K, G, bq), (K, G, bq), (K, G·bq, H)
                ks = tl.k_start(j)
                kg, vg = _kv_tile(k, b, ks, tl.bk), _kv_tile(v, b, ks, tl.bk)
                s, live = mk.scores(tl, b, i, j, qg, kg, False, acc, masked=masked, prescaled=prescaled)
                m_new = jnp.maximum(m, jnp.max(s if live is None else jnp.where(live, s, fill), axis=-1))
                p = _exp_visible(s, m_new[..., None], live)
                corr = jnp.exp(m - m_new)
                l = l * corr + jnp.sum(p, axis=-1)
                o = o * corr.reshape(K, -1, 1) + _nn(p.reshape(K, -1, tl.bk), vg, acc)
                return m_new, l, o
            state = _by_state(mk.tile_state(tl, b, i, j, False), visit, lambda s: s, state, states)
            return state, None

        init = (jnp.full((K, G, tl.bq), fill, acc), jnp.zeros((K, G, tl.bq), acc), jnp.zeros((K, G * tl.bq, H), acc))
        (m, l, o), _ = lax.scan(key_tile, _varying(init, q, k, v, bias, mask, q_len, kv_len), jnp.arange(tl.nk))
        o = o.reshape(K, G, tl.bq, H)
        seen = l > 0
        o = o / jnp.where(seen, l, 1)[..., None]
        if mean_v is not None:  # rows with no visible key: the uniform average over all keys (jax.nn)
            o = jnp.where(seen[..., None], o, mean_v[b][:, None, None, :])
        rows = qs + jnp.arange(tl.bq)
        keep = rows >= i * tl.bq  # rows this tile owns
        if q_len is not None:
            keep &= rows < q_len[b]
        o = jnp.where(keep[:, None, None], _to_rows(o, tl.bq), 0)
        r = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1)), dead)
        r = jnp.where((rows >= i * tl.bq)[:, None], jnp.moveaxis(r, 2, 0).reshape(tl.bq, N), 0)
        return (_add_at(out, o[None].astype(out.dtype), (b, qs, 0, 0)), _add_at(lse, r[None], (b, qs, 0))), None

    init = (jnp.zeros(q.shape, q.dtype), jnp.zeros((B, T, N), acc))
    (out, lse), _ = lax.scan(query_tile, _varying(init, q, k, v, bias, mask, q_len, kv_len), jnp.arange(B * tl.nq))
    return out, lse


@rule(settings=("scale", "is_causal", "window", "block"))
def _attention(q, k, v, bias, mask, q_len, kv_len, scale, is_causal, window, block):
    return _attention_forward(q, k, v, bias, mask, q_len, kv_len, scale, is_causal, window, block)


def _attention_fwd(q, k, v, bias, mask, q_len, kv_len, scale, is_causal, window, block):
    out, lse = _attention.call(q, k, v, bias, mask, q_len, kv_len, scale, is_causal, window, block)
    return (out, lse), (q, k, v, bias, mask, q_len, kv_len, out, lse)


def _attention_bwd(scale, is_causal, window, block, res, cts):
    q, k, v, bias, mask, q_len, kv_len, out, lse = res
    g, g_lse = cts
    B, T, N, H = q.shape
    _, S, K, _ = k.shape
    G = N // K
    acc = lse.dtype
    zeros = lambda a: None if a is None else jnp.zeros(a.shape, a.dtype)  # noqa: E731
    if B * T * N == 0 or S == 0:
        return zeros(q), zeros(k), zeros(v), zeros(bias), None, None, None
    tl = _Tiles(T, S, block)
    mk = _Masking(is_causal, window, bias, mask, q_len, kv_len, scale)
    dead = _dead_lse(S)
    do = g.astype(acc)
    # rowsum(Ō ∘ O) − ℓ̄se: P̄'s shift, since ∂lse/∂s = P
    delta = jnp.sum(do * out.astype(acc), axis=-1) - g_lse.astype(acc)
    sc = jnp.asarray(scale, acc)
    states = mk.possible_states(tl, True)

    def key_tile(carry, bj):
        dq, dk, dv, db = carry
        b, j = bj // tl.nk, bj % tl.nk
        ks = tl.k_start(j)
        kg, prescaled = _prescale(_kv_tile(k, b, ks, tl.bk), scale, acc)
        vg = _kv_tile(v, b, ks, tl.bk)
        # Q̄ᵀ = Kᵀ S̄ᵀ, from the key tile transposed once: products that contract their left operand's first
        # axis (S̄ᵀ K) run far below peak on XLA's CPU
        kgT = jnp.swapaxes(kg, 1, 2)  # (K, H, bk)
        dq_scale = (lambda a: a) if prescaled else (lambda a: a * sc)

        def query_tile(state, i):
            dq, dkt, dvt, db = state
            qs = tl.q_start(i)

            def visit(_, masked):
                qg = _q_tile(q, b, qs, tl.bq, K)
                dog = _q_tile(do, b, qs, tl.bq, K)
                s, live = mk.scores(tl, b, i, j, qg, kg, True, acc, keys_first=True, masked=masked,
                                    prescaled=prescaled)  # (K, bk, G, bq)
                rows = lambda a: _rows_tile(a, b, qs, tl.bq, K)[:, None]  # noqa: E731 - (K, 1, G, bq)
                p = _exp_visible(s, rows(lse), live)
                dp = _nt(vg, dog, acc).reshape(s.shape)
                ds = p * (dp - rows(delta))
                p, ds = p.reshape(K, tl.bk, -1), ds.reshape(K, tl.bk, -1)  # (K, bk, G·bq)
                dvt = _nn(p, dog, acc)
                dkt = _nn(ds, qg, acc) * sc
                # (behind a barrier: XLA would fold the transposes of K and of the result into the product)
                dqt = dq_scale(lax.optimization_barrier(_nn(kgT, ds, acc)))  # (K, H, G·bq)
                dqt = _to_rows(jnp.swapaxes(dqt, 1, 2), tl.bq)
                dbt = None if bias is None else _bias_part(
                    jnp.transpose(ds.reshape(K, tl.bk, G, tl.bq), (0, 2, 3, 1)), bias.shape)
                return dqt, dkt, dvt, dbt

            def skip(_):
                outs = (jnp.zeros((tl.bq, N, H), acc), jnp.zeros((K, tl.bk, H), acc), jnp.zeros((K, tl.bk, H), acc),
                        None if bias is None else jnp.zeros(_bias_part_shape(bias.shape, tl), acc))
                return _varying(outs, q, k, v, bias, mask, q_len, kv_len, g, g_lse)

            dqt, dkp, dvp, dbt = _by_state(mk.tile_state(tl, b, i, j, True), visit, skip, None, states)
            dq = _add_at(dq, dqt[None], (b, qs, 0, 0))
            if bias is not None:
                db = _add_at(db, dbt[None], _bias_starts(bias.shape, b, qs, ks))
            return (dq, dkt + dkp, dvt + dvp, db), None

        init = (jnp.zeros((K, tl.bk, H), acc), jnp.zeros((K, tl.bk, H), acc))
        (dq, dkt, dvt, db), _ = lax.scan(
            query_tile, (dq, *_varying(init, q, k, v, bias, mask, q_len, kv_len, g, g_lse), db), jnp.arange(tl.nq))
        dk = _add_at(dk, jnp.swapaxes(dkt, 0, 1)[None], (b, ks, 0, 0))
        dv = _add_at(dv, jnp.swapaxes(dvt, 0, 1)[None], (b, ks, 0, 0))
        return (dq, dk, dv, db), None

    init = (jnp.zeros(q.shape, acc), jnp.zeros(k.shape, acc), jnp.zeros(v.shape, acc),
            None if bias is None else jnp.zeros(bias.shape, acc))
    (dq, dk, dv, db), _ = lax.scan(key_tile, _varying(init, q, k, v, bias, mask, q_len, kv_len, g, g_lse),
                                   jnp.arange(B * tl.nk))
    if mask is not None or kv_len is not None or window is not None:
        # rows with no visible key output the mean of v over all keys: each key gets Ō/S of them
        empty = lse == dead
        if q_len is not None:
            empty &= jnp.arange(T)[None, :, None] < q_len[:, None, None]
        per_head = jnp.sum(jnp.where(empty[..., None], do, 0), axis=1)  # (B, N, H)
        dv = dv + (per_head.reshape(B, K, G, H).sum(axis=2) / S)[:, None]
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
            None if bias is None else db.astype(bias.dtype), None, None, None)


def _bias_part_shape(shape, tl):
    return (shape[1], tl.bq if shape[2] > 1 else 1, tl.bk if shape[3] > 1 else 1)


def _bias_part(ds, shape):
    """A tile's S̄ (K, G, bq, bk) summed to the bias tile's shape (heads, rows, keys; 1 where broadcast)."""
    K, G, bq, bk = ds.shape
    d = ds.reshape(K * G, bq, bk)
    axes = tuple(a for a, n in zip((0, 1, 2), shape[1:]) if n == 1)
    return jnp.sum(d, axis=axes, keepdims=True) if axes else d


def _bias_starts(shape, b, qs, ks):
    """Where a (batch, heads, rows, keys) tile of a bias or mask starts (0 along its broadcast axes)."""
    return (b if shape[0] > 1 else 0, 0, qs if shape[2] > 1 else 0, ks if shape[3] > 1 else 0)


_attention.defvjp(_attention_fwd, _attention_bwd)


# --- the public face -------------------------------------------------------------------------

def _as4(name: str, a: Any, full: tuple[int, int, int, int], boolean: bool):
    """bias or mask as a 4-d array broadcastable to (B, N, T, S), or None."""
    rule_name = "dot_product_attention"
    if a is None:
        return None
    a = jnp.asarray(a)
    if boolean and a.dtype != jnp.bool_:
        raise TypeError(f"{rule_name}: {name} must be a boolean array, got dtype {a.dtype}")
    if not boolean:
        a = floating(rule_name, name, a)
    if a.ndim > 4 or any(d not in (1, f) for d, f in zip(a.shape[::-1], full[::-1])):
        raise ValueError(f"{rule_name}: {name} with shape {a.shape} does not broadcast to (batch, heads, "
                         f"q_length, kv_length) = {full}")
    return a.reshape((1,) * (4 - a.ndim) + a.shape)


def _lengths(name: str, a: Any, B: int):
    if a is None:
        return None
    a = jnp.asarray(a)
    if not jnp.issubdtype(a.dtype, jnp.integer) or a.shape != (B,):
        raise ValueError(f"dot_product_attention: {name} must be an integer array of shape (batch,) = ({B},), "
                         f"got {a.dtype}{a.shape}")
    return a


def _pair(name: str, v: Any, what: str) -> tuple[int, int] | None:
    """An int or a pair of ints as a pair (None stays None)."""
    if v is None:
        return None
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v), int(v)
    if isinstance(v, tuple) and len(v) == 2 and all(isinstance(u, numbers.Integral) and not isinstance(u, bool)
                                                    for u in v):
        return int(v[0]), int(v[1])
    raise TypeError(f"dot_product_attention: {name} must be an int or a pair of ints ({what}), got {v!r}")


@rule(like=jax.nn.dot_product_attention, floats=("query", "key", "value"),
      settings=("scale", "is_causal", "local_window_size", "implementation", "return_residual", "block_size"))
def dot_product_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike, bias: ArrayLike | None = None,
                          mask: ArrayLike | None = None, *, scale: float | None = None, is_causal: bool = False,
                          query_seq_lengths: ArrayLike | None = None, key_value_seq_lengths: ArrayLike | None = None,
                          local_window_size: int | tuple[int, int] | None = None,
                          implementation: str | None = None, return_residual: bool = False,
                          block_size: int | tuple[int, int] | None = None) -> Array | tuple[Array, Array]:
    r"""Scaled dot-product attention with ``jax.nn.dot_product_attention``'s signature and meaning.

    query (B, T, N, H), key and value (B, S, K, H) with K dividing N (grouped queries), or the same
    without the batch axis; ``bias`` broadcastable to (B, N, T, S); ``mask`` a boolean array
    broadcastable to (B, N, T, S) (True = attend); ``is_causal``: query t sees keys s ≤ t;
    ``query_seq_lengths`` / ``key_value_seq_lengths`` (B,) int: rows t ≥ q_len output zeros and keys
    s ≥ kv_len are hidden; ``local_window_size`` (left, right) or an int w = (w, w): query t sees keys
    t − left ≤ s ≤ t + right. Per head, with P the softmax over the visible keys:

    .. math:: P = \mathrm{softmax}(s QK^T + \mathrm{bias}),  O = PV;
              \bar V = P^T \bar O,  \bar S = P ∘ (\bar O V^T - \mathrm{rowsum}(\bar O ∘ O)),
              \bar Q = s\,\bar S K,  \bar K = s\,\bar S^T Q,  \overline{\mathrm{bias}} = \bar S

    Over 2-D tiles of ``block_size`` (queries, keys) (an int for both; default (256, 512)), with an
    online softmax: the forward keeps the inputs, the output and one logsumexp per query row, never
    the T × S scores; tiles wholly hidden by causality, the window, the lengths or the mask are
    skipped in the forward and the backward. A row with no visible key gives the mean of the values
    over all keys, as jax.nn does (its softmax of equal fill values is uniform).

    ``implementation``: None and ``"xla"`` run this rule; ``"cudnn"`` calls jax.nn's cuDNN kernel on a
    GPU and raises a ValueError elsewhere. ``return_residual=True`` returns (output, logsumexp), the
    logsumexp of shape (B, T, N) in key's dtype without a gradient, as jax.nn.
    """
    name = "dot_product_attention"
    if implementation not in (None, "xla", "cudnn"):
        raise ValueError(f"{name}: implementation must be None, 'xla' or 'cudnn', got {implementation!r}")
    if implementation == "cudnn":
        if jax.default_backend() != "gpu":
            raise ValueError(f"{name}: implementation='cudnn' needs a CUDA GPU (cuDNN's fused attention); the "
                             f"default backend here is {jax.default_backend()!r}. Use implementation=None or 'xla'")
        return jax.nn.dot_product_attention(query, key, value, bias, mask, scale=scale, is_causal=is_causal,
                                            query_seq_lengths=query_seq_lengths,
                                            key_value_seq_lengths=key_value_seq_lengths,
                                            local_window_size=local_window_size, implementation="cudnn",
                                            return_residual=return_residual)
    q, k, v = (floating(name, n, a) for n, a in (("query", query), ("key", key), ("value", value)))
    if q.ndim not in (3, 4) or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"{name}: query, key and value must all be (batch, length, heads, head_dim) or "
                         f"(length, heads, head_dim), got {q.shape}, {k.shape}, {v.shape}")
    unbatched = q.ndim == 3
    if unbatched:
        q, k, v = q[None], k[None], v[None]
    B, T, N, H = q.shape
    _, S, K, _ = k.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != H or K == 0 or N % K:
        raise ValueError(f"{name}: key and value must have shape (batch, kv_length, kv_heads, head_dim) with "
                         f"query's batch and head_dim and kv_heads dividing query's heads; got query {q.shape}, "
                         f"key {k.shape}, value {v.shape}")
    dtype = jnp.result_type(q, k, v)
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    full = (B, N, T, S)
    b4 = _as4("bias", bias, full, False)
    m4 = _as4("mask", mask, full, True)
    q_len = _lengths("query_seq_lengths", query_seq_lengths, B)
    kv_len = _lengths("key_value_seq_lengths", key_value_seq_lengths, B)
    if scale is None:
        scale = 1.0 / float(H) ** 0.5
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"{name}: scale must be a Python number or None, got {type(scale).__name__}")
    if not isinstance(is_causal, (bool, np.bool_)):
        raise TypeError(f"{name}: is_causal must be a bool, got {type(is_causal).__name__}")
    if not isinstance(return_residual, (bool, np.bool_)):
        raise TypeError(f"{name}: return_residual must be a bool, got {type(return_residual).__name__}")
    window = _pair("local_window_size", local_window_size, "(left, right) keys seen around each query")
    block = _pair("block_size", DEFAULT_BLOCK if block_size is None else block_size, "(queries, keys) per tile")
    if min(block) < 1:
        raise ValueError(f"{name}: block_size must be positive, got {block_size!r}")
    out, lse = _attention(q, k, v, b4, m4, q_len, kv_len, float(scale), bool(is_causal), window, block)
    if unbatched:
        out, lse = out[0], lse[0]
    if return_residual:
        return out, lax.stop_gradient(lse).astype(k.dtype)
    return out
