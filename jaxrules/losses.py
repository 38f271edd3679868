r"""Divergences with optax's names, argument order and per-example results (seeds 003, 004).

No hidden reduction: like ``optax.losses``, every loss returns one value per example (per element
for the elementwise losses), and the caller takes the mean. The cross-entropies are fused rules:
their pullback goes straight from the loss to the logits,

.. math:: \bar z = \bar\ell ∘ (\mathrm{softmax}(z) - d)   \quad\text{or}\quad   \bar z = \bar\ell ∘ (σ(z) - d),

exact and finite for any finite logits, where composing log_softmax and a product would form
0·∞ at saturated logits.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.typing import ArrayLike

from jaxrules import _checks
from jaxrules._broadcast import Static, broadcast_shapes, unbroadcast
from jaxrules._checks import floating
from jaxrules._rule import rule
from jaxrules.softmax import _setup, _shifted, _weights

Array = jax.Array

__all__ = [
    "squared_error", "l2_loss", "kl_divergence", "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels", "sigmoid_binary_cross_entropy",
]


def _same_shape(rule: str, a_name: str, a: Array, b_name: str, b: Array) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{rule}: {a_name} has shape {a.shape} but {b_name} has shape {b.shape}; they must match")


def _targets(rule: str, predictions: Any, targets: Any):
    p = floating(rule, "predictions", predictions)
    if targets is None:
        return p, None
    t = floating(rule, "targets", targets)
    _same_shape(rule, "predictions", p, "targets", t)
    return p, t


# --- squared_error ---------------------------------------------------------------------------

@rule(like=optax.squared_error, floats=("predictions", "targets"))
def squared_error(predictions: ArrayLike, targets: ArrayLike | None = None) -> Array:
    r"""Elementwise squared error (seed 004: E = (f − y)², ∂E/∂f = 2(f − y)).

    .. math:: \ell = (f - t)^2,        \bar f = 2(f - t) ∘ \bar\ell,        \bar t = -\bar f

    ``targets`` None means t = 0. Shapes must match (as in optax). Keeps the inputs.
    """
    p, t = _targets("squared_error", predictions, targets)
    e = p if t is None else p - t
    return e * e


def _squared_error_fwd(predictions, targets):
    return squared_error.call(predictions, targets), (predictions, targets)


def _squared_error_bwd(res, g):
    p, t = res
    f_bar = 2 * (p if t is None else p - t) * g
    return f_bar, None if t is None else -f_bar


squared_error.defvjp(_squared_error_fwd, _squared_error_bwd)


# --- l2_loss ---------------------------------------------------------------------------------

@rule(like=optax.l2_loss, floats=("predictions", "targets"))
def l2_loss(predictions: ArrayLike, targets: ArrayLike | None = None) -> Array:
    r"""Half the squared error, as ``optax.l2_loss``.

    .. math:: \ell = \tfrac12 (f - t)^2,        \bar f = (f - t) ∘ \bar\ell,        \bar t = -\bar f
    """
    p, t = _targets("l2_loss", predictions, targets)
    e = p if t is None else p - t
    return 0.5 * (e * e)


def _l2_loss_fwd(predictions, targets):
    return l2_loss.call(predictions, targets), (predictions, targets)


def _l2_loss_bwd(res, g):
    p, t = res
    f_bar = (p if t is None else p - t) * g
    return f_bar, None if t is None else -f_bar


l2_loss.defvjp(_l2_loss_fwd, _l2_loss_bwd)


# --- kl_divergence ---------------------------------------------------------------------------

def _kl_setup(log_predictions, targets, axis, where):
    lp = floating("kl_divergence", "log_predictions", log_predictions)
    t = floating("kl_divergence", "targets", targets)
    _same_shape("kl_divergence", "log_predictions", lp, "targets", t)
    axes = _checks.axes("kl_divergence", axis, lp.ndim)
    return lp, t, axes, _checks.mask("kl_divergence", where, lp.shape, missing=axes)


@rule(like=optax.kl_divergence, settings=("axis",), floats=("log_predictions", "targets"))
def kl_divergence(log_predictions: ArrayLike, targets: ArrayLike, axis: int | tuple[int, ...] | None = -1,
                  where: ArrayLike | None = None) -> Array:
    r"""KL(targets ‖ predictions) per example, from log-predictions (seed 003), as ``optax.kl_divergence``.

    .. math:: \ell = \textstyle\sum_i t_i (\log t_i - \log p_i),        \overline{\log p} = -t ∘ \bar\ell,
              \bar t = (\log t - \log p + 1) ∘ \bar\ell

    0·log 0 = 0: where t_i = 0 the term is 0, and its t-derivative (which is −∞ as t → 0⁺) is
    taken as 0, i.e. zero targets are treated as constants. Gradients stay finite where optax's
    are NaN. Keeps the inputs.
    """
    lp, t, axes, mask = _kl_setup(log_predictions, targets, axis, where)
    terms = t * (jnp.where(t == 0, 0, jnp.log(jnp.where(t == 0, 1, t))) - lp)
    return jnp.sum(terms, axis=axes, where=mask)


def _kl_divergence_fwd(log_predictions, targets, axis, where):
    lp, t, axes, mask = _kl_setup(log_predictions, targets, axis, where)
    return kl_divergence.call(log_predictions, targets, axis, where), (lp, t, mask)


def _kl_divergence_bwd(axis, res, g):
    lp, t, mask = res
    axes = _checks.axes("kl_divergence", axis, lp.ndim)
    g = jnp.expand_dims(g, axes)
    if mask is not None:
        g = jnp.where(mask, g, 0)
    positive = t > 0
    log_t = jnp.log(jnp.where(positive, t, 1))
    t_bar = jnp.where(positive, (log_t - lp + 1) * g, 0)
    return -t * g, t_bar, None


kl_divergence.defvjp(_kl_divergence_fwd, _kl_divergence_bwd)


# --- softmax_cross_entropy -------------------------------------------------------------------

def _ce_setup(logits, labels, axis, where):
    z = floating("softmax_cross_entropy", "logits", logits)
    d = floating("softmax_cross_entropy", "labels", labels)
    _same_shape("softmax_cross_entropy", "logits", z, "labels", d)
    z, axes, _ = _setup("softmax_cross_entropy", z, axis, None)
    return z, axes, _checks.mask("softmax_cross_entropy", where, z.shape, missing=axes), d


def _ce_forward(z, axes, mask, d):
    """(per-example loss, log softmax(z)); 0·log 0 = 0, and masked classes contribute nothing."""
    m, _, s = _shifted(z, axes, mask)
    log_p = z - m - jnp.log(s)
    terms = jnp.where(d == 0, 0, d * log_p)
    if mask is not None:
        terms = jnp.where(mask, terms, 0)
    return -jnp.sum(terms, axis=axes), log_p


@rule(like=optax.softmax_cross_entropy, settings=("axis",), floats=("logits", "labels"))
def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, axis: int | tuple[int, ...] | None = -1,
                          where: ArrayLike | None = None) -> Array:
    r"""Cross-entropy between label distributions and softmax(logits), per example (as optax).

    .. math:: \ell = -\textstyle\sum_i d_i \log \mathrm{softmax}(z)_i,
              \bar z = \bar\ell ∘ (\mathrm{softmax}(z) \textstyle\sum_i d_i - d),        \bar d = -\log\mathrm{softmax}(z) ∘ \bar\ell

    With Σd = 1 (a distribution) z̄ = ℓ̄(softmax(z) − d). Keeps log softmax(z) (one array of the
    logits' size), the labels and the mask, if any. Masked classes (``where`` False) contribute
    nothing and get zero gradients.
    """
    z, axes, mask, d = _ce_setup(logits, labels, axis, where)
    return _ce_forward(z, axes, mask, d)[0]


def _softmax_cross_entropy_fwd(logits, labels, axis, where):
    z, axes, mask, d = _ce_setup(logits, labels, axis, where)
    loss, log_p = _ce_forward(z, axes, mask, d)
    return loss, (log_p, d, mask)


def _softmax_cross_entropy_bwd(axis, res, g):
    log_p, d, mask = res
    axes = _checks.axes("softmax_cross_entropy", axis, log_p.ndim)
    g = jnp.expand_dims(g, axes)
    live = d if mask is None else jnp.where(mask, d, 0)
    p = jnp.exp(log_p) if mask is None else jnp.where(mask, jnp.exp(log_p), 0)
    z_bar = g * (p * jnp.sum(live, axis=axes, keepdims=True) - live)
    d_bar = -log_p * g if mask is None else jnp.where(mask, -log_p * g, 0)
    return z_bar, d_bar, None


softmax_cross_entropy.defvjp(_softmax_cross_entropy_fwd, _softmax_cross_entropy_bwd)


# --- softmax_cross_entropy_with_integer_labels -----------------------------------------------

_INT_CE = "softmax_cross_entropy_with_integer_labels"


def _int_ce_axes(axis: Any, ndim: int) -> tuple[tuple[int, ...] | None, int]:
    """(class axes, ax): for an int axis (None, the axis); for a tuple, the axes in the given order
    (optax's: they are flattened in that order) and the position of the one flattened class axis."""
    if isinstance(axis, (tuple, list)) and len(axis) != 1:
        axes = tuple(_checks.axis(_INT_CE, a, ndim) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"{_INT_CE}: axis={tuple(axis)} repeats an axis")
        if not axes:
            raise ValueError(f"{_INT_CE}: axis=() names no class axis")
        return axes, ndim - len(axes)
    return None, _checks.axis(_INT_CE, axis[0] if isinstance(axis, (tuple, list)) else axis, ndim)


def _classes_last(a: Array, axes: tuple[int, ...]) -> Array:
    """a with its other axes first, in order, then ``axes`` (in the given order) flattened into one."""
    batch = tuple(i for i in range(a.ndim) if i not in axes)
    a = jnp.transpose(a, batch + axes)
    return a.reshape(a.shape[:len(batch)] + (math.prod(a.shape[len(batch):]),))


def _classes_back(a: Array, axes: tuple[int, ...], shape: tuple[int, ...]) -> Array:
    """The inverse of _classes_last, for an array of the original ``shape``."""
    batch = tuple(i for i in range(len(shape)) if i not in axes)
    order = batch + axes
    return jnp.transpose(a.reshape(tuple(shape[i] for i in order)), tuple(order.index(i) for i in range(len(shape))))


def _int_ce_setup(logits, labels, axis, where):
    rule = _INT_CE
    z = floating(rule, "logits", logits)
    if isinstance(labels, (list, tuple)) or labels is None:
        raise TypeError(f"{rule}: labels must be an integer array, got {type(labels).__name__}")
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{rule}: labels must have an integer dtype (class indices), got {labels.dtype}; "
                        f"for one-hot or soft labels use softmax_cross_entropy")
    if z.ndim == 0:
        raise ValueError(f"{rule}: logits must have a class axis, got a scalar")
    axes, ax = _int_ce_axes(axis, z.ndim)
    if axes is None:
        want = z.shape[:ax] + z.shape[ax + 1:]
        if labels.shape != want:
            raise ValueError(f"{rule}: labels must have the logits' shape {z.shape} without the class axis "
                             f"{axis}, i.e. {want}, got {labels.shape}")
        return z, labels, ax, _checks.mask(rule, where, z.shape, missing=(ax,))
    want = tuple(n for i, n in enumerate(z.shape) if i not in axes)
    if labels.shape != want:
        raise ValueError(f"{rule}: labels must have the logits' shape {z.shape} without the class axes "
                         f"{tuple(axis)}, i.e. {want}, got {labels.shape}")
    mask = _checks.mask(rule, where, z.shape, missing=tuple(sorted(axes)))
    return _classes_last(z, axes), labels, ax, None if mask is None else _classes_last(mask, axes)


def _int_ce_forward(z, c, ax, mask):
    """(per-example loss, log s with keepdims), s = Σ e^{z − m}, m the maximum: NaN for labels out of
    range, 0 for fully masked rows.

    The loss is log s − (z_c − m): z_c − m is exact near the top, where lse − z_c, with lse = m + log s
    rounded, is not (by 5e-4 near logits of 1e4)."""
    m, _, s = _shifted(z, (ax,), mask)
    log_s = jnp.log(s)
    picked = jnp.take_along_axis(z, jnp.expand_dims(jnp.clip(c, 0, z.shape[ax] - 1), ax), axis=ax)
    loss = jnp.where((c >= 0) & (c < z.shape[ax]), jnp.squeeze(log_s - (picked - m), ax), jnp.nan)
    if mask is not None:
        loss = jnp.where(jnp.any(mask, axis=ax), loss, 0.0)
    return loss, log_s


@rule(like=optax.softmax_cross_entropy_with_integer_labels, settings=("axis",))
def softmax_cross_entropy_with_integer_labels(logits: ArrayLike, labels: ArrayLike,
                                              axis: int | tuple[int, ...] = -1,
                                              where: ArrayLike | None = None) -> Array:
    r"""Cross-entropy with integer class labels, per example (as optax).

    .. math:: \ell = \log\textstyle\sum_j e^{z_j} - z_{c},        \bar z = \bar\ell ∘ (\mathrm{softmax}(z) - \mathrm{onehot}(c))

    Keeps the logits (the input) and the per-example log Σ e^{z − max z}, never a softmax. Labels get no
    cotangent (JAX's float0 under ``jax.grad``). A label outside [0, classes) gives a NaN loss
    rather than a silently wrong number. Rows with every class masked out give loss 0.

    ``axis`` is an int or, as in optax, a tuple of axes: the classes are then those axes flattened in
    the given order, a label is a flat index into them, and the loss has the other axes.
    The loss is log s − (z_c − m) and the softmax e^{z − m − log s}, with m the maximum and
    s = Σ e^{z − m}: both within an ulp or two where the logits are large and close (lse − z_c and
    e^{z − lse}, with lse rounded, are not: optax's loss is 1e3 ulps off there).
    """
    return _int_ce_forward(*_int_ce_setup(logits, labels, axis, where))[0]


def _int_ce_fwd(logits, labels, axis, where):
    z, c, ax, mask = _int_ce_setup(logits, labels, axis, where)
    loss, log_s = _int_ce_forward(z, c, ax, mask)
    return loss, (logits, c, log_s, mask)


def _int_ce_bwd(axis, res, g):
    logits, c, log_s, mask = res
    axes, ax = _int_ce_axes(axis, logits.ndim)
    z = logits if axes is None else _classes_last(logits, axes)
    p = _weights(z, log_s, (ax,), mask)  # e^(z − m − log s): not e^(z − lse) with lse rounded
    g = jnp.expand_dims(g, ax)
    # softmax(z)·ℓ̄, then −ℓ̄ scattered onto each label: a scatter of one value per row, cheaper in
    # a network than subtracting a dense one-hot (measured in the training-step benchmark)
    z_bar = jnp.moveaxis(g * p, ax, -1)
    flat = z_bar.reshape(-1, z.shape[ax])
    rows = jnp.arange(flat.shape[0])
    flat = flat.at[rows, c.reshape(-1)].add(-jnp.moveaxis(g, ax, -1).reshape(-1), mode="drop")
    z_bar = jnp.moveaxis(flat.reshape(z_bar.shape), -1, ax)
    if mask is not None:
        z_bar = jnp.where(jnp.any(mask, axis=ax, keepdims=True), z_bar, 0)
    if axes is not None:
        z_bar = _classes_back(z_bar, axes, logits.shape)
    return z_bar.astype(logits.dtype), None, None


softmax_cross_entropy_with_integer_labels.defvjp(_int_ce_fwd, _int_ce_bwd)


# --- sigmoid_binary_cross_entropy ------------------------------------------------------------

def _bce_setup(logits, labels):
    rule = "sigmoid_binary_cross_entropy"
    z = floating(rule, "logits", logits)
    if labels is None or isinstance(labels, (list, tuple)):
        raise TypeError(f"{rule}: labels must be an array, got {type(labels).__name__}")
    broadcast_shapes(rule, logits=z.shape, labels=jnp.shape(labels))
    return z, Static((jnp.shape(labels), jnp.result_type(labels)))


def _bce_linear(z, d):
    """(1 − d)·z for z ≥ 0, −d·z below (0, not NaN, where the factor is 0 and z infinite)."""
    w = jnp.where(z >= 0, 1 - d, -d)
    return jnp.where(w == 0, 0, w * z)


@rule(like=optax.sigmoid_binary_cross_entropy)
def sigmoid_binary_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Array:
    r"""Elementwise binary cross-entropy of labels d ∈ [0, 1] and σ(logits), as optax.

    .. math:: \ell = -d \log σ(z) - (1 - d) \log σ(-z) = \mathrm{softplus}(z) - d z,
              \bar z = \bar\ell ∘ (σ(z) - d),        \bar d = -z ∘ \bar\ell

    Written as (1 − d)·z + log(1 + e^{−z}) for z ≥ 0 and −d·z + log(1 + e^{z}) below: sums of
    terms ≥ 0 for labels in [0, 1], so nothing cancels (softplus(z) − d·z, the textbook form, is 0 for
    d = 1 from z = 15, where the loss is 3e-7), and no log of a rounded-to-0 probability. The
    slope σ(z) − d is computed as (1 − d) − σ(−z) for z ≥ 0, exact for d = 1 at any z. At z = ±inf
    the loss is its limit (0 where the label agrees). Keeps the inputs. Integer labels (0/1) get no
    cotangent.
    """
    z, _ = _bce_setup(logits, labels)
    d = jnp.asarray(labels).astype(z.dtype)
    return _bce_linear(z, d) + jnp.log1p(jnp.exp(-jnp.abs(z)))


def _bce_fwd(logits, labels):
    z, meta = _bce_setup(logits, labels)
    return sigmoid_binary_cross_entropy.call(logits, labels), (z, labels, meta)


def _bce_bwd(res, g):
    z, d, meta = res
    shape, dtype = meta.value
    zb, db = jnp.broadcast_arrays(z, jnp.asarray(d).astype(z.dtype))
    small = lax.logistic(-jnp.abs(zb))  # σ(−|z|): σ(z) − d = (1 − d) − σ(−z) for z ≥ 0, σ(z) − d below
    z_bar = unbroadcast(g * jnp.where(zb >= 0, (1 - db) - small, small - db), z.shape)
    d_bar = unbroadcast(-zb * g, shape).astype(dtype) if jnp.issubdtype(dtype, jnp.inexact) else None
    return z_bar, d_bar


sigmoid_binary_cross_entropy.defvjp(_bce_fwd, _bce_bwd)
