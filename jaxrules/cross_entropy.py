r"""Linear softmax cross-entropy: an output layer and its loss in one rule, without the N×V logits.

``linear_softmax_cross_entropy(x, W, labels, b)`` is ``softmax_cross_entropy_with_integer_labels(x @ W
+ b, labels)`` for x (N, D), W (D, V), b (V,), with the options users of Liger-Kernel and Cut
Cross-Entropy ask for (label smoothing, z-loss, logit soft-capping) and a reduction. It never holds
the N×V logits: it walks over chunks of rows, each with the whole vocabulary, so that a chunk's
softmax is complete and its gradient can be formed at once.

Two designs, by what the cotangent is:

* ``reduction="none"``: ȳ (one cotangent per row) arrives after the forward, and W̄ = xᵀ·diag(ȳ)·(P − T)
  puts it inside the contraction. The forward keeps one logsumexp per row (1 matrix product); the
  backward recomputes each chunk's logits and forms x̄ and W̄ (3 products): 4 against the plain
  version's 3, with bounded memory.
* ``reduction="mean"`` or ``"sum"``: ȳ is a scalar, so the gradient is ȳ times the gradient at ȳ = 1.
  The forward forms x̄₀ and W̄₀ chunk by chunk as it computes the loss (3 products, the logits once);
  the backward scales them: x̄ = ȳ·x̄₀, W̄ = ȳ·W̄₀. Under ``value_and_grad`` the scaling by 1 folds away.

Everything over the vocabulary is a matrix product with V as a free or contracted axis, an
elementwise map or a reduction, so when W and b are sharded over V (a ``NamedSharding`` under
``jax.jit``) XLA's partitioner keeps the work vocabulary-parallel: each device computes its shard of
every chunk's logits, the per-shard maxima and sums of exponentials are combined by all-reduces of
one number per row, and W is never gathered. xᵀz̄ is formed a block of W̄'s rows at a time, which
bounds the product's temporary to D·V/k values while leaving the (sharded) vocabulary axis unsliced.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxrules._checks import floating, static_number
from jaxrules._rule import rule

Array = jax.Array

__all__ = ["linear_softmax_cross_entropy"]

# Default sizes, measured at N=4096, D=512, V=32768 on a 2-core CPU, where the temporary memory is one chunk
# of logits and one block of W̄'s product (90 MB there): 0.90x plain's time with 456 rows a chunk and W̄'s
# product in 2 blocks, against 0.92x with 4 blocks (each block re-reads the chunk's z̄) and 0.94-0.97x with
# 256-384 rows a chunk (products over fewer rows run further below peak).
_CHUNK_LOGITS = 15 << 20  # a chunk holds at most 15M logits (60 MB in float32): 480 rows at V = 32768
# Products need a few hundred rows to run near full speed (FINDINGS.md); more than 512 only cost memory (at
# N=8192, D=512, V=8192: 0.87-0.88x plain's time with 512, 768 or 1640 rows a chunk, 34 MB against 74 MB).
_MIN_ROWS, _MAX_ROWS = 128, 512
_BLOCK_VALUES = 1 << 23  # W̄'s product is formed in row blocks of at most 8M values (32 MB in float32)
_REDUCTIONS = ("none", "mean", "sum")


class _Options(NamedTuple):
    """The static settings of one call (hashable: a custom_vjp setting)."""

    rows: int  # rows of x per chunk
    smoothing: float  # α: targets (1 − α)·onehot + α/V
    z_loss: float  # λ: adds λ·lse² per row
    softcap: float | None  # c: logits c·tanh(z/c)
    blocks: int  # W̄'s product formed in this many row blocks


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


def _add_rows(acc: Array, start: Array, rows: Array) -> Array:
    """acc with ``rows`` added at [start, start + len(rows)) along axis 0 (linear in both)."""
    cur = lax.dynamic_slice_in_dim(acc, start, rows.shape[0], axis=0)
    return lax.dynamic_update_slice_in_dim(acc, cur + rows.astype(acc.dtype), start, axis=0)


def _chunk(c: Array, n: int, rows: int):
    """Chunk c: its first row (the last chunk is moved back to end at row n) and which of its rows it owns."""
    start = jnp.minimum(c * rows, n - rows)
    return start, start + jnp.arange(rows) >= c * rows


def _logits(xc: Array, W: Array, b: Array | None, opt: _Options, acc: Any) -> Array:
    """z = xc W + b, soft-capped: c·tanh(z/c). (rows, V) in the accumulation dtype."""
    z = jnp.dot(xc, W, preferred_element_type=acc)
    if b is not None:
        z = z + b.astype(acc)
    if opt.softcap is not None:
        z = opt.softcap * jnp.tanh(z / opt.softcap)
    return z


def _hit(z: Array, yc: Array) -> Array:
    """Where each row's label is in a chunk of logits (computed where it is used, never stored)."""
    return lax.broadcasted_iota(jnp.int32, z.shape, 1) == yc[:, None]


def _label_logits(xc: Array, W: Array, b: Array | None, yc: Array, opt: _Options, acc: Any) -> Array:
    """z at each row's label, x·W[:, y] + b[y] (soft-capped), gathered from W: reading it from the chunk
    of logits instead would keep them alive past the pass that turns them into z̄ (two chunk-sized
    buffers instead of one). A label outside [0, V) reads a clipped column (its loss is NaN anyway)."""
    v = W.shape[1]
    y = jnp.clip(yc, 0, v - 1)
    z = jnp.einsum("rd,dr->r", xc, jnp.take(W, y, axis=1), preferred_element_type=acc)
    if b is not None:
        z = z + jnp.take(b, y).astype(acc)
    if opt.softcap is not None:
        z = opt.softcap * jnp.tanh(z / opt.softcap)
    return z


def _row_losses(z: Array, picked: Array, yc: Array, opt: _Options, softmax: bool = False):
    """(loss, lse) of each row of a chunk of logits z, with z at the labels given: one read of z for the
    maximum (and, with smoothing, the row sum), one for the sum of exponentials. NaN for a label
    outside [0, V). With ``softmax``, also softmax(z) (from the same exponentials: no second exp)."""
    v = z.shape[1]
    m = jnp.max(z, axis=1)
    e = jnp.exp(z - m[:, None])
    total = jnp.sum(e, axis=1)
    lse = m + jnp.log(total)
    loss = lse - (1 - opt.smoothing) * picked
    if opt.smoothing:
        loss = loss - (opt.smoothing / v) * jnp.sum(z, axis=1)
    if opt.z_loss:
        loss = loss + opt.z_loss * lse * lse
    loss = jnp.where((yc >= 0) & (yc < v), loss, jnp.nan)
    return (loss, lse, e * (1 / total)[:, None]) if softmax else (loss, lse)


def _logit_cotangent(z: Array, lse: Array, yc: Array, w: Array, opt: _Options, dtype: Any, p=None) -> Array:
    """z̄ = w ∘ (softmax(z)(1 + 2λ·lse) − t) ∘ (1 − (z/c)²), t = (1 − α)·onehot + α/V: linear in w.
    One elementwise pass over the chunk (``p``: softmax(z) if already formed)."""
    v = z.shape[1]
    a = opt.smoothing
    scale = w if not opt.z_loss else w * (1 + 2 * opt.z_loss * lse)
    p = jnp.exp(z - lse[:, None]) if p is None else p
    dz = scale[:, None] * p - w[:, None] * jnp.where(_hit(z, yc), 1 - a + a / v, a / v)
    if opt.softcap is not None:
        dz = dz * (1 - jnp.square(z / opt.softcap))  # z is already capped: d(c·tanh(u/c))/du = 1 − (z/c)²
    return dz.astype(dtype)


def _add_xT_dz(W_bar: Array, xcT: Array, dz: Array, blocks: int) -> Array:
    """W̄ + xcᵀ dz, given xcᵀ (D, rows), ``blocks`` row blocks of W̄ at a time: the product's temporary
    is D·V/blocks values.

    Blocks of rows (of D), not of columns: slicing the vocabulary axis would make XLA gather a
    V-sharded W̄ and z̄ onto every device."""
    acc = W_bar.dtype
    if blocks == 1:
        return W_bar + jnp.dot(xcT, dz, preferred_element_type=acc)
    d = W_bar.shape[0] // blocks

    def block(j, W_bar):
        part = jnp.dot(lax.dynamic_slice_in_dim(xcT, j * d, d, axis=0), dz, preferred_element_type=acc)
        cur = lax.dynamic_slice_in_dim(W_bar, j * d, d, axis=0)
        return lax.dynamic_update_slice_in_dim(W_bar, cur + part, j * d, axis=0)
    return lax.fori_loop(0, blocks, block, W_bar)


def _gradients(x, W, labels, b, weights, lse, opt: _Options, mask=None):
    """x̄, W̄, b̄ for the row weights ``weights`` (N,): Σ_n w_n ∇ℓ_n, chunk by chunk.

    With ``lse`` (N,) given (the backward of reduction="none"), each chunk's logits are read once
    more for z̄; without it (the forward of "mean"/"sum") the chunk's losses are computed too and
    (x̄, W̄, b̄, Σ_{mask} ℓ_n) is returned. Linear in ``weights``.
    """
    n = x.shape[0]
    acc = jnp.promote_types(jnp.result_type(x, W), jnp.float32)
    rows = min(opt.rows, n)
    nc = -(-n // rows) if n else 0
    ct = jnp.result_type(x, W) if b is None else jnp.result_type(x, W, b)

    def body(carry, c):
        x_bar, W_bar, b_bar, total = carry
        start, owned = _chunk(c, n, rows)
        xc = lax.dynamic_slice_in_dim(x, start, rows)
        yc = lax.dynamic_slice_in_dim(labels, start, rows)
        w = jnp.where(owned, lax.dynamic_slice_in_dim(weights, start, rows), 0).astype(acc)
        z = _logits(xc, W, b, opt, acc)
        if lse is None:
            loss, l, p = _row_losses(z, _label_logits(xc, W, b, yc, opt, acc), yc, opt, softmax=True)
            keep = owned if mask is None else owned & lax.dynamic_slice_in_dim(mask, start, rows)
            total = total + jnp.sum(jnp.where(keep, loss, 0))
        else:
            l, p = lax.dynamic_slice_in_dim(lse, start, rows), None
        dz = _logit_cotangent(z, l, yc, w, opt, ct, p)
        x_bar = _add_rows(x_bar, start, jnp.dot(dz, W.T, preferred_element_type=acc))
        # xcᵀ materialized (1 chunk of x, behind a barrier): folded into the product, the transpose would make
        # it contract its left operand's first axis, which XLA's CPU runs far below peak
        W_bar = _add_xT_dz(W_bar, lax.optimization_barrier(xc.astype(ct).T), dz, opt.blocks)
        if b_bar is not None:
            b_bar = b_bar + jnp.sum(dz, axis=0, dtype=acc)
        return (x_bar, W_bar, b_bar, total), None

    init = (jnp.zeros(x.shape, x.dtype), jnp.zeros(W.shape, acc), None if b is None else jnp.zeros(b.shape, acc),
            jnp.zeros((), acc))
    (x_bar, W_bar, b_bar, total), _ = lax.scan(body, _varying(init, x, W, labels, b, weights, lse),
                                               jnp.arange(nc))
    grads = (x_bar, W_bar.astype(W.dtype), None if b is None else b_bar.astype(b.dtype))
    return grads if lse is not None else (*grads, total)


# --- reduction="none": per-row losses, the backward recomputes the logits -------------------

def _rows_forward(x, W, labels, b, where, opt: _Options):
    """(per-row losses, per-row logsumexps), chunk by chunk: one product per chunk."""
    n = x.shape[0]
    acc = jnp.promote_types(jnp.result_type(x, W), jnp.float32)
    rows = min(opt.rows, n)
    nc = -(-n // rows) if n else 0

    def body(carry, c):
        loss, lse = carry
        start, owned = _chunk(c, n, rows)
        xc, yc = lax.dynamic_slice_in_dim(x, start, rows), lax.dynamic_slice_in_dim(labels, start, rows)
        lc, sc = _row_losses(_logits(xc, W, b, opt, acc), _label_logits(xc, W, b, yc, opt, acc), yc, opt)
        return (_add_rows(loss, start, jnp.where(owned, lc, 0)), _add_rows(lse, start, jnp.where(owned, sc, 0))), None

    init = (jnp.zeros((n,), acc), jnp.zeros((n,), acc))
    (loss, lse), _ = lax.scan(body, _varying(init, x, W, labels, b), jnp.arange(nc))
    if where is not None:
        loss = jnp.where(where, loss, 0)
    return loss, lse


@rule(settings=("opt",))
def _xent_rows(x, W, labels, b, where, opt):
    loss, _ = _rows_forward(x, W, labels, b, where, opt)
    return loss.astype(_out_dtype(x, W, b))


def _xent_rows_fwd(x, W, labels, b, where, opt):
    loss, lse = _rows_forward(x, W, labels, b, where, opt)
    return loss.astype(_out_dtype(x, W, b)), (x, W, labels, b, where, lse)


def _xent_rows_bwd(opt, res, g):
    x, W, labels, b, where, lse = res
    w = g.astype(lse.dtype)
    if where is not None:
        w = jnp.where(where, w, 0)
    x_bar, W_bar, b_bar = _gradients(x, W, labels, b, w, lse, opt)
    return x_bar, W_bar, None, b_bar, None


_xent_rows.defvjp(_xent_rows_fwd, _xent_rows_bwd)


# --- reduction="mean" / "sum": the gradient at ȳ = 1 is formed in the forward ----------------

def _reduced_forward(x, W, labels, b, where, opt: _Options, mean: bool):
    """(loss, x̄₀, W̄₀, b̄₀): the reduced loss and its gradient for ȳ = 1, in one pass (3 products per chunk)."""
    n = x.shape[0]
    acc = jnp.promote_types(jnp.result_type(x, W), jnp.float32)
    count = jnp.asarray(n, acc) if where is None else jnp.sum(where, dtype=acc)
    live = jnp.ones((n,), bool) if where is None else where
    unit = 1 / jnp.maximum(count, 1) if mean else jnp.ones((), acc)
    weights = jnp.where(live, unit, 0).astype(acc)
    x_bar, W_bar, b_bar, total = _gradients(x, W, labels, b, weights, None, opt, mask=where)
    loss = total / count if mean else total  # mean over no rows: 0/0 = NaN, as jnp.mean
    return loss.astype(_out_dtype(x, W, b)), x_bar, W_bar, b_bar


@rule(settings=("opt", "mean"))
def _xent_reduced(x, W, labels, b, where, opt, mean):
    return _reduced_forward(x, W, labels, b, where, opt, mean)[0]


def _xent_reduced_fwd(x, W, labels, b, where, opt, mean):
    loss, x_bar, W_bar, b_bar = _reduced_forward(x, W, labels, b, where, opt, mean)
    return loss, (x_bar, W_bar, b_bar)


def _xent_reduced_bwd(opt, mean, res, g):
    # linear in ȳ: its transpose (the forward-mode rule) is ẏ = ⟨x̄₀, ẋ⟩ + ⟨W̄₀, Ẇ⟩ + ⟨b̄₀, ḃ⟩
    x_bar, W_bar, b_bar = res
    scale = lambda a: None if a is None else (g * a).astype(a.dtype)  # noqa: E731
    return scale(x_bar), scale(W_bar), None, scale(b_bar), None


_xent_reduced.defvjp(_xent_reduced_fwd, _xent_reduced_bwd)


# --- the public function --------------------------------------------------------------------

def _out_dtype(x, W, b):
    return jnp.result_type(x, W) if b is None else jnp.result_type(x, W, b)


def _default_rows(n: int, v: int) -> int:
    """Rows per chunk: at most _CHUNK_LOGITS logits (within [_MIN_ROWS, _MAX_ROWS]), spread evenly over the
    chunks N needs (a multiple of 8), so that the last chunk recomputes few rows of the one before."""
    most = max(_MIN_ROWS, min(_MAX_ROWS, _CHUNK_LOGITS // v))
    chunks = max(1, -(-n // most))
    even = -(-n // chunks)
    return min(most, -(-even // 8) * 8)


def _blocks(d: int, v: int) -> int:
    """In how many row blocks W̄'s product is formed: the fewest (1, 2, 4, ...) dividing D that keep its
    temporary D·V/blocks within _BLOCK_VALUES."""
    k = 1
    while d * v > k * _BLOCK_VALUES and d % (2 * k) == 0:
        k *= 2
    return k


def _setup(x, W, labels, b, where, chunk_size, reduction, label_smoothing, z_loss, logit_softcap):
    name = "linear_softmax_cross_entropy"
    x, W = floating(name, "x", x), floating(name, "W", W)
    if x.ndim != 2 or W.ndim != 2 or x.shape[1] != W.shape[0]:
        raise ValueError(f"{name}: x must have shape (N, D) and W shape (D, V) with the same D, "
                         f"got {x.shape} and {W.shape}")
    n, v = x.shape[0], W.shape[1]
    if v == 0:
        raise ValueError(f"{name}: W has no columns (V = 0): the softmax needs at least one class")
    if isinstance(labels, (list, tuple)) or labels is None:
        raise TypeError(f"{name}: labels must be an integer array, got {type(labels).__name__}")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name}: labels must have an integer dtype (class indices), got {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{name}: labels must have shape ({n},), one per row of x {x.shape}, got {labels.shape}")
    if b is not None:
        b = floating(name, "b", b)
        if b.shape != (v,):
            raise ValueError(f"{name}: b must have shape ({v},) to match W {W.shape}, got {b.shape}")
    if where is not None:
        where = jnp.asarray(where)
        if where.dtype != jnp.bool_ or where.shape != (n,):
            raise ValueError(f"{name}: where must be a boolean mask of shape ({n},), got {where.dtype}{where.shape}")
    if chunk_size is None:
        rows = _default_rows(n, v)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"{name}: chunk_size must be a positive int (rows of x per chunk), got {chunk_size!r}")
    else:
        rows = int(chunk_size)
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    alpha = static_number(name, "label_smoothing", label_smoothing, low=0.0, high=1.0)
    lam = static_number(name, "z_loss", z_loss, low=0.0)
    cap = None if logit_softcap is None else static_number(name, "logit_softcap", logit_softcap, low=0.0,
                                                           strict_low=True)
    return x, W, labels, b, where, _Options(rows, alpha, lam, cap, _blocks(x.shape[1], v))


def linear_softmax_cross_entropy(x: ArrayLike, W: ArrayLike, labels: ArrayLike, b: ArrayLike | None = None, *,
                                 where: ArrayLike | None = None, chunk_size: int | None = None,
                                 reduction: str = "none", label_smoothing: float = 0.0, z_loss: float = 0.0,
                                 logit_softcap: float | None = None) -> Array:
    r"""Softmax cross-entropy of the logits x W + b and integer labels, without the N×V logits.

    For x (N, D), W (D, V), b (V,) or None and labels (N,) int, with z = c·tanh((xW + b)/c) (soft-capped
    when ``logit_softcap`` c is given, else z = xW + b), targets t = (1 − α)·onehot(label) + α/V
    (``label_smoothing`` α, as ``optax.smooth_labels``) and ``z_loss`` λ, per row:

    .. math:: \ell = \mathrm{lse}(z) - \langle t, z\rangle + λ\,\mathrm{lse}(z)^2,
              \bar z = \bar\ell ∘ (\mathrm{softmax}(z)(1 + 2λ\,\mathrm{lse}(z)) - t) ∘ (1 - (z/c)^2),
              \bar x = \bar z W^T,   \bar W = x^T \bar z,   \bar b = \textstyle\sum_n \bar z

    ``reduction``: ``"none"`` gives the (N,) losses (as ``optax.softmax_cross_entropy_with_integer_labels``
    of the logits); ``"mean"`` their mean over the rows ``where`` keeps (NaN if it keeps none, as
    ``jnp.mean``); ``"sum"`` their sum. ``where`` (N,) bool masks rows out (padding tokens): their loss
    and gradients are zero. A label outside [0, V) gives a NaN loss (and, as optax's, a gradient
    without its one-hot term).

    Chunks of ``chunk_size`` rows (default: at most 512 rows and 15M logits, 480 rows at V = 32768,
    spread evenly over N) each see the whole vocabulary; any N and V. With "none" the forward keeps x, W, b, the labels and one
    logsumexp per row and the backward recomputes each chunk's logits (4 matrix products in all);
    with "mean"/"sum" the forward forms x̄ and W̄ as it goes and the backward scales them by ȳ
    (3 products, the logits computed once). W and b may be sharded over V: see the module docstring.
    """
    x, W, labels, b, where, opt = _setup(x, W, labels, b, where, chunk_size, reduction, label_smoothing,
                                         z_loss, logit_softcap)
    if reduction == "none":
        return _xent_rows(x, W, labels, b, where, opt)
    return _xent_reduced(x, W, labels, b, where, opt, reduction == "mean")
