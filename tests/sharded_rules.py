"""Every catalog rule on a batch sharded over 4 devices (run by tests/test_transformations.py).

Run it alone with ``python tests/sharded_rules.py``: it sets XLA's host device count to 4 itself.
"""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxrules import catalog  # noqa: E402
from jaxrules.testing import check_sharded  # noqa: E402


def main() -> int:
    assert jax.device_count() == 4, jax.devices()
    failed = []
    for r in catalog.RULES:
        args = r.sample(0, r.cases[0], jnp.float32)
        rtol, atol = r.tolerance(jnp.float32)
        try:
            check_sharded(r.fn, *args, name=r.id, rtol=rtol, atol=atol)
        except Exception as e:  # report every rule, then fail
            failed.append(r.id)
            print(f"FAILED {r.id}: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"{len(catalog.RULES) - len(failed)} of {len(catalog.RULES)} rules equal their plain call on 4 devices "
          "(jit with NamedSharding and shard_map)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
