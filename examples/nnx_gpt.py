"""A GPT language model written with Flax NNX's stock modules, and nothing else.

This file imports nothing from jaxrules: it is the model a Flax user already has (token and position
embeddings, pre-norm blocks of ``nnx.MultiHeadAttention`` with a causal mask and a gelu MLP, a
final layer norm and a linear head, trained with optax's integer-label cross-entropy).
examples/lean_nnx.py trains it as it is and through ``jr.lean``.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from flax import nnx


class Block(nnx.Module):
    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=dim, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        self.up = nnx.Linear(dim, 4 * dim, rngs=rngs)
        self.down = nnx.Linear(4 * dim, dim, rngs=rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.down(nnx.gelu(self.up(self.ln2(x))))


class GPT(nnx.Module):
    def __init__(self, vocab: int, length: int, dim: int, heads: int, layers: int, *, rngs: nnx.Rngs):
        self.tokens = nnx.Embed(vocab, dim, rngs=rngs)
        self.positions = nnx.Embed(length, dim, rngs=rngs)
        self.blocks = nnx.List([Block(dim, heads, rngs=rngs) for _ in range(layers)])
        self.ln = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, tokens):
        x = self.tokens(tokens) + self.positions(jnp.arange(tokens.shape[1]))
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln(x))


def loss_fn(model: GPT, tokens, targets):
    """Mean next-token cross-entropy."""
    return optax.softmax_cross_entropy_with_integer_labels(model(tokens), targets).mean()
