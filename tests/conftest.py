import os

# pytest-xdist runs two workers on two cores: one XLA thread each, rather than both oversubscribing.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import jax

# The catalog tests run every rule in float64 (and finite differences need it); float32 and the
# low-precision dtypes are requested explicitly by each test.
jax.config.update("jax_enable_x64", True)
