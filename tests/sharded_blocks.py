"""The transformer blocks on 4 devices (run by tests/test_transformer.py; every catalog row also runs in
tests/sharded_rules.py). Run it alone with ``python tests/sharded_blocks.py``: it sets XLA's host device
count to 4 itself.

* dropout: the same key gives the same mask under jit with the input sharded over the devices, and
  inside shard_map (each device's block gets the mask the same call gives it on one device);
* parameters replicated over the devices inside jit(shard_map) (a scale, an embedding table, a gate,
  a default ε, a dense or conv weight) get the sum of every device's cotangent, as JAX's autodiff of
  the plain formula gives (jaxrules._rule does the sum for every rule).
"""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import jaxrules as jr  # noqa: E402
from jaxrules import catalog  # noqa: E402


def main() -> int:
    assert jax.device_count() == 4, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 6)), jnp.float32)
    key = jax.random.key(3)
    checks = {}

    # dropout: one mask for one key, however x is laid out
    plain = jr.dropout(x, key, 0.5)
    sharded = jax.jit(lambda x: jr.dropout(x, key, 0.5))(jax.device_put(x, NamedSharding(mesh, P("batch"))))
    checks["dropout under jit, x sharded over 4 devices"] = np.array_equal(sharded, plain)
    blocks = jax.jit(jax.shard_map(lambda x: jr.dropout(x, key, 0.5), mesh=mesh, in_specs=P("batch"),
                                   out_specs=P("batch")))(x)
    per_block = jnp.concatenate([jr.dropout(b, key, 0.5) for b in jnp.split(x, 4)])
    checks["dropout inside shard_map: each block's mask from (key, block shape)"] = np.array_equal(blocks, per_block)
    grads = jax.jit(jax.shard_map(lambda x: jax.grad(lambda x: jnp.sum(jr.dropout(x, key, 0.5) * x))(x), mesh=mesh,
                                  in_specs=P("batch"), out_specs=P("batch")))(x)
    want = jnp.concatenate([jax.grad(lambda b: jnp.sum(catalog.dropout_reference(0.5)(b, key) * b))(b)
                            for b in jnp.split(x, 4)])
    checks["dropout's gradient inside shard_map"] = np.allclose(grads, want, rtol=1e-6)

    # replicated parameters: the sum of the devices' cotangents
    s = jnp.asarray(rng.standard_normal(6), jnp.float32)
    table, ids = jnp.asarray(rng.standard_normal((5, 6)), jnp.float32), jnp.asarray(rng.integers(0, 5, 8))
    Wd, K = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32), jnp.asarray(rng.standard_normal((3, 2, 4)), jnp.float32)
    x3 = jnp.asarray(rng.standard_normal((8, 5, 2)), jnp.float32)
    cases = {
        "layer_norm scale and bias": (lambda p, x: jr.layer_norm(x, p, p), lambda p, x: catalog.layer_norm_reference(x, p, p), s, x),
        "rms_norm scale": (lambda p, x: jr.rms_norm(x, p), lambda p, x: catalog.rms_norm_reference(x, p), s, x),
        "standardize's default epsilon": (lambda p, x: jr.standardize(x) * p, lambda p, x: jax.nn.standardize(x) * p, s, x),
        "standardize mean": (lambda p, x: jr.standardize(x, mean=0.1 * p), lambda p, x: jax.nn.standardize(x, mean=0.1 * p),
                             s, x),
        "embedding table": (jr.embedding, lambda t, i: jnp.take(t, i, axis=0), table, ids),
        "swiglu gate": (lambda p, x: jr.swiglu(x, p), lambda p, x: jax.nn.silu(x) * p, s, x),
        "geglu gate": (lambda p, x: jr.geglu(p, x), lambda p, x: jax.nn.gelu(p) * x, s, x),
        # every rule: jaxrules._rule sums a replicated argument's cotangent over the devices
        "dense weight": (lambda W, x: jr.dense(x, W), lambda W, x: x @ W, Wd, x),
        "matmul operand": (lambda W, x: jr.matmul(x, W), lambda W, x: x @ W, Wd, x),
        "multiply operand": (lambda p, x: jr.multiply(x, p), lambda p, x: x * p, s, x),
        "conv kernel": (lambda K, x: jr.conv(x, K), lambda K, x: catalog._conv_reference()(x, K, None), K, x3),
    }
    for name, (ours, ref, p, d) in cases.items():
        def grad(f):
            def loss(p, d):
                return jnp.sum(jnp.sin(f(p, d)))
            return jax.jit(jax.shard_map(lambda p, d: jax.grad(loss)(p, d), mesh=mesh, in_specs=(P(), P("batch")),
                                         out_specs=P()))(p, d)
        try:
            checks[f"replicated {name}"] = np.allclose(grad(ours), grad(ref), rtol=1e-5, atol=1e-5)
        except Exception as e:  # report every check, then fail
            print(f"replicated {name}: {type(e).__name__}: {e}", file=sys.stderr)
            checks[f"replicated {name}"] = False
    for name, ok in checks.items():
        if not ok:
            print(f"FAILED {name}", file=sys.stderr)
    print(f"{sum(checks.values())} of {len(checks)} block checks pass on 4 devices")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
