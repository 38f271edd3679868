import os
import sys

# pytest-xdist runs two workers on two cores: one XLA thread each, rather than both oversubscribing.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax
from hypothesis import HealthCheck, settings

# The catalog tests run every rule in float64 (and finite differences need it); float32 and the
# low-precision dtypes are requested explicitly by each test.
jax.config.update("jax_enable_x64", True)

sys.path.insert(0, os.path.dirname(__file__))  # tests/strategies.py

# Property tests: a small deterministic budget in CI; `--hypothesis-profile=thorough` for 50 examples
# per rule and dtype (every example compiles its own shapes, about 0.1-0.5 s each).
_slow = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=2, derandomize=True, deadline=None, database=None,
                          suppress_health_check=_slow, print_blob=True)
settings.register_profile("thorough", max_examples=50, deadline=None, suppress_health_check=_slow, print_blob=True)
settings.load_profile("ci")
