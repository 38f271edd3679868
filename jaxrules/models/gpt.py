r"""A GPT-style decoder-only language model, written once over a namespace of operations.

The same model, from the same parameters, is built two ways:

* ``operations("jaxrules")``: every differentiable step a jaxrules rule: ``embedding``, ``rope``,
  ``rms_norm``/``layer_norm``, ``dense``, ``dot_product_attention(is_causal=True)``, ``swiglu``,
  ``dropout``, ``add`` and ``linear_softmax_cross_entropy``;
* ``operations("plain")``: what one writes without jaxrules, differentiated by JAX: ``jnp.take``,
  the rope, norm and gated-MLP formulas, ``x @ W``, ``jax.nn.dot_product_attention(implementation="xla")``
  and ``optax.softmax_cross_entropy_with_integer_labels`` of the full logits.

``examples/train_lm.py`` trains the first; ``python -m jaxrules.bench --only transformer`` compares
the two (it lives in the package, not under ``examples/``, because the bench is part of the installed
package and imports it).

Pre-norm blocks, rotary positions, no biases::

    h = embedding(E, ids)
    for each layer:  h = h + dropout(attention(norm(h)))        # causal, rope on q and k
                     h = h + dropout(down(swiglu(up(norm(h)))))
    loss = linear_softmax_cross_entropy(norm(h), W_head, next ids)

``GPT.recompute`` chooses what the jaxrules model keeps for the backward (the plain model ignores
it: it is JAX autodiff as written):

* ``"none"``: what the rules keep;
* ``"mlp"``: the gated MLP keeps only its input and is run again in the backward;
* ``"layer"``: each whole layer keeps only its input and is run again in the backward.

Under XLA's CPU scheduler a recomputation written plainly (or with ``jax.checkpoint``, or behind
``lax.optimization_barrier``, which XLA CPU turns into control edges before it merges common
subexpressions) is merged back into the forward, where its buffers stay alive. Here the
recomputation's input is made to depend on the output's cotangent (``_after``), so it cannot start
before that cotangent has arrived: it really runs in the backward, one layer at a time.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict[str, Any]

__all__ = ["GPT", "init", "operations", "hidden", "loss", "logits", "weight_decay_mask"]


@dataclass(frozen=True)
class GPT:
    """The model's shape and its options (hashable: it is a static argument under jit)."""
    vocab: int = 256
    layers: int = 4
    width: int = 256
    heads: int = 4
    mlp: int = 0                 # hidden width of the gated MLP; 0: 8/3 of width, rounded up to 64
    norm: str = "rms"            # rms | layer
    dropout: float = 0.0
    rope_base: float = 10000.0
    recompute: str = "none"      # none | mlp | layer (jaxrules model only; see the module docstring)

    def __post_init__(self):
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width {self.width} must be a multiple of heads {self.heads} with an even head "
                             f"width (rope rotates pairs), got head width {self.width / self.heads:g}")
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"norm must be 'rms' or 'layer', got {self.norm!r}")
        if self.recompute not in ("none", "mlp", "layer"):
            raise ValueError(f"recompute must be 'none', 'mlp' or 'layer', got {self.recompute!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def hidden(self) -> int:
        return self.mlp or 64 * math.ceil(8 * self.width / 3 / 64)


# --- the two namespaces ----------------------------------------------------------------------

def operations(which: str = "jaxrules") -> types.SimpleNamespace:
    """The operations the model is written with: jaxrules rules, or plain JAX autodiff of jax.nn/optax."""
    if which == "jaxrules":
        import jaxrules as jr
        return types.SimpleNamespace(
            name="jaxrules", embedding=jr.embedding, rope=jr.rope, rms_norm=jr.rms_norm, layer_norm=jr.layer_norm,
            dense=jr.dense, dot_product_attention=jr.dot_product_attention, swiglu=jr.swiglu,
            dropout=jr.dropout, add=jr.add, linear_softmax_cross_entropy=jr.linear_softmax_cross_entropy)
    if which == "plain":
        return types.SimpleNamespace(
            name="plain", embedding=_plain_embedding, rope=_plain_rope, rms_norm=_plain_rms_norm,
            layer_norm=_plain_layer_norm, dense=_plain_dense, dot_product_attention=_plain_attention,
            swiglu=_plain_swiglu, dropout=_plain_dropout, add=jnp.add,
            linear_softmax_cross_entropy=_plain_linear_softmax_cross_entropy)
    raise ValueError(f"operations: 'jaxrules' or 'plain', got {which!r}")


def _plain_embedding(table, ids):
    return jnp.take(table, ids, axis=0)


def _plain_rope(x, positions=None, *, base=10000.0):
    """Rotary positions, half-split: (x₁, x₂) ↦ (x₁ cos θ − x₂ sin θ, x₂ cos θ + x₁ sin θ), θ = p·base^(−2i/d)."""
    t, d = x.shape[-3], x.shape[-1]
    p = jnp.arange(t) if positions is None else positions
    freq = base ** (-2 * jnp.arange(d // 2, dtype=jnp.float32) / d)
    angle = p[..., :, None].astype(jnp.float32) * freq
    cos, sin = (f(angle)[..., None, :].astype(x.dtype) for f in (jnp.cos, jnp.sin))
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _plain_rms_norm(x, scale=None, *, axis=-1, epsilon=1e-6):
    y = x / jnp.sqrt(jnp.mean(x * x, axis=axis, keepdims=True) + epsilon)
    return y if scale is None else y * scale


def _plain_layer_norm(x, scale=None, bias=None, *, axis=-1, epsilon=1e-6):
    mean = jnp.mean(x, axis=axis, keepdims=True)
    y = (x - mean) / jnp.sqrt(jnp.var(x, axis=axis, keepdims=True) + epsilon)
    y = y if scale is None else y * scale
    return y if bias is None else y + bias


def _plain_dense(x, W, b=None):
    return x @ W if b is None else x @ W + b


def _plain_attention(q, k, v, bias=None, mask=None, *, scale=None, is_causal=False):
    return jax.nn.dot_product_attention(q, k, v, bias, mask, scale=scale, is_causal=is_causal,
                                        implementation="xla")


def _plain_swiglu(a, b):
    return jax.nn.silu(a) * b


def _plain_dropout(x, key, rate, *, training=True):
    if not training or rate == 0:
        return x
    keep = jax.random.bernoulli(key, 1 - rate, x.shape)
    return jnp.where(keep, x / (1 - rate), 0)


def _plain_linear_softmax_cross_entropy(x, W, labels, b=None, *, where=None, chunk_size=None, reduction="none"):
    import optax
    loss = optax.softmax_cross_entropy_with_integer_labels(_plain_dense(x, W, b), labels)
    if where is not None:
        loss = jnp.where(where, loss, 0)
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / (loss.shape[0] if where is None else jnp.sum(where))
    return loss


# --- parameters ------------------------------------------------------------------------------

def init(cfg: GPT, key: Array, dtype: Any = jnp.float32) -> Params:
    """Parameters: N(0, 1/fan_in) matrices, the residual outputs further scaled by 1/√(2·layers); unit norms."""
    d, f, v = cfg.width, cfg.hidden, cfg.vocab
    keys = iter(jax.random.split(key, 2 + 4 * cfg.layers))
    out_scale = 1 / math.sqrt(2 * max(cfg.layers, 1))

    def normal(shape, fan_in, scale=1.0):
        return (jax.random.normal(next(keys), shape, jnp.float32) * (scale / math.sqrt(fan_in))).astype(dtype)

    def norm():
        p = {"scale": jnp.ones(d, dtype)}
        if cfg.norm == "layer":
            p["bias"] = jnp.zeros(d, dtype)
        return p

    layers = [{"norm1": norm(), "qkv": normal((d, 3 * d), d), "out": normal((d, d), d, out_scale),
               "norm2": norm(), "up": normal((d, 2 * f), d), "down": normal((f, d), f, out_scale)}
              for _ in range(cfg.layers)]
    return {"embed": normal((v, d), 1), "layers": layers, "norm": norm(), "head": normal((d, v), d)}


def weight_decay_mask(params: Params) -> Any:
    """True for the matrices (decayed by AdamW), False for the norms' scales and biases."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


# --- the model -------------------------------------------------------------------------------

def _norm(p: Params, x: Array, cfg: GPT, ops) -> Array:
    if cfg.norm == "rms":
        return ops.rms_norm(x, p["scale"])
    return ops.layer_norm(x, p["scale"], p["bias"])


def _attention(p: Params, x: Array, cfg: GPT, ops) -> Array:
    b, t, d = x.shape
    qkv = ops.dense(_norm(p["norm1"], x, cfg, ops), p["qkv"]).reshape(b, t, 3, cfg.heads, d // cfg.heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q, k = ops.rope(q, base=cfg.rope_base), ops.rope(k, base=cfg.rope_base)
    o = ops.dot_product_attention(q, k, v, is_causal=True)
    return ops.dense(o.reshape(b, t, d), p["out"])


def _mlp(p: Params, x: Array, cfg: GPT, ops) -> Array:
    f = cfg.hidden
    u = ops.dense(_norm(p["norm2"], x, cfg, ops), p["up"])
    return ops.dense(ops.swiglu(u[..., :f], u[..., f:]), p["down"])


def _dropped(y: Array, key: Array | None, cfg: GPT, ops) -> Array:
    return y if key is None else ops.dropout(y, key, cfg.dropout)


def _layer(p: Params, x: Array, key: Array | None, cfg: GPT, ops) -> Array:
    ka, km = (None, None) if key is None else tuple(jax.random.split(key))
    x = ops.add(x, _dropped(_attention(p, x, cfg, ops), ka, cfg, ops))
    if cfg.recompute == "mlp" and ops.name == "jaxrules":
        y = _recomputed(lambda p, x, _: _mlp(p, x, cfg, ops))(p, x, None)
    else:
        y = _mlp(p, x, cfg, ops)
    return ops.add(x, _dropped(y, km, cfg, ops))


def _after(tree: Any, y_bar: Array) -> Any:
    """tree, exactly, but computed from ȳ: each leaf times (0 · ȳ₀ + 1), ȳ₀ one finite element of ȳ (or 0).

    XLA cannot see that the factor is 1, so whatever is recomputed from the result waits for ȳ and
    is not merged with the forward's computation of the same values (the parameters too: a norm's
    scale broadcast to the activations' shape would otherwise be made once and kept).
    """
    v = y_bar.reshape(-1)[:1].sum()
    one = jnp.where(jnp.isfinite(v), v, 0) * 0 + 1
    return jax.tree_util.tree_map(lambda a: a * one.astype(a.dtype), tree)


def _recomputed(f: Callable) -> Callable:
    r"""f(p, x, key), keeping only its arguments for the backward, which runs f again once ȳ has arrived.

    .. math:: y = f(p, x),        (\bar p, \bar x) = \mathrm{vjp}(f, p, x)(\bar y)  \text{ with } f \text{ run again}

    The key (dropout) is not differentiated: the rerun draws the same masks.
    """
    @jax.custom_vjp
    def recomputed(p, x, key):
        return f(p, x, key)

    def recomputed_fwd(p, x, key):
        return f(p, x, key), (p, x, key)

    def recomputed_bwd(res, y_bar):
        p, x, key = res
        p_bar, x_bar = jax.vjp(lambda p, x: f(p, x, key), *_after((p, x), y_bar))[1](y_bar)
        return p_bar, x_bar, None

    recomputed.defvjp(recomputed_fwd, recomputed_bwd)
    return recomputed


def hidden(params: Params, ids: Array, cfg: GPT, ops=None, *, key: Array | None = None) -> Array:
    """The final normalised hidden states (B, T, width) for byte ids (B, T); dropout when key is given."""
    ops = ops or operations()
    h = ops.embedding(params["embed"], ids)
    use_dropout = key is not None and cfg.dropout > 0
    keys = list(jax.random.split(key, cfg.layers)) if use_dropout else [None] * cfg.layers

    def layer(p, x, k):
        return _layer(p, x, k, cfg, ops)
    if cfg.recompute == "layer" and ops.name == "jaxrules":
        layer = _recomputed(layer)
    for p, k in zip(params["layers"], keys):
        h = layer(p, h, k)
    return _norm(params["norm"], h, cfg, ops)


def loss(params: Params, ids: Array, targets: Array, cfg: GPT, ops=None, *, key: Array | None = None,
         reduction: str = "mean") -> Array:
    """Cross-entropy (nats per byte) of predicting ``targets`` (B, T) from ``ids`` (B, T), never forming the logits."""
    ops = ops or operations()
    h = hidden(params, ids, cfg, ops, key=key)
    return ops.linear_softmax_cross_entropy(h.reshape(-1, cfg.width), params["head"], targets.reshape(-1),
                                            reduction=reduction)


def logits(params: Params, ids: Array, cfg: GPT, ops=None) -> Array:
    """Next-byte logits (B, T, vocab)."""
    ops = ops or operations()
    return ops.dense(hidden(params, ids, cfg, ops), params["head"])
