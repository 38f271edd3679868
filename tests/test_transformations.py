"""Every rule under sharding over 4 devices, and transformations composed in user code.

check_rule (tests/test_catalog.py) already runs every rule under jit, vmap over all arguments and
over each alone, grad of grad, jax.checkpoint and lax.scan. Here: NamedSharding and shard_map over 4
devices (in a subprocess, since the device count is fixed when JAX starts), and compositions.
"""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrules as jr
from jaxrules import catalog
from jaxrules.testing import check_sharded

HERE = pathlib.Path(__file__).parent


def test_every_rule_sharded_over_four_devices_equals_its_plain_call():
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false --xla_backend_optimization_level=0")
    r = subprocess.run([sys.executable, str(HERE / "sharded_rules.py")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    n = len(catalog.RULES)
    assert f"{n} of {n} rules equal their plain call on 4 devices" in r.stdout, r.stdout + r.stderr[-2000:]


def test_check_sharded_needs_devices():
    with pytest.raises(ValueError, match="at least 2 devices"):
        check_sharded(jr.sigmoid, jnp.ones(3), devices=jax.devices()[:1])


def test_rules_compose_inside_remat_scan_and_vmap():
    """A small network of rules under checkpoint, inside a scan over layers, vmapped over examples:
    its gradient equals the same network written with jax.nn."""
    rng = np.random.default_rng(0)
    W = jnp.asarray(rng.standard_normal((3, 5, 5)) / 2)
    x = jnp.asarray(rng.standard_normal((4, 5)))

    def net(relu, softmax, W, x):
        def layer(h, w):
            return jax.checkpoint(lambda h, w: relu(h @ w) + 0.1 * softmax(h))(h, w), None
        h, _ = jax.lax.scan(layer, x, W)
        return h.sum()
    ours = jax.jit(jax.grad(lambda W, x: jax.vmap(lambda xi: net(jr.relu, jr.softmax, W, xi))(x).sum()))(W, x)
    ref = jax.grad(lambda W, x: jax.vmap(lambda xi: net(jax.nn.relu, jax.nn.softmax, W, xi))(x).sum())(W, x)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
