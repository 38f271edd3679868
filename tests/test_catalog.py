"""Every catalog rule through check_rule, in float64 and float32, on every case of its row.

bfloat16 and float16 (and random shapes in every dtype) are in tests/test_properties.py."""

import importlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrules as jr
from jaxrules import (activations, arithmetic, attention, catalog, cross_entropy, linear, losses,
                      normalization, pooling, transformer)
from jaxrules.testing import check_rule

RULES = catalog.RULES
# jaxrules.softmax the module is shadowed by jr.softmax the function in the package namespace
MODULES = [activations, arithmetic, linear, importlib.import_module("jaxrules.softmax"), pooling, losses, attention,
           cross_entropy, normalization, transformer]


# float64: every row, every case. float32: the main case of the rows other than the activations
# (which run in float32 in tests/test_properties.py and tests/test_extremes.py).
CASES = [(r, jnp.float64) for r in RULES] + [(r, jnp.float32) for r in RULES if not r.elementwise]


@pytest.mark.parametrize("rule,dtype", CASES, ids=[f"{r.id}-{jnp.dtype(d).name}" for r, d in CASES])
def test_rule(rule, dtype):
    rtol, atol = rule.tolerance(dtype)
    # Every check on the row's main case; on the other cases (scalars, empty and broadcast shapes)
    # values and cotangents against the reference, with their shapes and dtypes, compiled once.
    # Finite differences run in float64 whatever the dtype, so once (in the float64 run) suffices.
    # float32 checks precision, not structure (the transformations ran in float64): the main case.
    wide = dtype == jnp.float64
    cases = rule.cases if wide else rule.cases[:1]
    for k, case in enumerate(cases):
        args = rule.sample(k, case, dtype)
        main = k == 0 and wide
        checks = dict(fd=main, jit=main, vmap=main, grad_grad=main, eager=main, checkpoint=main, scan=main,
                      jvp=main, fwd_over_rev=main)
        checks |= {k: v and checks[k] for k, v in rule.checks.items()}
        if rule.elementwise:  # its transformations: with the other elementwise rows, below
            checks |= dict.fromkeys(TRANSFORMATIONS, False)
        check_rule(rule.fn, rule.reference, *args, name=f"{rule.id} on {case}", rtol=rtol, atol=atol, **checks)


TRANSFORMATIONS = ("jit", "vmap", "grad_grad", "eager", "checkpoint", "scan", "jvp", "fwd_over_rev")
ELEMENTWISE = [r for r in RULES if r.elementwise]


def test_elementwise_rows_together_under_every_transformation():
    """The elementwise rows (the activations) under jit, vmap, scan, checkpoint, grad of grad, forward
    mode and op by op, as one function: X stacks every row's input, X ↦ (f₁(X₁), …, f_k(X_k)) (rrelu's
    keys are further arguments), against the same tuple of references; check_rule compiles each check
    once for every row, not once per row. Values, VJPs, finite differences and the other cases of each
    row: test_rule."""
    rows = [(r, r.sample(0, r.cases[0], jnp.float64)) for r in ELEMENTWISE]
    assert {r.tolerance(jnp.float64) for r, _ in rows} == {rows[0][0].tolerance(jnp.float64)}
    rtol, atol = rows[0][0].tolerance(jnp.float64)
    X = jnp.stack([args[0] for _, args in rows])
    rest = [a for _, args in rows for a in args[1:]]  # rrelu's keys
    spans, start = [], 0
    for _, args in rows:
        spans.append(slice(start, start + len(args) - 1))
        start += len(args) - 1

    def together(which):
        fns = [getattr(r, which) for r, _ in rows]
        return lambda X, *rest: tuple(f(X[i], *rest[s]) for i, (f, s) in enumerate(zip(fns, spans)))
    try:
        check_rule(together("fn"), together("reference"), X, *rest, name="the elementwise rows together",
                   rtol=rtol, atol=atol, fd=False, **dict.fromkeys(TRANSFORMATIONS, True))
    except AssertionError as e:
        raise AssertionError(f"{e}\noutputs, in order: {[r.id for r, _ in rows]}") from None


def _public_rules():
    for module in MODULES:
        for name in module.__all__:
            yield name, getattr(module, name)


def test_every_public_rule_is_in_the_catalog():
    in_catalog = {r.name for r in RULES}
    for name, fn in _public_rules():
        assert getattr(jr, name) is fn, f"jr.{name} is not re-exported from {fn.__module__}"
        aliases = [n for n in in_catalog if getattr(jr, n) is fn]
        assert name in in_catalog or aliases, f"jr.{name} is public but has no catalog row"


@pytest.mark.parametrize("name,fn", list(_public_rules()), ids=[n for n, _ in _public_rules()])
def test_every_public_rule_is_a_custom_vjp(name, fn):
    rule = next(r for r in RULES if getattr(jr, r.name) is fn)
    args = rule.sample(0, rule.cases[0], jnp.float32)
    jaxpr = jax.make_jaxpr(rule.fn)(*args)
    assert "custom_vjp_call" in str(jaxpr), f"jr.{name} does not go through jax.custom_vjp"


_WITH_JAX_NN = [(n, f) for n, f in _public_rules() if hasattr(jax.nn, n)]


@pytest.mark.parametrize("name,fn", _WITH_JAX_NN, ids=[n for n, _ in _WITH_JAX_NN])
def test_signature_matches_jax_nn(name, fn):
    """Drop-in: jax.nn's positional parameters in order, and every shared parameter with its default."""
    ours = inspect.signature(fn).parameters
    theirs = inspect.signature(getattr(jax.nn, name)).parameters
    positional = [p.name for p in theirs.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert list(ours)[: len(positional)] == positional, (name, list(ours), positional)
    shared = [n for n in theirs if n in ours]
    assert len(shared) >= len(positional)
    for n in shared:
        assert ours[n].default == theirs[n].default, (name, n, ours[n].default, theirs[n].default)


def test_readme_table_is_generated_from_the_catalog():
    import pathlib
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert catalog.readme_section() in readme, "README's rule table is stale: run python -m jaxrules.catalog --write README.md"


def test_catalog_samplers_keep_away_from_kinks():
    """Rows that declare kinks really sample at least the gap away from them."""
    x = catalog.away_from(0.0, 6.0, low=-1, high=7)(0, (10_000,), jnp.float64)[0]
    assert np.min(np.abs(np.asarray(x))) >= 0.1 - 1e-12
    assert np.min(np.abs(np.asarray(x) - 6)) >= 0.1 - 1e-12
