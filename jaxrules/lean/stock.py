"""Small GPT language models built from each framework's stock modules, for the bench and the tests.

Nothing here knows about jaxrules: each builder returns the model (or its parameters) and a loss
written the way that framework's users write it (optax's integer-label cross-entropy, mean over
tokens), which ``jr.lean`` then takes as it is.

* ``nnx``: ``nnx.Embed``, ``nnx.LayerNorm``, ``nnx.MultiHeadAttention`` with ``nnx.make_causal_mask``,
  ``nnx.Linear``, ``nnx.gelu``; ``scan=True`` stacks the blocks with ``nnx.vmap`` and runs them under
  ``nnx.scan``; ``dropout`` adds ``nnx.Dropout`` after each block and on the attention weights.
* ``linen``: ``nn.Embed``, ``nn.LayerNorm``, ``nn.MultiHeadDotProductAttention`` with
  ``nn.make_causal_mask``, ``nn.Dense``, ``nn.gelu``.
* ``equinox``: ``eqx.nn.Embedding``, ``eqx.nn.LayerNorm``, ``eqx.nn.MultiheadAttention`` with a
  ``jnp.tril`` mask, ``eqx.nn.MLP`` (gelu as a pytree leaf), ``eqx.nn.Linear``; one sequence per
  call, ``jax.vmap`` over the batch.
* ``jax``: a dict of arrays; ``jax.nn.standardize`` layer norms, ``jax.nn.dot_product_attention``
  with ``is_causal=True``, ``jax.nn.gelu``.

``step(kind, loss)`` is the framework's own ``jit(value_and_grad(loss))`` (``nnx.jit``,
``eqx.filter_jit``, ``jax.jit``); ``lowered(kind, loss, model, *batch)`` the same lowered by
``jax.jit`` on its arrays, for XLA's memory analysis.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

FRAMEWORKS = ("nnx", "linen", "equinox", "jax")


def batch(B: int, T: int, V: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """Random tokens and next-token targets, int32."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    return (jax.random.randint(k1, (B, T), 0, V, jnp.int32), jax.random.randint(k2, (B, T), 0, V, jnp.int32))


def build(kind: str, V: int, T: int, D: int, heads: int, layers: int, *, scan: bool = False,
          dropout: float = 0.0, seed: int = 0) -> tuple[Any, Callable]:
    """(model, loss(model, tokens, targets)) in float32; the model is parameters for linen and jax."""
    if kind == "nnx":
        return _nnx(V, T, D, heads, layers, scan, dropout, seed)
    if kind == "linen":
        return _linen(V, T, D, heads, layers, seed)
    if kind == "equinox":
        return _equinox(V, T, D, heads, layers, seed)
    if kind == "jax":
        return _jax(V, T, D, heads, layers, seed)
    raise ValueError(f"unknown framework {kind!r}; choose from {FRAMEWORKS}")


def _xent(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def _nnx(V, T, D, heads, layers, scan, dropout, seed):
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.ln1 = nnx.LayerNorm(D, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=D, decode=False, dropout_rate=dropout,
                                               deterministic=not dropout, rngs=rngs)
            self.ln2 = nnx.LayerNorm(D, rngs=rngs)
            self.fc1 = nnx.Linear(D, 4 * D, rngs=rngs)
            self.fc2 = nnx.Linear(4 * D, D, rngs=rngs)
            self.drop = nnx.Dropout(dropout, rngs=rngs)

        def __call__(self, x, mask):
            x = x + self.attn(self.ln1(x), mask=mask)
            return x + self.drop(self.fc2(nnx.gelu(self.fc1(self.ln2(x)))))

    class GPT(nnx.Module):
        def __init__(self, rngs):
            self.tok = nnx.Embed(V, D, rngs=rngs)
            self.pos = nnx.Embed(T, D, rngs=rngs)
            if scan:
                @nnx.split_rngs(splits=layers)
                @nnx.vmap(in_axes=(0,), out_axes=0)
                def make(rngs):
                    return Block(rngs)
                self.blocks = make(rngs)
            else:
                self.blocks = nnx.List([Block(rngs) for _ in range(layers)])
            self.ln = nnx.LayerNorm(D, rngs=rngs)
            self.head = nnx.Linear(D, V, rngs=rngs)

        def __call__(self, tokens):
            x = self.tok(tokens) + self.pos(jnp.arange(tokens.shape[1]))
            mask = nnx.make_causal_mask(tokens)
            if scan:
                @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
                def forward(x, block):
                    return block(x, mask)
                x = forward(x, self.blocks)
            else:
                for block in self.blocks:
                    x = block(x, mask)
            return self.head(self.ln(x))

    def loss(model, tokens, targets):
        return _xent(model(tokens), targets)
    return GPT(nnx.Rngs(seed, dropout=seed + 1)), loss


def _linen(V, T, D, heads, layers, seed):
    import flax.linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, mask):
            x = x + nn.MultiHeadDotProductAttention(num_heads=heads)(nn.LayerNorm()(x), mask=mask)
            return x + nn.Dense(D)(nn.gelu(nn.Dense(4 * D)(nn.LayerNorm()(x))))

    class GPT(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(V, D)(tokens) + nn.Embed(T, D)(jnp.arange(tokens.shape[1]))
            mask = nn.make_causal_mask(tokens)
            for _ in range(layers):
                x = Block()(x, mask)
            return nn.Dense(V)(nn.LayerNorm()(x))

    model = GPT()
    params = model.init(jax.random.key(seed), jnp.zeros((1, T), jnp.int32))

    def loss(params, tokens, targets):
        return _xent(model.apply(params, tokens), targets)
    return params, loss


def _equinox(V, T, D, heads, layers, seed):
    import equinox as eqx

    class Block(eqx.Module):
        ln1: eqx.nn.LayerNorm
        attn: eqx.nn.MultiheadAttention
        ln2: eqx.nn.LayerNorm
        mlp: eqx.nn.MLP

        def __init__(self, key):
            k1, k2 = jax.random.split(key)
            self.ln1 = eqx.nn.LayerNorm(D)
            self.attn = eqx.nn.MultiheadAttention(heads, D, key=k1)
            self.ln2 = eqx.nn.LayerNorm(D)
            self.mlp = eqx.nn.MLP(D, D, 4 * D, 1, activation=jax.nn.gelu, key=k2)

        def __call__(self, x, mask):
            h = jax.vmap(self.ln1)(x)
            x = x + self.attn(h, h, h, mask=mask)
            return x + jax.vmap(self.mlp)(jax.vmap(self.ln2)(x))

    class GPT(eqx.Module):
        tok: eqx.nn.Embedding
        pos: eqx.nn.Embedding
        blocks: list
        ln: eqx.nn.LayerNorm
        head: eqx.nn.Linear

        def __init__(self, key):
            keys = jax.random.split(key, layers + 3)
            self.tok = eqx.nn.Embedding(V, D, key=keys[0])
            self.pos = eqx.nn.Embedding(T, D, key=keys[1])
            self.blocks = [Block(k) for k in keys[3:]]
            self.ln = eqx.nn.LayerNorm(D)
            self.head = eqx.nn.Linear(D, V, key=keys[2])

        def __call__(self, tokens):  # one sequence
            t = tokens.shape[0]
            x = jax.vmap(self.tok)(tokens) + jax.vmap(self.pos)(jnp.arange(t))
            mask = jnp.tril(jnp.ones((t, t), bool))
            for block in self.blocks:
                x = block(x, mask)
            return jax.vmap(self.head)(jax.vmap(self.ln)(x))

    def loss(model, tokens, targets):
        return _xent(jax.vmap(model)(tokens), targets)
    return GPT(jax.random.key(seed)), loss


def _jax(V, T, D, heads, layers, seed):
    keys = iter(jax.random.split(jax.random.key(seed), 8 * layers + 8))

    def normal(*shape):
        return jax.random.normal(next(keys), shape, jnp.float32) * 0.02

    def norm():
        return jnp.ones(D, jnp.float32), jnp.zeros(D, jnp.float32)

    params = {"tok": normal(V, D), "pos": normal(T, D), "ln": norm(), "head": normal(D, V),
              "head_b": jnp.zeros(V, jnp.float32),
              "blocks": [{"ln1": norm(), "ln2": norm(), "qkv": normal(D, 3 * D), "out": normal(D, D),
                          "fc1": normal(D, 4 * D), "b1": jnp.zeros(4 * D, jnp.float32), "fc2": normal(4 * D, D),
                          "b2": jnp.zeros(D, jnp.float32)} for _ in range(layers)]}

    def layer_norm(x, p):
        return jax.nn.standardize(x, axis=-1, epsilon=1e-5) * p[0] + p[1]

    def loss(params, tokens, targets):
        B, t = tokens.shape
        x = params["tok"][tokens] + params["pos"][:t]
        for p in params["blocks"]:
            q, k, v = jnp.split(layer_norm(x, p["ln1"]) @ p["qkv"], 3, axis=-1)
            q, k, v = (a.reshape(B, t, heads, D // heads) for a in (q, k, v))
            x = x + jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(B, t, D) @ p["out"]
            x = x + jax.nn.gelu(layer_norm(x, p["ln2"]) @ p["fc1"] + p["b1"]) @ p["fc2"] + p["b2"]
        logits = layer_norm(x, params["ln"]) @ params["head"] + params["head_b"]
        return _xent(logits, targets)
    return params, loss


# --- compiling a training step the framework's way ----------------------------------------------

def step(kind: str, loss: Callable) -> Callable:
    """The framework's jit(value_and_grad(loss)): step(model, tokens, targets) -> (loss, grads)."""
    if kind == "nnx":
        from flax import nnx
        return nnx.jit(nnx.value_and_grad(loss))
    if kind == "equinox":
        import equinox as eqx
        return eqx.filter_jit(eqx.filter_value_and_grad(loss))
    return jax.jit(jax.value_and_grad(loss))


def lowered(kind: str, loss: Callable, model: Any, *batch: Any) -> tuple[Any, tuple]:
    """jax.jit(value_and_grad) of loss over the model's arrays, lowered; and the arguments to call it with."""
    if kind == "nnx":
        from flax import nnx
        graphdef, state = nnx.split(model)

        def pure(state, *batch):
            return nnx.value_and_grad(loss)(nnx.merge(graphdef, state), *batch)
        return jax.jit(pure).lower(state, *batch), (state, *batch)
    if kind == "equinox":
        import equinox as eqx
        arrays, static = eqx.partition(model, eqx.is_array)

        def pure(arrays, *batch):
            return eqx.filter_value_and_grad(loss)(eqx.combine(arrays, static), *batch)
        return jax.jit(pure).lower(arrays, *batch), (arrays, *batch)
    return jax.jit(jax.value_and_grad(loss)).lower(model, *batch), (model, *batch)
