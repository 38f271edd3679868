"""Models built from jaxrules rules (and the same models in plain JAX, for the bench)."""
