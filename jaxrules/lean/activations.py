"""jax.nn's activations, softmax, log_softmax and logsumexp, recognised in a traced program.

What they look like in a jaxpr (jax 0.10): most activations are a ``jit`` equation named after the
function (``relu`` and ``relu6`` inside a ``custom_jvp_call``), with a setting passed as a literal
input or folded into the body when left at its default; ``sigmoid`` is the ``logistic`` primitive,
``tanh`` the ``tanh`` primitive; ``gelu`` (both forms), ``softmax`` and ``logsumexp`` are plain
operations with no name. Every one is recognised the same way: jax.nn's own function, traced on the
candidate's shape, dtype and setting, must be the candidate equation for equation (see _match).

A softmax whose output feeds a matrix product is an attention's: it is left to the attention
patterns, and left alone with the attention when they cannot replace it, so that an attention lean
does not understand (dropout on its weights, an unknown mask) stays exactly as it was.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxrules as jr
from jaxrules.lean import _ir
from jaxrules.lean._ir import Node, Value
from jaxrules.lean._match import Match, aval_key, closed, exact, group, rank_key, skeleton, stand_in, struct, template
from jaxrules.lean.rewrite import register


@dataclasses.dataclass(frozen=True)
class Activation:
    rule: str                      # jaxrules rule name (the count's key)
    ref: Callable                  # the jax.nn function it replaces
    ours: Callable                 # the jaxrules rule
    setting: str | None = None     # its one setting, as a keyword of both
    values: tuple = ()             # settings to try besides those read off the candidate


def _specs() -> list[Activation]:
    specs = []
    for name, setting, values in [
        ("relu", None, ()), ("relu6", None, ()), ("silu", None, ()), ("softplus", None, ()),
        ("log_sigmoid", None, ()), ("elu", "alpha", ()), ("leaky_relu", "negative_slope", ()),
        ("celu", "alpha", ()), ("selu", None, ()), ("mish", None, ()), ("hard_sigmoid", None, ()),
        ("hard_silu", None, ()), ("hard_tanh", None, ()), ("soft_sign", None, ()), ("sparse_plus", None, ()),
        ("sparse_sigmoid", None, ()), ("squareplus", "b", ()), ("gelu", "approximate", (True, False)),
        ("sigmoid", None, ()), ("tanh", None, ()),
    ]:
        ref, ours = getattr(jax.nn, name, None), getattr(jr, name, None)
        if ref is not None and ours is not None:
            specs.append(Activation(name, ref, ours, setting, values))
    return specs


def _call(f: Callable, x: Any, setting: str | None, s: Any) -> Any:
    if s is _DEFAULT:
        return f(x)
    if setting == "approximate":
        return f(x, approximate=s)
    return f(x, s)


_DEFAULT = "default"
_PROBES = [jax.ShapeDtypeStruct((2, 3), d) for d in ("float32", "bfloat16")]


def _anchors(spec: Activation) -> set[str]:
    """Primitive names of the last equation of spec.ref, and the names of jits it appears as."""
    names = set()
    for probe in _PROBES:
        for s in (_DEFAULT, *spec.values):
            try:
                eqn = jax.make_jaxpr(lambda x: _call(spec.ref, x, spec.setting, s))(probe).jaxpr.eqns[-1]
            except Exception:  # noqa: BLE001
                continue
            names.add(eqn.primitive.name)
            inner = eqn.params.get("call_jaxpr")
            if eqn.primitive is _ir.JIT:
                _ir.KEEP.add(eqn.params["name"])
            elif inner is not None and inner.jaxpr.eqns and inner.jaxpr.eqns[-1].primitive is _ir.JIT:
                _ir.KEEP.add(inner.jaxpr.eqns[-1].params["name"])
    return names


def _settings(spec: Activation, node: Node) -> list:
    """Settings to try: the default, the spec's values, and literals passed to the candidate."""
    out = [_DEFAULT, *spec.values]
    if spec.setting is not None and spec.setting != "approximate":
        out += [v.const for v in node.ins[1:] if v.literal and np.ndim(v.const) == 0]
    return out


def _activation_pattern(spec: Activation) -> Callable:
    def find(node: Node) -> Match | None:
        y = node.outs[0]
        if len(node.outs) != 1 or not jnp.issubdtype(y.aval.dtype, jnp.floating):
            return None
        for s in _settings(spec, node):
            probe = template(("act-probe", spec.rule, repr(s), type(s).__name__, rank_key(y)),
                             lambda x, s=s: _call(spec.ref, x, spec.setting, s), stand_in(y))
            if skeleton(probe, y) is None:
                continue
            key = ("act", spec.rule, repr(s), type(s).__name__, aval_key(y))
            tmpl = template(key, lambda x, s=s: _call(spec.ref, x, spec.setting, s), struct(y))
            b = exact(tmpl, y)
            if b is None:
                continue
            nodes = group(b, [y])
            if nodes is None:
                return None
            setting = s if s is _DEFAULT or spec.setting == "approximate" else float(s)

            def emit(x, setting=setting):
                return [_call(spec.ours, x, spec.setting, setting)]
            return Match(spec.rule, nodes, [b.values[tmpl.ins[0]]], [y], emit, key=(spec.rule, setting))
        return None
    find.__name__ = f"find_{spec.rule}"
    return find


for _spec in _specs():
    register(*_anchors(_spec))(_activation_pattern(_spec))


# --- softmax, log_softmax, logsumexp -------------------------------------------------------

def _feeds_product(v: Value, depth: int = 6) -> bool:
    """v reaches a dot_general through elementwise operations (an attention's weights)."""
    todo, seen = [(v, 0)], set()
    while todo:
        w, d = todo.pop()
        for u in w.uses:
            if u.name == "dot_general":
                return True
            if d < depth and u not in seen and len(u.outs) == 1:
                seen.add(u)
                todo.append((u.outs[0], d + 1))
    return False


def _reduce_axes(v: Value, prim: str, depth: int = 14) -> tuple[Value, tuple[int, ...]] | None:
    """The input and axes of the nearest ``prim`` reduction upstream of v (breadth first)."""
    todo, seen = [v], set()
    for _ in range(depth):
        nxt = []
        for w in todo:
            n = w.node
            if n is None or n in seen:
                continue
            seen.add(n)
            if n.name == prim:
                return n.ins[0], tuple(int(a) for a in n.params["axes"])
            nxt.extend(n.ins)
        todo = nxt
    return None


@register("div")
def find_softmax(node: Node) -> Match | None:
    y = node.outs[0]
    found = _reduce_axes(y, "reduce_sum", 5)
    if found is None or not jnp.issubdtype(y.aval.dtype, jnp.floating) or _feeds_product(y):
        return None
    axes = found[1]
    axis = axes[0] if len(axes) == 1 else axes
    probe = template(("softmax-probe", axis, rank_key(y)), lambda x: jax.nn.softmax(x, axis=axis), stand_in(y))
    if skeleton(probe, y) is None:
        return None
    key = ("softmax", axis, aval_key(y))
    tmpl = template(key, lambda x: jax.nn.softmax(x, axis=axis), struct(y))
    b = exact(tmpl, y)
    nodes = b and group(b, [y])
    if not nodes:
        return None
    return Match("softmax", nodes, [b.values[tmpl.ins[0]]], [y], lambda x: [jr.softmax(x, axis=axis)],
                 key=("softmax", axis))


def _log_softmax_anchor() -> set[str]:
    names = set()
    for probe in _PROBES:
        eqn = jax.make_jaxpr(jax.nn.log_softmax)(probe).jaxpr.eqns[-1]
        names.add(eqn.primitive.name)
        if eqn.primitive is _ir.JIT:
            _ir.KEEP.add(eqn.params["name"])
    return names


@register(*_log_softmax_anchor())
def find_log_softmax(node: Node) -> Match | None:
    y = node.outs[0]
    if len(node.outs) != 1 or not jnp.issubdtype(y.aval.dtype, jnp.floating) or y.aval.ndim == 0:
        return None
    nd = y.aval.ndim
    for axis in [-1] + list(range(nd - 1)):
        probe = template(("log_softmax-probe", axis, rank_key(y)),
                         lambda x, axis=axis: jax.nn.log_softmax(x, axis=axis), stand_in(y))
        if skeleton(probe, y) is None:
            continue
        key = ("log_softmax", axis, aval_key(y))
        tmpl = template(key, lambda x, axis=axis: jax.nn.log_softmax(x, axis=axis), struct(y))
        b = exact(tmpl, y)
        if b is not None:
            nodes = group(b, [y])
            if nodes is None:
                return None
            return Match("log_softmax", nodes, [b.values[tmpl.ins[0]]], [y],
                         lambda x, axis=axis: [jr.log_softmax(x, axis=axis)], key=("log_softmax", axis))
    return None


@register(*{jax.make_jaxpr(lambda x: jax.nn.logsumexp(x, -1))(p).jaxpr.eqns[-1].primitive.name for p in _PROBES})
def find_logsumexp(node: Node) -> Match | None:
    y = node.outs[0]
    found = _reduce_axes(y, "reduce_max")
    if found is None or not jnp.issubdtype(y.aval.dtype, jnp.floating):
        return None
    x, axes = found
    keepdims = x.aval.ndim == y.aval.ndim
    axis = axes[0] if len(axes) == 1 else axes
    probe = template(("logsumexp-probe", axis, keepdims, rank_key(x)),
                     lambda a: jax.nn.logsumexp(a, axis=axis, keepdims=keepdims), stand_in(x))
    if skeleton(probe, y) is None:
        return None
    key = ("logsumexp", axis, keepdims, aval_key(x))
    tmpl = template(key, lambda a: jax.nn.logsumexp(a, axis=axis, keepdims=keepdims), struct(x))
    b = exact(tmpl, y)
    nodes = b and group(b, [y])
    if not nodes or b.values[tmpl.ins[0]] is not x:
        return None
    return Match("logsumexp", nodes, [x], [y], lambda a: [jr.logsumexp(a, axis=axis, keepdims=keepdims)],
                 key=("logsumexp", axis, keepdims))


# --- gated units: silu(a)·b and gelu(a)·b -----------------------------------------------------

_GATES = {"silu": "swiglu", "gelu": "geglu"}


@register("mul")
def find_gated(node: Node) -> Match | None:
    """y = act(a) · b (either order), act jax.nn's silu or gelu used only here, a, b and y of one
    shape and dtype → jr.swiglu(a, b) or jr.geglu(a, b, approximate)."""
    y = node.outs[0]
    if not jnp.issubdtype(y.aval.dtype, jnp.floating) or getattr(jr, "swiglu", None) is None:
        return None
    for i in (0, 1):
        gate, b = node.ins[i], node.ins[1 - i]
        if gate.node is None or not _ir.same_aval(gate.aval, y.aval, weak=False) \
                or not _ir.same_aval(b.aval, y.aval, weak=False) or len(gate.uses) != 1 or gate.is_out:
            continue
        for spec in _specs():
            if spec.rule not in _GATES:
                continue
            m = _activation_pattern(spec)(gate.node)
            if m is None or m.outputs[0] is not gate:
                continue
            nodes = closed(m.nodes | {node}, [y])
            if nodes is None:
                return None
            a = m.inputs[0]
            if spec.rule == "silu":
                return Match("swiglu", nodes, [a, b], [y], lambda a, b: [jr.swiglu(a, b)], key=("swiglu",))
            approximate = m.key[1] in (_DEFAULT, True)  # gelu's default is the tanh form
            return Match("geglu", nodes, [a, b], [y], lambda a, b, ap=approximate: [jr.geglu(a, b, approximate=ap)],
                         key=("geglu", approximate))
    return None
