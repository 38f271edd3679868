"""Property-based tests: every rule on random shapes, settings and dtypes, against its reference.

Hypothesis draws, for each rule name of the catalog and each dtype, shapes with size-0 and size-1
axes, broadcastable pairs, negative axes, windows, strides and paddings (see tests/strategies.py).
Outputs and cotangents must match ``jax.vjp`` of the reference within the dtype's tolerance and keep
the primal's shapes and dtypes. CI runs a small deterministic budget (the ``ci`` profile, see
conftest.py); ``pytest tests/test_properties.py --hypothesis-profile=thorough`` runs 50 examples per
rule and dtype (200 per rule).
"""

import jax.numpy as jnp
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from jaxrules import catalog
from jaxrules.testing import VALUES_ONLY, check_rule
from strategies import NAMES, ROWS, strategy

DTYPES = [jnp.float64, jnp.float32, jnp.bfloat16, jnp.float16]


def test_every_catalog_rule_has_a_strategy():
    assert set(NAMES) == {r.name for r in catalog.RULES}
    for name in NAMES:
        strategy(name)


@pytest.mark.parametrize("dtype", DTYPES, ids=[jnp.dtype(d).name for d in DTYPES])
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_rule_on_random_shapes_settings_and_dtypes(name, dtype, data):
    ex = data.draw(strategy(name), label="example")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    args = ex.sample(seed, ex.case, dtype)
    note(ex.note)
    rtol, atol = ROWS[name][0].tolerance(dtype)
    check_rule(ex.fn, ex.reference, *args, name=f"{ex.note} in {jnp.dtype(dtype).name}", rtol=rtol, atol=atol,
               seed=seed, **VALUES_ONLY)
