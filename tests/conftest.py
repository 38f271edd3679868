import jax

# The catalog tests run every rule in float64 (and finite differences need it); float32 and the
# low-precision dtypes are requested explicitly by each test.
jax.config.update("jax_enable_x64", True)
