"""Train a stock Flax NNX GPT on bytes of text, as it is and through ``jr.lean``, side by side.

The model (examples/nnx_gpt.py) imports nothing from jaxrules. Here it is trained twice from the same
initial weights on the same batches of the LM example's byte-level corpus (examples/train_lm.py:
the Python standard library's source, or --data): with ``nnx.value_and_grad(loss_fn)`` and with
``nnx.value_and_grad(jr.lean(loss_fn))``. Printed: what lean replaced, XLA's temp memory of the
training step, milliseconds per step, and the losses::

    python examples/lean_nnx.py                       # 2 layers, 4 × 512 bytes, 300 steps
    python examples/lean_nnx.py --steps 20 --seq 128  # a quick look
    python examples/lean_nnx.py --data notes.txt      # any text file, or a directory of them
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nnx_gpt  # noqa: E402  (the stock model)
import train_lm  # noqa: E402  (its corpus)

import jaxrules as jr  # noqa: E402


def batches(data: np.ndarray, batch: int, seq: int, seed: int):
    """Random windows of seq + 1 bytes: (tokens, next tokens), int32."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, len(data) - seq - 1, batch)
        window = np.stack([data[s:s + seq + 1] for s in starts]).astype(np.int32)
        yield jnp.asarray(window[:, :-1]), jnp.asarray(window[:, 1:])


def make(args):
    model = nnx_gpt.GPT(256, args.seq, args.dim, args.heads, args.layers, rngs=nnx.Rngs(args.seed))
    return model, nnx.Optimizer(model, optax.adamw(args.lr), wrt=nnx.Param)


def train(loss_fn, args, data) -> dict:
    """Train from args.seed; returns losses, ms per step (after the first) and the step's temp memory."""
    model, opt = make(args)

    def step(model, opt, tokens, targets):
        loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, targets)
        opt.update(model, grads)
        return loss

    graphdef, state = nnx.split((model, opt))

    def pure(state, tokens, targets):  # the step on the model's arrays (NNX's functional form): one
        m, o = nnx.merge(graphdef, state)  # compilation gives both XLA's memory analysis and the runs
        return step(m, o, tokens, targets), nnx.state((m, o))
    it = batches(data, args.batch, args.seq, args.seed)
    tokens, targets = next(it)
    compiled = jax.jit(pure, donate_argnums=0).lower(state, tokens, targets).compile()
    losses, times = [], []
    for _ in range(args.steps):
        t = time.perf_counter()
        loss, state = compiled(state, tokens, targets)
        losses.append(float(loss))  # float(): waits for the step
        times.append(time.perf_counter() - t)
        tokens, targets = next(it)
    return {"losses": losses, "ms": 1e3 * float(np.median(times[1:] or times)),
            "temp": compiled.memory_analysis().temp_size_in_bytes}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="a text file or a directory of them (default: the standard library)")
    args = p.parse_args(argv)
    data = train_lm.load_corpus(args.data).train
    lean_loss = jr.lean(nnx_gpt.loss_fn)
    model, _ = make(args)
    tokens, targets = next(batches(data, args.batch, args.seq, args.seed))
    print(f"{len(data):,} bytes of text; jr.lean replaces: {lean_loss.replacements(model, tokens, targets)}")
    runs = {"stock": train(nnx_gpt.loss_fn, args, data), "jr.lean": train(lean_loss, args, data)}
    print(f"\n| {'':8} | temp memory | ms / step | first loss | last loss |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in runs.items():
        print(f"| {name:8} | {r['temp'] / 2 ** 20:8.1f} MB | {r['ms']:9.1f} | {r['losses'][0]:10.4f} | "
              f"{r['losses'][-1]:9.4f} |")
    s, le = runs["stock"], runs["jr.lean"]
    print(f"\njr.lean / stock: memory {le['temp'] / s['temp']:.2f}x, step time {le['ms'] / s['ms']:.2f}x")
    return runs


if __name__ == "__main__":
    main()
