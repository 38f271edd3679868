"""layer_norm, rms_norm, standardize: accuracy against float64, constant rows, half precision,
jax.nn.standardize as a drop-in (signature, dtypes, weak types, algorithm), residual targets and the
forward-mode twin. Values and cotangents on random shapes are in tests/test_catalog.py and
tests/test_properties.py."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrules as jr
from jaxrules import _rule, bench, catalog
from jaxrules.testing import VALUES_ONLY, check_rule

F32 = jnp.float32
ROWS = [r for r in catalog.RULES if r.module == "normalization"]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _hard_rows(d=256):
    """float32 rows at ±1e4 (spread 1), at 3e3 and −7e2, at mixed scales (1e-3 to 1e3), and a constant row."""
    rng = _rng(1)
    offsets = np.repeat([1e4, -1e4, 0.0, 3e3, -7e2, 0.0, 1e4, -1e4], 4)[:, None]
    scales = np.repeat([1.0, 1.0, 1e-3, 1.0, 10.0, 1e3, 1e-2, 30.0], 4)[:, None]
    x = (offsets + scales * rng.standard_normal((32, d))).astype(np.float32)
    x[-1] = np.float32(1e4 + 0.1)
    return x


def _errors(f, exact, args, g):
    """Per row: max |y − y*| and max |x̄ − x̄*| over the row's largest |x̄*|, where y*, x̄* are the exact
    values (``exact`` run in float64 on the same float32 inputs)."""
    def run(f, args, g):
        y, back = jax.vjp(f, *args)
        return y, back(g.astype(y.dtype))[0]
    y, gx = jax.jit(run, static_argnums=0)(f, args, g)
    with jax.enable_x64(True):
        y64, gx64 = jax.jit(run, static_argnums=0)(exact, [jnp.asarray(a, jnp.float64) for a in args],
                                                   jnp.asarray(g, jnp.float64))
    y, gx, y64, gx64 = (np.asarray(a, np.float64) for a in (y, gx, y64, gx64))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(gx))
    scale = np.max(np.abs(gx64), -1)
    return (np.max(np.abs(y - y64), -1), np.max(np.abs(gx - gx64), -1) / np.where(scale > 0, scale, 1),
            np.max(np.abs(y64), -1))


def _stable(x):
    return jax.nn.standardize(x, algorithm="stable")


ACCURACY = {
    # ours, the plain formula (jax.nn's for standardize), the exact formula (run in float64), parameters
    "layer_norm": (jr.layer_norm, catalog.layer_norm_reference, catalog.layer_norm_reference, 2),
    "rms_norm": (jr.rms_norm, catalog.rms_norm_reference, catalog.rms_norm_reference, 1),
    "standardize (fast)": (jr.standardize, jax.nn.standardize, _stable, 0),
    "standardize (stable)": (lambda x: jr.standardize(x, algorithm="stable"), _stable, _stable, 0),
}


@pytest.mark.parametrize("name", list(ACCURACY))
def test_at_least_as_accurate_as_the_plain_formula_at_offsets_and_mixed_scales(name):
    """Against the formula in float64 on the same float32 inputs, row by row: never further than the
    plain formula (jax.nn.standardize for standardize) plus one ulp of the row's output, and within a
    few ulps everywhere. jax.nn's "fast" variance loses every digit at ±1e4; a two-pass mean still
    loses ~1e-3 there (x − fl(mean)); the corrected two-pass mean keeps them."""
    ours, plain, exact, params = ACCURACY[name]
    x = _hard_rows()
    rng = _rng(2)
    args = [jnp.asarray(x)] + [jnp.asarray(rng.uniform(0.5, 1.5, x.shape[-1]), F32) for _ in range(params)]
    g = jnp.asarray(rng.standard_normal(x.shape), F32)
    ey, eg, size = _errors(ours, exact, args, g)
    py, pg, _ = _errors(plain, exact, args, g)
    ulp = np.spacing(size.astype(np.float32)).astype(np.float64)
    assert np.all(ey <= py + ulp), (name, ey, py)
    assert np.all(eg <= pg + 2 ** -23), (name, eg, pg)
    assert np.all(ey <= 4 * ulp), (name, ey / ulp)
    assert np.all(eg <= 4 * 2 ** -23), (name, eg)


def test_constant_rows_give_finite_values_and_gradients():
    """Variance 0: x̂ = 0 exactly (the centred values are exact), y = bias, x̄ = r(ĝ − mean ĝ) finite."""
    x = jnp.asarray(np.stack([np.full(8, v, np.float32) for v in (0.1, 1e4 + 0.1, -3.7, 0.0)]))
    s, b = jnp.linspace(0.5, 1.5, 8, dtype=F32), jnp.linspace(-1, 1, 8, dtype=F32)
    g = jnp.asarray(_rng(3).standard_normal(x.shape), F32)
    fns = {"layer_norm": (lambda x: jr.layer_norm(x, s, b), jnp.broadcast_to(b, x.shape)),
           "standardize": (jr.standardize, jnp.zeros_like(x)),
           "standardize stable": (lambda x: jr.standardize(x, algorithm="stable"), jnp.zeros_like(x)),
           "layer_norm scale only": (lambda x: jr.layer_norm(x, s), jnp.zeros_like(x)),
           "rms_norm of zeros": (lambda x: jr.rms_norm(0 * x), jnp.zeros_like(x))}  # r = 1/√ε

    @jax.jit
    def run(x, g):
        return {k: (lambda y, back: (y, back(g)[0]))(*jax.vjp(f, x)) for k, (f, _) in fns.items()}
    out = run(x, g)
    for k, (y, gx) in out.items():
        np.testing.assert_array_equal(y, fns[k][1], err_msg=k)
        assert np.all(np.isfinite(gx)), k
    gh = g * s
    np.testing.assert_allclose(out["layer_norm scale only"][1], 1e3 * (gh - gh.mean(-1, keepdims=True)), rtol=1e-5,
                               atol=1e-3)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_half_precision_takes_statistics_in_float32_and_returns_its_dtype(dtype):
    """The result is the float32 computation rounded once: rows at 100 with a spread of 0.5 keep their
    normalized values, where statistics in the half type would lose them."""
    rng = _rng(4)
    x = jnp.asarray(100 + 0.5 * rng.standard_normal((4, 64)), dtype)
    s = jnp.asarray(rng.uniform(0.5, 1.5, 64), dtype)
    g = jnp.asarray(rng.standard_normal((4, 64)), dtype)
    @jax.jit
    def run(x, s, g):
        out = []
        for f in (lambda x, s: jr.layer_norm(x, s, s), jr.rms_norm, lambda x, s: jr.standardize(x) * s):
            y, back = jax.vjp(f, x, s)
            out.append((y, back(g), f(x.astype(F32), s.astype(F32)).astype(dtype)))
        return out
    for y, cts, y32 in run(x, s, g):
        assert y.dtype == dtype and all(c.dtype == dtype for c in cts)
        np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y32, np.float32), rtol=0,
                                   atol=float(jnp.finfo(dtype).eps) * 4)
    # standardize is more accurate than jax.nn's in the half type itself, never less
    exact = np.asarray(jr.standardize(x.astype(F32)))
    ours = np.abs(np.asarray(jr.standardize(x), np.float32) - exact).max()
    theirs = np.abs(np.asarray(jax.nn.standardize(x), np.float32) - exact).max()
    assert ours <= theirs


def test_standardize_has_jax_nn_signature():
    ours, theirs = inspect.signature(jr.standardize), inspect.signature(jax.nn.standardize)
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == \
           [(p.name, p.kind, p.default) for p in theirs.parameters.values()]


X32 = np.asarray(_rng(5).standard_normal((3, 4)), np.float32)
DROP_IN = {
    "python float": ((1.0,), {"axis": None}),
    "python int": ((3,), {"axis": None}),
    "numpy scalar": ((np.float32(2.0),), {"axis": None}),
    "integer array": ((np.arange(12).reshape(3, 4),), {}),
    "bool array": ((np.array([True, False, True]),), {}),
    "numpy float64": ((X32.astype(np.float64),), {}),
    "bfloat16": ((jnp.asarray(X32, jnp.bfloat16),), {}),
    "float16": ((jnp.asarray(X32, jnp.float16),), {}),
    "weak float32": ((_rule._convert_weak(jnp.asarray(X32), np.dtype(np.float32), True),), {}),
    "python mean, variance, epsilon": ((X32,), {"mean": 0.5, "variance": 2.0, "epsilon": 0.1}),
    "integer mean": ((X32,), {"mean": np.int32(1)}),
    "float32 mean on bfloat16": ((jnp.asarray(X32, jnp.bfloat16),), {"mean": jnp.zeros((3, 1), F32)}),
    "tuple axis": ((X32,), {"axis": (0, 1)}),
}


@pytest.mark.parametrize("case", list(DROP_IN))
def test_standardize_takes_what_jax_nn_takes(case):
    args, kw = DROP_IN[case]
    ours, theirs = jr.standardize(*args, **kw), jax.nn.standardize(*args, **kw)
    assert (ours.shape, ours.dtype, ours.weak_type) == (theirs.shape, theirs.dtype, theirs.weak_type)
    tol = 2e-2 if theirs.dtype in (jnp.bfloat16, jnp.float16) or "bfloat16" in case else 1e-6
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(theirs, np.float32), rtol=tol, atol=tol)


def test_standardize_gradient_of_python_scalars():
    assert jax.grad(lambda v: jr.standardize(v, axis=None))(1.0) == jax.grad(
        lambda v: jax.nn.standardize(v, axis=None))(1.0)
    gm = jax.grad(lambda m: jr.standardize(X32, mean=m).sum())(0.3)
    np.testing.assert_allclose(gm, jax.grad(lambda m: jax.nn.standardize(X32, mean=m).sum())(0.3), rtol=1e-5)


def test_standardize_algorithms_and_given_statistics():
    """fast and stable: the same values without a mean (ours are the exact variance either way); with a
    given mean (per row, and varying along the axis) they differ as jax.nn's do; variance alone. Values,
    cotangents and float64 finite differences against jax.nn."""
    rng = _rng(6)
    x = jnp.asarray(rng.standard_normal((3, 6)))
    np.testing.assert_array_equal(jr.standardize(x.astype(F32)), jr.standardize(x.astype(F32), algorithm="stable"))
    for algorithm in ("fast", "stable"):
        for m in (0.2 * rng.standard_normal((3, 1)), 0.2 * rng.standard_normal(6)):
            fd = (algorithm == "fast") == (m.ndim == 1)  # finite differences on two of the four
            check_rule(lambda x, m: jr.standardize(x, mean=m, algorithm=algorithm),
                       lambda x, m: jax.nn.standardize(x, mean=m, algorithm=algorithm), x, jnp.asarray(m),
                       name=f"standardize(mean {m.shape}, {algorithm})", **(VALUES_ONLY | {"fd": fd}))
    check_rule(lambda x, v: jr.standardize(x, variance=v), lambda x, v: jax.nn.standardize(x, variance=v), x,
               jnp.asarray(rng.uniform(0.5, 2, (3, 1))), name="standardize(variance)", **(VALUES_ONLY | {"fd": True}))
    with pytest.raises(ValueError, match="algorithm must be 'fast' or 'stable'"):
        jr.standardize(x, algorithm="two-pass")
    # as jax.nn, the algorithm is not looked at when the variance is given
    np.testing.assert_allclose(jr.standardize(x, variance=2.0, algorithm="two-pass"),
                               jax.nn.standardize(x, variance=2.0, algorithm="two-pass"), rtol=1e-12)


def test_standardize_masked_rows():
    """where: statistics over the kept entries only (a NaN outside them does not spread); a row with no
    kept entry is NaN, as in jax.nn."""
    x = jnp.asarray([[1.0, 2.0, np.nan, 4.0], [1.0, 2.0, 3.0, 4.0]], F32)
    w = jnp.asarray([[True, True, False, True], [False] * 4])
    y, theirs = jr.standardize(x, where=w), jax.nn.standardize(x, where=w)
    np.testing.assert_allclose(y[0, [0, 1, 3]], theirs[0, [0, 1, 3]], rtol=1e-6)
    assert np.isnan(y[0, 2]) and np.all(np.isnan(y[1])) and np.all(np.isnan(theirs[1]))


def test_empty_rows_give_zero_cotangents_to_the_statistics():
    """An axis of size 0: the output is empty, so ε, mean and variance get cotangent 0 (jax.nn's are NaN,
    from 0 · rsqrt′(NaN)); the values are empty as in jax.nn."""
    x = jnp.zeros((3, 0), F32)
    assert jr.standardize(x).shape == (3, 0)
    ge, gm = jax.grad(lambda e, m: jr.standardize(x, mean=m, epsilon=e).sum(), argnums=(0, 1))(0.1, 0.0)
    assert ge == 0 and gm == 0
    assert np.isnan(jax.grad(lambda e: jax.nn.standardize(x, epsilon=e).sum())(0.1))


def test_residual_targets_of_every_block():
    """Bytes kept per output element (float32, inputs included) at the benchmark's sizes, for the norms and
    the transformer blocks (one table, computed once): within the issue's targets, and less than jax
    autodiff of the plain formula keeps (embedding: no more)."""
    rows = bench.block_residual_table()
    assert {r[0].split(" (")[0] for r in rows} == {"layer_norm", "rms_norm", "standardize", "dropout", "swiglu",
                                                   "geglu", "rope", "embedding"}
    for name, ours, theirs, target in rows:
        if target is None:
            assert ours <= theirs, (name, ours, theirs)
        else:
            assert ours <= target and ours < theirs, (name, ours, theirs, target)


def check_forward_twin(row):
    """Inside FORWARD(True) the rule's JVP (the transpose of its bwd) equals jax.jvp of the reference, on
    the row's main case in float64, for tangents of every floating argument."""
    args = row.sample(0, row.cases[0], jnp.float64)
    diff = [i for i, a in enumerate(args) if a is not None and jnp.issubdtype(jnp.result_type(a), jnp.floating)]
    rng = _rng(8)
    tangents = [jnp.asarray(rng.standard_normal(jnp.shape(args[i]))) for i in diff]

    def at(f):
        def g(*d):
            full = list(args)
            for i, v in zip(diff, d):
                full[i] = v
            return f(*full)
        return g

    @jax.jit
    def both(primals, tangents):
        with _rule.FORWARD(True):
            ours = jax.jvp(at(row.fn), primals, tangents)
        return ours, jax.jvp(at(row.reference), primals, tangents)
    (y, t), (y_ref, t_ref) = both([args[i] for i in diff], tangents)
    np.testing.assert_allclose(y, y_ref, rtol=1e-9, atol=1e-12, err_msg=row.id)
    np.testing.assert_allclose(t, t_ref, rtol=1e-9, atol=1e-12, err_msg=row.id)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_forward_mode_twin_equals_jvp_of_the_reference(row):
    check_forward_twin(row)
