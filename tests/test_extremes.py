"""The extremes table (catalog.EXTREMES, also in the README): where the textbook formula
differentiated by jax gives NaN or a wrong number, every rule gives the correct gradient; NaN in
gives NaN out. And every activation at ±1e4, ±1e30, ±inf and the float32 / float16 overflow edges
of exp has the gradient of its reference evaluated in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_readme_section_is_current
from jaxrules import catalog

ROWS = catalog.EXTREMES
TOL = {np.dtype(jnp.float32): 1e-6, np.dtype(jnp.float16): 1e-3}


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.rule}-{jnp.dtype(r.dtype).name}" for r in ROWS])
def test_rule_is_right_where_the_textbook_formula_is_not(row):
    ours, textbook, correct = row.gradients()
    tol = TOL[np.dtype(row.dtype)]
    if row.nan:
        assert np.all(np.isnan(ours) == np.isnan(correct)), (row.rule, ours, correct)
        assert np.isnan(ours).any()
    else:
        assert np.all(np.isfinite(ours)), (row.rule, ours)
        np.testing.assert_allclose(ours, correct, rtol=tol, atol=tol, err_msg=row.rule)
    # the hazard is real: the textbook formula's gradient is NaN or wrong here (as the README says)
    with np.errstate(invalid="ignore"):
        wrong = ~np.isclose(textbook, correct, rtol=tol, atol=tol, equal_nan=True)
    assert wrong.any(), f"{row.rule}: the textbook gradient {textbook} is right here; drop the row"


def test_readme_extremes_table_is_generated_from_the_catalog(tmp_path):
    """Regenerated at XLA's default optimisation level (the suite compiles at level 0)."""
    assert_readme_section_is_current(tmp_path, "jaxrules.catalog")


ELEMENTWISE = [r for r in catalog.RULES if r.elementwise]
EDGES = {
    # ±inf, far out, and just past the overflow edge of exp (88.7 in float32, 11.1 in float16)
    jnp.float32: [-jnp.inf, -1e30, -1e4, -1000.0, -89.0, -50.0, 50.0, 89.0, 1000.0, 1e4, 1e30, jnp.inf],
    jnp.float16: [-jnp.inf, -6e4, -1e4, -12.0, 12.0, 1e4, 6e4, jnp.inf],
}


@pytest.mark.parametrize("dtype", list(EDGES), ids=["float32", "float16"])
@pytest.mark.parametrize("rule", ELEMENTWISE, ids=[r.id for r in ELEMENTWISE])
def test_activation_gradients_at_the_edges(rule, dtype):
    x = jnp.asarray(EDGES[dtype], dtype)
    rest = list(rule.sample(0, x.shape, dtype))[1:]

    @jax.jit
    def slopes(x, x64):
        y, back = jax.vjp(lambda v: rule.fn(v, *rest), x)
        # the reference and its jax gradient in float64, where both are finite (ours must be finite everywhere)
        y64, back64 = jax.vjp(lambda v: rule.reference(v, *rest), x64)
        return y, back(jnp.ones_like(y))[0], y64, back64(jnp.ones_like(y64))[0]
    y, g, y64, g64 = slopes(x, x.astype(jnp.float64))
    assert y.dtype == dtype and g.dtype == dtype
    y, g, y64, g64 = (np.asarray(a, np.float64) for a in (y, g, y64, g64))
    assert not np.isnan(g).any(), (rule.id, x, g)
    ok = np.isfinite(g64)
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(g[ok], g64[ok], rtol=tol, atol=tol, err_msg=f"{rule.id} gradient at {x[ok]}")
    ok = np.isfinite(y64)
    np.testing.assert_allclose(y[ok], y64[ok].astype(np.dtype(dtype)).astype(np.float64), rtol=tol,
                               atol=tol, err_msg=f"{rule.id} value")
