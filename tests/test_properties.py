"""Property-based tests: every rule on random shapes, settings, dtypes and input forms, against its reference.

Hypothesis draws, for each rule name of the catalog and each dtype, shapes with size-0 and size-1
axes, broadcastable pairs, negative axes, windows, strides and paddings (see tests/strategies.py),
and the form in which each floating argument arrives: a JAX array, a NumPy array, a weakly typed
array, a Python float (0-d arguments), or integers (the first argument, rounded). Outputs and
cotangents must match ``jax.vjp`` of the reference within the dtype's tolerance and keep the
primal's shapes, dtypes and weak types; where the reference refuses integers, ours must refuse them
with an error naming the rule. CI runs a small deterministic budget (the ``ci`` profile, see
conftest.py); ``pytest tests/test_properties.py --hypothesis-profile=thorough`` runs 50 examples per
rule and dtype (200 per rule).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from jaxrules import catalog
from jaxrules.testing import VALUES_ONLY, check_rule
from strategies import NAMES, ROWS, strategy

DTYPES = [jnp.float64, jnp.float32, jnp.bfloat16, jnp.float16]
FORMS = ("jax", "numpy", "weak", "python", "int")


def test_every_catalog_rule_has_a_strategy():
    assert set(NAMES) == {r.name for r in catalog.RULES}
    for name in NAMES:
        strategy(name)


def _is_original(reference):
    """Whether the reference is a jax.nn or optax function itself (or a partial of one): then integers
    must be taken, promoted or refused exactly as it does. Formulas written for the tests, and lambdas
    around the originals, say nothing about integers."""
    f = getattr(reference, "func", reference)
    return any(getattr(m, n, None) is f for m in (jax.nn, optax.losses) for n in dir(m) if not n.startswith("_"))


def _is_float_array(a):
    return isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating)


def _in_form(a, form):
    """A floating JAX array as a user might pass it."""
    if form == "numpy":
        return np.asarray(a)
    if form == "weak" and a.dtype == jnp.asarray(0.0).dtype:
        # weakly typed arrays come from Python scalars, so in the default float dtype only (a weak
        # float16 breaks jax.nn's own custom_jvp rules)
        from jax._src.lax.lax import _convert_element_type
        return _convert_element_type(a, a.dtype, True)
    if form == "python" and a.ndim == 0:
        return float(a)
    if form == "int":
        return jnp.round(a).astype(jnp.int32)
    return a


def _forms(args, draw, ints):
    """Each floating argument in a drawn form; integers only for the first, and only where the reference
    is the jax.nn or optax original (whose integer policy ours follows; formulas written for the tests
    say nothing about integers)."""
    out, labels = [], []
    for k, a in enumerate(args):
        if not _is_float_array(a):
            out.append(a)
            continue
        form = draw(st.sampled_from(FORMS if k == 0 and ints else FORMS[:-1]), label=f"form of argument {k}")
        out.append(_in_form(a, form))
        labels.append(f"argument {k} as {form}")
    return out, labels


@pytest.mark.parametrize("dtype", DTYPES, ids=[jnp.dtype(d).name for d in DTYPES])
@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_rule_on_random_shapes_settings_dtypes_and_forms(name, dtype, data):
    ex = data.draw(strategy(name), label="example")
    seed = data.draw(st.integers(0, 2 ** 16), label="seed")
    original = _is_original(ex.reference)
    args, forms = _forms(ex.sample(seed, ex.case, dtype), data.draw, original)
    label = f"{ex.note} in {jnp.dtype(dtype).name}, {', '.join(forms) or 'as drawn'}"
    note(label)
    if any(isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.integer) for a in args[:1]) \
            and not jnp.issubdtype(jnp.result_type(ex.sample(seed, ex.case, dtype)[0]), jnp.integer):
        try:  # integers where floats were drawn: ours takes them exactly where the reference does
            jax.eval_shape(ex.reference, *args)
        except (TypeError, ValueError, AssertionError, AttributeError):
            with pytest.raises((TypeError, ValueError)):
                jax.eval_shape(ex.fn, *args)
            return
    rtol, atol = ROWS[name][0].tolerance(dtype)
    python = any(isinstance(a, float) for a in args)  # eagerly: custom_vjp then hands fwd the Python number
    check_rule(ex.fn, ex.reference, *args, name=label, rtol=rtol, atol=atol, seed=seed, weak_type=original,
               **(VALUES_ONLY | {"eager": python}))
