r"""What every rule is made of: a ``jax.custom_vjp``, its forward-mode twin, and a public face.

A rule module writes, as in JAX's "Custom derivative rules" (STYLE.md, point 1)::

    @rule(like=jax.nn.relu, settings=("grad_at_zero",))
    def relu(x, *, grad_at_zero=0.0): ...          # the primal, with the public signature
    def _relu_fwd(x, grad_at_zero): ...            # -> (y, residuals)
    def _relu_bwd(grad_at_zero, residuals, ȳ): ... # -> (x̄,)
    relu.defvjp(_relu_fwd, _relu_bwd)

``defvjp`` makes two rules from the one pair:

* the ``jax.custom_vjp`` (fwd, bwd): what runs by default, with exactly the residuals fwd keeps;
* a ``jax.custom_jvp`` twin for :func:`jaxrules.forward_mode`, whose JVP is the transpose of the
  same bwd: bwd is linear in ȳ, x̄ = Jᵀȳ, so ``jax.linear_transpose`` of ȳ ↦ bwd(res, ȳ) is
  ẋ ↦ Jẋ = ẏ. The backward and the forward rule share one derivative and cannot disagree.

The twin is chosen when the rule is traced, through a ``jax.make_user_context`` value that is part
of ``jax.jit``'s cache key, so a function jitted outside the context is traced again inside it.

The public face (``Rule.__call__``) makes the rule a drop-in for the function it is ``like``
(``jax.nn.relu``, ``optax.l2_loss``, ...):

* arguments bind to the public signature (jax.nn's, with our additions keyword-only), with a
  TypeError naming the rule and the signature when they do not fit;
* settings (``nondiff_argnums``) must be static: a traced setting raises, naming the setting; a
  concrete 0-d floating array is read as its Python value, a list as a tuple;
* array arguments may be Python scalars, NumPy arrays and scalars or JAX arrays; Python scalars stay
  weakly typed, as in jax.nn;
* integer and boolean inputs are promoted, kept or refused exactly as the original does, and the
  result has the original's dtype and weak type: they are read off ``jax.eval_shape`` of the
  original (cached per signature of the call), so they hold whatever the JAX version and the x64
  setting. Integer inputs that the original keeps (``relu(2) == 2``) are computed without a
  derivative rule: there is nothing to differentiate.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrules._broadcast import Static
from jaxrules._mesh import mesh_axes, replicated_sum

try:  # the weak type of a result: no public API sets it
    from jax._src.lax.lax import _convert_element_type as _convert_weak
except ImportError:  # pragma: no cover - a later JAX; results then keep the dtype, not the weak type
    _convert_weak = None

#: The mode switch: True inside :func:`jaxrules.forward_mode`. Part of jit's cache key.
FORWARD = jax.make_user_context(False)

_CACHE_SIZE = 4096


def _is_tracer(v: Any) -> bool:
    return isinstance(v, jax.core.Tracer)


def _is_float(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.inexact)


def as_array(rule: str, name: str, v: Any) -> Any:
    """An array argument as a jax.Array (None stays None), or a TypeError naming the rule and argument.

    Python scalars become weakly typed arrays (as jnp.asarray makes them); NumPy arrays and scalars
    are converted; strings, lists, dicts and other objects are refused.
    """
    if v is None or isinstance(v, jax.Array):
        return v
    if isinstance(v, (str, bytes)) or not isinstance(v, (numbers.Number, np.ndarray, np.generic)):
        raise TypeError(f"{rule}: argument {name} must be an array, got {type(v).__name__}")
    return jnp.asarray(v)


def _setting(rule: str, name: str, v: Any) -> Any:
    """A static setting: a Python value. Traced arrays are refused; concrete 0-d arrays are read."""
    if _is_tracer(v) or (isinstance(v, (tuple, list)) and any(_is_tracer(u) for u in v)):
        raise TypeError(f"{rule}: {name} is a static setting and must be a Python value, got a traced array; "
                        f"under jax.jit, pass it with static_argnums or close over a Python value")
    if isinstance(v, (np.ndarray, np.generic, jax.Array)) and np.ndim(v) == 0 and _is_float(v.dtype):
        return v.item()  # alpha=jnp.float32(0.5), as jax.nn takes it
    return v


class _ArrayKey(tuple):
    """(shape, dtype, weak type) of an array argument: the part of it the original's result type sees."""

    def __new__(cls, shape, dtype, weak):
        return super().__new__(cls, (tuple(shape), dtype, weak))

    def struct(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self[0], self[1], weak_type=self[2])


def _key(v: Any) -> Any:
    """A hashable stand-in for an argument: (shape, dtype, weak type) of an array, the value otherwise."""
    if isinstance(v, jax.Array):
        return _ArrayKey(v.shape, v.dtype, bool(getattr(v, "weak_type", False)))
    try:
        hash(v)
        return v
    except TypeError:
        return repr(v)


def _weak_like(ct: Any, t: Any) -> Any:
    """A cotangent with its primal's weak type (jax.grad(jax.nn.relu)(0.7) is weakly typed, as 0.7 is).

    Only the weak flag: a cotangent of another dtype is left alone for check_rule to catch."""
    if t is None or not isinstance(ct, jax.Array) or ct.dtype != t[0] or bool(ct.weak_type) == t[1]:
        return ct
    return _convert_weak(ct, np.dtype(ct.dtype), t[1]) if _convert_weak is not None else ct


def _config() -> tuple:
    """The settings that change JAX's result types: x64, and standard or strict promotion."""
    return jax.config.jax_enable_x64, jax.config.jax_numpy_dtype_promotion


def _retype(y: Any, want: Any) -> Any:
    """y with the dtype and weak type of the ShapeDtypeStruct tree ``want`` (leaf by leaf)."""
    def one(a, w):
        if not isinstance(a, jax.Array) or not hasattr(w, "dtype"):
            return a
        if a.dtype == w.dtype and bool(a.weak_type) == bool(w.weak_type):
            return a
        if _convert_weak is not None:
            return _convert_weak(a, np.dtype(w.dtype), bool(w.weak_type))
        return a.astype(w.dtype)
    try:
        return jax.tree_util.tree_map(one, y, want)
    except ValueError:  # a different structure (an output the original does not have): leave it
        return y


class Rule:
    """A jaxrules rule: see the module docstring. ``rule.fun`` is the primal with the public signature."""

    def __init__(self, fun: Callable, *, like: Callable | None = None, settings: Sequence[str] = (),
                 floats: Sequence[str] | None = None):
        functools.update_wrapper(self, fun)
        del self.__wrapped__  # inspect.signature reads __signature__ below, custom_vjp our positional form
        self.fun = fun
        self.like = like
        self.__signature__ = sig = inspect.signature(fun)
        params = list(sig.parameters.values())
        self._names = [p.name for p in params]
        self._keyword = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        unknown = set(settings) - set(self._names)
        if unknown:
            raise ValueError(f"{fun.__name__}: settings {sorted(unknown)} are not parameters")
        self.settings = tuple(settings)
        self.nondiff_argnums = tuple(i for i, n in enumerate(self._names) if n in settings)
        self._arrays = [n for n in self._names if n not in settings]
        self.floats = tuple(self._arrays[:1] if floats is None else floats)
        self._like_params = set(inspect.signature(like).parameters) if like is not None else set()
        self._vjp = self._jvp = None
        self._types = functools.lru_cache(_CACHE_SIZE)(self._original_types)

    # -- the primal, called positionally in signature order (custom_vjp and custom_jvp call it so) --
    def positional(self, *args: Any) -> Any:
        pos = [a for n, a in zip(self._names, args) if n not in self._keyword]
        kw = {n: a for n, a in zip(self._names, args) if n in self._keyword}
        return self.fun(*pos, **kw)

    def call(self, *args: Any) -> Any:
        """The rule on positional arguments in signature order, as fwd receives them: fwd calls it
        for its output, so that grad of grad goes through the rule again (and forward mode, inside
        :func:`jaxrules.forward_mode`, through its twin)."""
        return (self._jvp if FORWARD.value else self._vjp)(*args)

    def defvjp(self, fwd: Callable, bwd: Callable) -> None:
        """Register (fwd, bwd) as the custom_vjp rule and build the forward-mode twin from them."""
        primal = _named(self.positional, self.__name__)
        arrays = [n not in self.settings for n in self._names]

        @functools.wraps(fwd)
        def fwd_arrays(*args):
            # under jax.grad of a Python scalar, custom_vjp hands fwd the raw Python number
            args = [jnp.asarray(a) if is_array and a is not None else a for a, is_array in zip(args, arrays)]
            y, res = fwd(*args)
            inputs = [a for a, is_array in zip(args, arrays) if is_array]
            types = tuple((a.dtype, bool(getattr(a, "weak_type", False))) if isinstance(a, jax.Array) else None
                          for a in inputs)
            return y, (res, Static(types), mesh_axes(*inputs))

        @functools.wraps(bwd)
        def bwd_typed(*args):
            # each cotangent with its primal's weak type, and summed over the devices of a shard_map
            # across which its primal was replicated (JAX's own autodiff does that sum implicitly)
            *settings, (res, types, mesh), g = args
            cts = replicated_sum(bwd(*settings, res, g), mesh)
            return tuple(_weak_like(ct, t) for ct, t in zip(cts, types.value))

        self._vjp = jax.custom_vjp(primal, nondiff_argnums=self.nondiff_argnums)
        self._vjp.defvjp(fwd_arrays, bwd_typed)
        self._jvp = jax.custom_jvp(primal, nondiff_argnums=self.nondiff_argnums)
        self._jvp.defjvp(functools.partial(_transposed_jvp, fwd_arrays, bwd_typed, self.nondiff_argnums))
        self.fwd, self.bwd = fwd, bwd

    # -- the public face ------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self.__name__
        try:
            bound = self.__signature__.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{name}: {e}; the signature is {name}{self.__signature__}") from None
        bound.apply_defaults()
        vals = dict(bound.arguments)
        for n in self._arrays:
            vals[n] = as_array(name, n, vals[n])
        for n in self.settings:
            if isinstance(vals[n], list):  # axis=[0, 1] as (0, 1): hashable, for custom_vjp and the cache
                vals[n] = tuple(vals[n])
        want = None
        if self.like is not None:  # the original sees the settings as given (np.float32(0.5) is not weak)
            want = self._types(_config(), tuple((n, _key(vals[n])) for n in self._names if n in self._like_params))
        for n in self.settings:
            vals[n] = _setting(name, n, vals[n])
        if isinstance(want, Exception) or (want is not None and not jax.tree_util.tree_leaves(want)):
            want = None  # the original refuses these arguments: our own checks say why, or we compute
        ints = [n for n in self.floats if isinstance(vals[n], jax.Array) and not _is_float(vals[n].dtype)]
        out = None if want is None else jax.tree_util.tree_leaves(want)[0].dtype
        if ints and (out is None or not _is_float(out)):
            if out is not None:  # the original keeps integers (relu(2) == 2): no derivative to define
                return _retype(self.positional(*(vals[n] for n in self._names)), want)
            raise TypeError(f"{name}: argument {ints[0]} must have a floating dtype, got {vals[ints[0]].dtype}"
                            + (f" ({_qualname(self.like)} rejects it too)" if self.like is not None else
                               f"; cast it first, e.g. {ints[0]}.astype(jnp.float32)"))
        if out is not None:  # compute in the original's result dtype (ints promoted, bf16 widened by a setting)
            for n in self.floats:
                if isinstance(vals[n], jax.Array) and vals[n].dtype != out:
                    vals[n] = vals[n].astype(out)
        args = [vals[n] for n in self._names]
        y = self.positional(*args) if self._vjp is None else self.call(*args)
        return y if want is None else _retype(y, want)

    def _original_types(self, config: tuple, key: tuple) -> Any:
        """The original's result as ShapeDtypeStructs for these argument types, or the exception it raised.

        ``config`` (x64 and the promotion mode, which change result types) is part of the cache key."""
        del config
        kw = {n: (v.struct() if isinstance(v, _ArrayKey) else v) for n, v in key}
        arrays = {n: v for n, v in kw.items() if isinstance(v, jax.ShapeDtypeStruct)}
        rest = {n: v for n, v in kw.items() if n not in arrays}
        try:
            return jax.eval_shape(lambda a: _call_by_name(self.like, {**a, **rest}), arrays)
        except Exception as e:  # noqa: BLE001 - reported only where our own checks do not speak first
            return e

    def __repr__(self) -> str:
        return f"<jaxrules rule {self.__name__}{self.__signature__}>"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:  # a rule stored on a class stays a function
        return self if obj is None else functools.partial(self, obj)


def _call_by_name(f: Callable, kw: dict) -> Any:
    """f called with these arguments by name, its positional-only parameters by position."""
    params = inspect.signature(f).parameters.values()
    pos = [kw.pop(p.name) for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY and p.name in kw]
    return f(*pos, **kw)


def _qualname(f: Callable) -> str:
    """jax.nn.relu, optax.l2_loss, jax.numpy.matmul: the public path of the original."""
    mod = getattr(f, "__module__", "") or ""
    top = {"jax._src.nn": "jax.nn", "jax._src.numpy": "jax.numpy"}.get(".".join(mod.split(".")[:3]), mod.split(".")[0])
    return f"{top}.{getattr(f, '__name__', f)}"


def _named(f: Callable, name: str) -> Callable:
    """f under the rule's name (jaxprs show it: ``custom_vjp_call[name=relu]``)."""
    def primal(*args):
        return f(*args)
    primal.__name__ = primal.__qualname__ = name
    return primal


def _transposed_jvp(fwd: Callable, bwd: Callable, nondiff: tuple[int, ...], *args: Any) -> tuple[Any, Any]:
    """The JVP of the rule (fwd, bwd): run fwd, then transpose ȳ ↦ bwd(res, ȳ) and apply it to ẋ."""
    *settings, primals, tangents = args
    full = list(primals)
    for i, s in zip(nondiff, settings):
        full.insert(i, s)
    y, res = fwd(*full)

    def pullback(ybar):
        return tuple(bwd(*settings, res, ybar))

    wanted = jax.eval_shape(pullback, y)  # None where an argument gets no cotangent
    tans = tuple(None if w is None or t is None or jnp.result_type(t) == jax.dtypes.float0 else t
                 for w, t in zip(wanted, tangents))
    (ydot,) = jax.linear_transpose(pullback, y)(tans)
    return y, ydot


def rule(fun: Callable | None = None, *, like: Callable | None = None, settings: Sequence[str] = (),
         floats: Sequence[str] | None = None) -> Any:
    """Decorator: ``@rule(like=jax.nn.relu, settings=("grad_at_zero",))`` over a primal; see the module doc.

    like: the function this one replaces (its dtypes and weak types are copied, and its integer
      policy); settings: the static parameters (nondiff_argnums); floats: the array parameters that
      are promoted from integers where the original promotes them (default: the first).
    """
    if fun is None:
        return functools.partial(rule, like=like, settings=settings, floats=floats)
    return Rule(fun, like=like, settings=settings, floats=floats)
