"""Drop-in: every name jaxrules shares with jax.nn or optax.losses takes what the original takes and
returns what it returns (value, dtype, shape, weak type), with the original's signature.

Inputs are what users pass, not what samplers draw: Python ints, floats and bools, NumPy arrays and
scalars, integer and boolean arrays, bfloat16 and float16, weakly typed arrays; with x64 on and off,
eagerly and under jit. Where the original raises, ours must raise a TypeError or ValueError that
starts with the rule's name.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrules as jr

# x32 runs of NumPy float64 inputs: JAX truncates them to float32, with a warning, as for jax.nn
pytestmark = pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")


def _original(name):
    return getattr(jax.nn, name, None) or getattr(optax.losses, name, None)


SHARED = sorted(n for n in dir(jr) if not n.startswith("_") and callable(getattr(jr, n)) and _original(n) is not None
                and not inspect.ismodule(getattr(jr, n)))


def test_every_shared_name_is_listed():
    # the names this module checks: jax.nn's activations, softmax family, glu, and optax's losses
    for n in ("relu", "tanh", "gelu", "softmax", "logsumexp", "glu", "dot_product_attention", "l2_loss",
              "softmax_cross_entropy_with_integer_labels", "sigmoid_binary_cross_entropy"):
        assert n in SHARED


@pytest.mark.parametrize("name", SHARED)
def test_signature_is_the_originals(name):
    """The original's parameters in order, with their kinds and defaults; ours after them, keyword-only."""
    ours = list(inspect.signature(getattr(jr, name)).parameters.values())
    theirs = list(inspect.signature(_original(name)).parameters.values())
    described = lambda ps: [(p.name, p.kind.name, p.default) for p in ps]  # noqa: E731
    assert described(ours[: len(theirs)]) == described(theirs)
    extra = ours[len(theirs):]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extra), [p.name for p in extra]


def _weak(x):
    """x as a weakly typed array (what jnp.asarray(1.5) is, for arrays of any shape)."""
    from jax._src.lax.lax import _convert_element_type
    x = jnp.asarray(x)
    return _convert_element_type(x, x.dtype, True)


# What users pass to a one-argument function, as (label, thunk): thunks, so that arrays are made under
# the x64 setting of the test.
UNARY_INPUTS = [
    ("python int", lambda: 2),
    ("python negative int", lambda: -3),
    ("python float", lambda: 1.5),
    ("python bool", lambda: True),
    ("numpy int32", lambda: np.array([1, -2, 0], np.int32)),
    ("numpy float64", lambda: np.array([0.5, -1.5, 3.0])),
    ("numpy scalar", lambda: np.float32(-0.75)),
    ("jax int32", lambda: jnp.array([3, -1, 0], jnp.int32)),
    ("jax int8", lambda: jnp.array([3, -1, 0], jnp.int8)),
    ("jax bool", lambda: jnp.array([True, False])),
    ("bfloat16", lambda: jnp.array([-2.5, 0.25, 4.0], jnp.bfloat16)),
    ("float16", lambda: jnp.array([-2.5, 0.25, 4.0], jnp.float16)),
    ("float32 0-d", lambda: jnp.float32(-0.3)),
    ("weak float32 array", lambda: _weak(np.array([[-1.0, 2.0], [0.5, -0.125]], np.float32))),
    ("empty", lambda: jnp.zeros((0, 3), jnp.float32)),
]

UNARY = {
    **{n: {} for n in ("sigmoid", "tanh", "relu", "relu6", "elu", "celu", "selu", "gelu", "silu", "swish", "softplus",
                       "log_sigmoid", "mish", "hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh", "soft_sign",
                       "squareplus", "sparse_plus", "sparse_sigmoid", "leaky_relu", "softmax", "log_softmax",
                       "logsumexp", "glu")},
    "gelu(approximate=False)": {"approximate": False},
    "leaky_relu(0.2)": {"negative_slope": 0.2},
    "elu(alpha=np.float32)": {"alpha": np.float32(0.5)},
    "celu(alpha=jax array)": {"alpha": jnp.array(2.0)},
    "squareplus(b=1)": {"b": 1},
    "softmax(axis=0)": {"axis": 0},
    "logsumexp(axis=-1, keepdims)": {"axis": -1, "keepdims": True},
}


def _result(f, args, kwargs):
    """('ok', value), ('error', the exception), or ('crash', the exception) for an AttributeError: optax's
    sigmoid_binary_cross_entropy reads ``logits.dtype`` of a Python float, a bug rather than a refusal."""
    try:
        return "ok", f(*args, **kwargs)
    except (TypeError, ValueError, IndexError, AssertionError) as e:  # jax.nn.glu asserts an even size
        return "error", e
    except AttributeError as e:
        return "crash", e


def _assert_same(name, ours, theirs, label, values=True, low=None, cotangents=None):
    """Both raise (ours a TypeError/ValueError naming the rule, or JAX's own error) or both return the
    same dtypes, shapes and weak types (and values, for arrays).

    low: the lowest precision among the inputs (values computed from it agree to its precision only;
    ours are often the more accurate: elu of float16 with a float32 alpha computes in float32).
    cotangents: for gradients, the weak type they must have: their primal's (jax.nn's vary by function).
    """
    rule = getattr(jr, name.split("(")[0]).__name__  # swish is silu, hard_swish is hard_silu
    kind, y = ours
    kind_ref, y_ref = theirs
    if kind_ref == "crash":  # where the original crashes, ours may do better, never worse than raising
        assert kind in ("ok", "error"), f"{name} on {label}: {y!r}"
        return
    if kind_ref == "error":
        assert kind == "error", f"{name} on {label}: the original raises {type(y_ref).__name__}: {y_ref}; ours returns {y!r}"
        jax_own = type(y) is type(y_ref) and str(y) == str(y_ref)  # e.g. jax.grad's refusal of integer inputs
        assert jax_own or (isinstance(y, (TypeError, ValueError)) and str(y).startswith(rule)), \
            f"{name} on {label}: {type(y).__name__}: {y}"
        return
    assert kind == "ok", f"{name} on {label}: ours raises {type(y).__name__}: {y}; the original returns {y_ref!r}"
    for a, b in zip(jax.tree_util.tree_leaves(y), jax.tree_util.tree_leaves(y_ref)):
        if not isinstance(b, (jax.Array, jax.ShapeDtypeStruct)):
            # optax's squared_error and l2_loss compute Python and NumPy inputs in NumPy and return a
            # Python float or a NumPy array; ours return a JAX array (weakly typed for Python scalars)
            b = jnp.asarray(b)
            assert a.shape == b.shape, f"{name} on {label}: {a.shape} vs {b.shape}"
        else:
            assert a.shape == b.shape and a.dtype == b.dtype, \
                f"{name} on {label}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
            want = b.weak_type if cotangents is None else cotangents
            assert a.weak_type == want, f"{name} on {label}: weak_type {a.weak_type}, want {want}"
        if values:
            tol = {jnp.dtype(jnp.bfloat16): 1e-2, jnp.dtype(jnp.float16): 2e-3}.get(jnp.dtype(low or a.dtype), 1e-6)
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol,
                                       err_msg=f"{name} on {label}")


def _compare_on_inputs(name, ours, theirs, inputs, kwargs, values=True):
    """Types and errors by jax.eval_shape (no compilation), values in one jit per function."""
    results = {}
    for label, args in inputs:
        o = _result(lambda *a: jax.eval_shape(lambda *b: ours(*b, **kwargs), *a), args, {})
        t = _result(lambda *a: jax.eval_shape(lambda *b: theirs(*b, **kwargs), *a), args, {})
        _assert_same(name, o, t, label, values=False)
        if o[0] == "ok" and t[0] == "ok":
            results[label] = args
    if not values:
        return
    both = jax.jit(lambda xs: [(ours(*a, **kwargs), theirs(*a, **kwargs)) for a in xs])(list(results.values()))
    for (label, args), (y, y_ref) in zip(results.items(), both):
        low = min((jnp.result_type(a) for a in args if a is not None and jnp.issubdtype(jnp.result_type(a), jnp.floating)),
                  key=lambda d: jnp.finfo(d).bits, default=None)
        _assert_same(name, ("ok", y), ("ok", y_ref), f"{label} (values)", low=low)


@pytest.mark.parametrize("x64", [False, True], ids=["x32", "x64"])
@pytest.mark.parametrize("name", list(UNARY))
def test_one_argument_functions_take_what_jax_nn_takes(name, x64):
    base = name.split("(")[0]
    ours, theirs, kwargs = getattr(jr, base), getattr(jax.nn, base), UNARY[name]
    with jax.enable_x64(x64):
        # values in x32 only: with x64 on, the types (eval_shape, no compilation)
        _compare_on_inputs(name, ours, theirs, [(label, (make(),)) for label, make in UNARY_INPUTS], kwargs, not x64)


def test_eager_calls_on_python_and_numpy_inputs():
    """The same outside jit, where Python numbers reach the rule itself (a few calls: each compiles)."""
    with jax.enable_x64(False):
        for name, x in (("relu", 2), ("relu", 1.5), ("hard_tanh", True), ("sigmoid", 1.5), ("gelu", np.arange(3.0)),
                        ("elu", jnp.arange(3)), ("tanh", np.float32(0.5)), ("softmax", np.arange(3)),
                        ("sigmoid", 2), ("logsumexp", [1.0, 2.0])):
            _assert_same(name, _result(getattr(jr, name), (x,), {}), _result(getattr(jax.nn, name), (x,), {}), repr(x))


# optax's losses: argument tuples users pass
LOSS_INPUTS = {
    "squared_error": [(1.5, 2), (2, 1), (np.array([1.0, 2.0]), np.array([0, 1])), (jnp.array([1, 2]), None),
                      (jnp.array([1.5, 2.5], jnp.bfloat16), 1.0)],
    "l2_loss": [(1.5, 2), (2, 1), (np.array([1.0, 2.0]), np.array([0, 1])), (jnp.array([1.5], jnp.float16), None)],
    "sigmoid_binary_cross_entropy": [(1.5, 1), (0.3, 0.25), (np.array([1.0, -2.0]), np.array([1, 0])),
                                     (jnp.array([2.0, -1.0], jnp.bfloat16), jnp.array([1.0, 0.0], jnp.bfloat16)),
                                     (jnp.array([1, -1]), jnp.array([1, 0]))],
    "softmax_cross_entropy": [(np.array([[1.0, 2.0, 0.5]]), np.array([[0.0, 1.0, 0.0]])),
                              (jnp.array([[1, 2, 3]]), jnp.array([[0, 0, 1]])),
                              (jnp.array([1.0, -1.0], jnp.float16), jnp.array([0.5, 0.5], jnp.float16))],
    "softmax_cross_entropy_with_integer_labels": [(np.array([[1.0, 2.0, 0.5]]), np.array([1])),
                                                  (jnp.array([[1.0, 2.0]], jnp.bfloat16), jnp.array([0], jnp.int8)),
                                                  (np.array([1.0, 3.0]), 1)],
    "kl_divergence": [(np.log(np.array([[0.2, 0.8]])), np.array([[0.5, 0.5]])),
                      (jnp.array([-1.0, -0.5], jnp.float16), jnp.array([0.25, 0.75], jnp.float16))],
}


@pytest.mark.parametrize("x64", [False, True], ids=["x32", "x64"])
@pytest.mark.parametrize("name", list(LOSS_INPUTS))
def test_losses_take_what_optax_takes(name, x64):
    ours, theirs = getattr(jr, name), getattr(optax.losses, name)
    with jax.enable_x64(x64):
        inputs = []
        for args in LOSS_INPUTS[name]:
            args = args[:-1] if args[-1] is None else args
            inputs.append((", ".join(f"{type(a).__name__}{getattr(a, 'dtype', '')}" for a in args), args))
        _compare_on_inputs(name, ours, theirs, inputs, {}, not x64)
        for label, args in inputs:  # eagerly too: optax computes NumPy and Python inputs in NumPy
            _assert_same(name, _result(ours, args, {}), _result(theirs, args, {}), f"{label} (eager)")


GRADIENT_NAMES = [n for n in UNARY if n.split("(")[0] not in ("softmax", "log_softmax", "glu") and "axis" not in n]


@pytest.mark.parametrize("name", GRADIENT_NAMES)
def test_grad_of_python_scalars_and_0d_arrays(name):
    """jax.grad, jax.value_and_grad and jax.vjp at Python floats and 0-d arrays, as jax.nn's: eagerly at a
    Python float (custom_vjp then hands fwd the Python number itself), the rest in one jit."""
    base = name.split("(")[0]
    kwargs = UNARY[name]
    ours, theirs = (lambda v: getattr(jr, base)(v, **kwargs)), (lambda v: getattr(jax.nn, base)(v, **kwargs))
    with jax.enable_x64(False):
        value, grad = jax.value_and_grad(ours)(0.7)
        _assert_same(name, ("ok", value), _result(theirs, (0.7,), {}), "value at 0.7 (eager)")
        _assert_same(name, ("ok", grad), _result(jax.grad(theirs), (0.7,), {}), "grad at 0.7 (eager)", cotangents=True)
        _assert_same(name, _result(jax.grad(ours), (2,), {}), _result(jax.grad(theirs), (2,), {}), "grad at 2")

        def transforms(f, x):
            y, back = jax.vjp(f, x)
            return jax.grad(f)(x), jax.value_and_grad(f)(x), back(jnp.ones_like(y))
        points = [-1.3, jnp.float32(0.4), jnp.asarray(-2.0, jnp.bfloat16), jnp.asarray(3.0, jnp.float16)]
        got = jax.jit(lambda xs: [(transforms(ours, x), transforms(theirs, x)) for x in xs])(points)
        for x, ((g, (y, g2), ct), (g_ref, (y_ref, _), ct_ref)) in zip(points, got):
            weak = bool(jnp.asarray(x).weak_type)
            _assert_same(name, ("ok", y), ("ok", y_ref), f"value at {x!r}")
            for what, a, b in (("grad", g, g_ref), ("value_and_grad", g2, g_ref), ("vjp", ct, ct_ref)):
                _assert_same(name, ("ok", a), ("ok", b), f"{what} at {x!r}", cotangents=weak)


@pytest.mark.parametrize("name", ["squared_error", "l2_loss", "sigmoid_binary_cross_entropy"])
def test_loss_gradients_at_python_scalars(name):
    with jax.enable_x64(False):
        for args in ((0.7, 0.2), (-1.5, 1.0)):
            value, grad = jax.value_and_grad(getattr(jr, name))(*args)
            _assert_same(name, ("ok", value), ("ok", getattr(optax.losses, name)(*map(jnp.asarray, args))), f"at {args}")
            _assert_same(name, ("ok", grad), ("ok", jax.grad(getattr(optax.losses, name))(*map(jnp.asarray, args))),
                         f"grad at {args}", cotangents=True)


def test_testing_is_an_attribute_after_importing_jaxrules():
    import subprocess
    import sys
    code = "import jaxrules, sys; assert 'jaxrules.testing' not in sys.modules; print(jaxrules.testing.check_rule.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "check_rule"
