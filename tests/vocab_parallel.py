"""linear_softmax_cross_entropy with W and b sharded over the vocabulary on 4 devices (run by
tests/test_cross_entropy.py; alone: ``python tests/vocab_parallel.py``, it sets the device count itself).

For each design (reduction "none", "mean", "sum" with every option), under jax.jit with W and b in a
NamedSharding over V: the compiled program has no all-gather (the per-shard maxima and sums are
combined by all-reduces of one number per row, W is never gathered), W̄ and b̄ come out sharded like
W and b, and the loss and the gradients equal the one-device call.
"""

import os
import re
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import jaxrules as jr  # noqa: E402
from jaxrules import cross_entropy  # noqa: E402


def main() -> int:
    assert jax.device_count() == 4, jax.devices()
    cross_entropy._BLOCK_VALUES = 1024  # W̄'s product in row blocks, as at full size
    mesh = Mesh(np.array(jax.devices()), ("vocab",))
    n, d, v = 40, 16, 256
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, d)), jnp.float32)
    W = jnp.asarray(rng.standard_normal((d, v)) / 4, jnp.float32)
    b = jnp.asarray(rng.standard_normal(v), jnp.float32)
    labels = jnp.asarray(rng.integers(0, v, n), jnp.int32)
    where = jnp.asarray(rng.uniform(size=n) < 0.8)
    Ws = jax.device_put(W, NamedSharding(mesh, P(None, "vocab")))
    bs = jax.device_put(b, NamedSharding(mesh, P("vocab")))
    ok = 0
    for options in ({"reduction": "none"},
                    {"reduction": "mean", "label_smoothing": 0.1, "z_loss": 1e-3, "logit_softcap": 5.0},
                    {"reduction": "sum", "label_smoothing": 0.1, "z_loss": 1e-3, "logit_softcap": 5.0}):
        def loss(x, W, b):
            out = jr.linear_softmax_cross_entropy(x, W, labels, b, where=where, chunk_size=16, **options)
            return out.sum() if options["reduction"] == "none" else out

        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        hlo = step.lower(x, Ws, bs).compile().as_text()
        gathers = [line.strip()[:200] for line in hlo.splitlines() if re.search(r"\ball-gather(-start)?\(", line)]
        value, grads = step(x, Ws, bs)
        with jax.default_device(jax.devices()[0]):
            value1, grads1 = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, W, b)
        problems = []
        if gathers:
            problems.append(f"all-gathers in the compiled program: {gathers}")
        if grads[1].sharding.spec != P(None, "vocab") or grads[2].sharding.spec != P("vocab"):
            problems.append(f"W̄, b̄ sharded as {grads[1].sharding.spec}, {grads[2].sharding.spec}")
        if not re.search(r"\ball-reduce(-start)?\(", hlo):
            problems.append("no all-reduce: the vocabulary was not split")
        for name, a, c in (("loss", value, value1), *((f"gradient {k}", g, h) for k, (g, h) in
                                                          enumerate(zip(grads, grads1)))):
            if not np.allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-6):
                problems.append(f"{name} differs from the one-device call by {np.max(np.abs(np.asarray(a) - c))}")
        if problems:
            print(f"FAILED {options}: " + "; ".join(problems), file=sys.stderr)
        else:
            ok += 1
    print(f"vocabulary-parallel: {ok} of 3 designs without all-gathers, equal to the one-device call")
    return 0 if ok == 3 else 1


if __name__ == "__main__":
    sys.exit(main())
