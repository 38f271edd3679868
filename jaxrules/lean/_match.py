"""Recognising a computation: the original function, traced again on the candidate's shapes, must
match the candidate equation for equation.

A pattern does not describe jax.nn's gelu or optax's cross-entropy by hand. It traces the installed
function itself (``template``) on the shapes, dtypes and settings read off the candidate, and
:func:`exact` requires the candidate to be that program: the same primitives with the same
parameters, the same literals, the same wiring, the same shapes and dtypes. A new JAX or optax
release that computes gelu differently changes the template with it, so a match is the same math or
no match at all.

Where the candidate's input shapes cannot be read off its output (a reduction, an attention whose
key length is unknown), :func:`skeleton` first matches a template traced on stand-in shapes while
ignoring parameters, shapes and literal values (and stepping over reshapes, broadcasts, transposes
and casts that stand-in shapes may add or drop) only to find which values are the inputs; the exact
match then decides.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrules.lean import _ir
from jaxrules.lean._ir import Node, Program, Value

#: shape and layout operations that stand-in shapes may add or drop
TRANSPARENT = frozenset({"reshape", "broadcast_in_dim", "transpose", "convert_element_type", "squeeze",
                         "expand_dims", "copy", "copy_p"})


@dataclasses.dataclass(eq=False)
class Match:
    """A group of nodes that one jaxrules call replaces.

    ``emit(*inputs)`` returns the arrays of ``outputs``; it is called where the last node of the
    group was, with the values of ``inputs`` (known values as themselves).
    """

    rule: str
    nodes: set
    inputs: list
    outputs: list
    emit: Callable[..., Sequence[Any]]
    key: Any = None  # the settings emit closes over (hashable), to check its types once per signature

    @property
    def last(self) -> Node:
        return max(self.nodes, key=lambda n: n.pos)


class Binding:
    """Template values and nodes → candidate values and nodes."""

    def __init__(self):
        self.values: dict[Value, Value] = {}
        self.nodes: dict[Node, Node] = {}

    def inputs(self, tmpl: Program) -> list[Value | None]:
        return [self.values.get(v) for v in tmpl.ins]


# --- templates ---------------------------------------------------------------------------------

_lock = threading.Lock()
_templates: dict[Any, Any] = {}
_CACHE = 4096  # traced templates and checks kept (by shapes, dtypes and settings); the oldest go first


def _store(key: Any, val: Any) -> None:
    with _lock:
        _templates[key] = val
        while len(_templates) > _CACHE:
            del _templates[next(iter(_templates))]


def struct(v: Any) -> Any:
    """A ShapeDtypeStruct for a Value's (or an aval's) shape, dtype and weak type."""
    a = v.aval if isinstance(v, Value) else v
    return jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=bool(getattr(a, "weak_type", False)))


def template(key: Any, fun: Callable, *avals: Any) -> Program | None:
    """The Program of fun(*avals), cached under key; None if fun refuses these arguments."""
    with _lock:
        if key in _templates:
            return _templates[key]
    try:
        prog = _ir.trace(fun, *avals)
    except Exception:  # noqa: BLE001 - the library refuses the stand-in: no match
        prog = None
    _store(key, prog)
    return prog


def cached(key: Any, make: Callable[[], Any]) -> Any:
    """make(), computed once per key (eval_shape checks, constants)."""
    with _lock:
        if key in _templates:
            return _templates[key]
    try:
        val = make()
    except Exception:  # noqa: BLE001
        val = None
    _store(key, val)
    return val


def stand_in(a: Any, dtype: Any = None) -> Any:
    """A ShapeDtypeStruct of a's rank with small distinct sizes (2, 3, 5, ...), for skeleton probes:
    one probe serves every candidate of that rank and dtype."""
    a = a.aval if isinstance(a, Value) else a
    sizes = (2, 3, 5, 7, 11, 13, 17, 19)
    return jax.ShapeDtypeStruct(sizes[:len(a.shape)], dtype or a.dtype)


def rank_key(v: Value | Any) -> tuple:
    a = v.aval if isinstance(v, Value) else v
    return (len(a.shape), str(a.dtype))


def aval_key(v: Value | Any) -> tuple:
    a = v.aval if isinstance(v, Value) else v
    return (tuple(a.shape), str(a.dtype), bool(getattr(a, "weak_type", False)))


# --- exact matching ----------------------------------------------------------------------------

def exact(tmpl: Program, anchor: Value, binding: Binding | None = None) -> Binding | None:
    """Bind tmpl's (single) output to anchor, equation for equation; None if they differ."""
    if tmpl is None or len(tmpl.outs) != 1:
        return None
    b = binding or Binding()
    ins = set(tmpl.ins)
    if _unify(tmpl.outs[0], anchor, b, ins):
        return b
    return None


def _unify(t: Value, g: Value, b: Binding, ins: set) -> bool:
    if t in b.values:
        return b.values[t] is g
    if t in ins:
        if not _ir.same_aval(t.aval, g.aval):
            return False
        b.values[t] = g
        return True
    if t.known:  # a literal or constant of the template: the candidate's value must be known and equal
        if not _ir.same_aval(t.aval, g.aval):
            return False
        if g.known:
            if not _ir.same_value(t.const, g.const):
                return False
        elif g.aval.size > 64 or not _ir.same_value(t.const, fold(g)):  # computed from literals only
            return False
        b.values[t] = g
        return True
    tn, gn = t.node, g.node
    if tn is None or gn is None or tn.prim is not gn.prim or t.index != g.index:
        return False
    if tn in b.nodes:
        return False  # tn is bound to another node, or t would already be bound
    if len(tn.ins) != len(gn.ins) or len(tn.outs) != len(gn.outs):
        return False
    if not all(_ir.same_aval(x.aval, y.aval) for x, y in zip(tn.outs, gn.outs)):
        return False
    if not _ir.same_params(tn.params, gn.params):
        return False
    b.nodes[tn] = gn
    for x, y in zip(tn.outs, gn.outs):
        b.values[x] = y
    return all(_unify(x, y, b, ins) for x, y in zip(tn.ins, gn.ins))


# --- skeleton matching -------------------------------------------------------------------------

def skeleton(tmpl: Program, anchor: Value) -> Binding | None:
    """Bind tmpl's inputs to candidate values by the primitives and wiring alone (see the module doc)."""
    if tmpl is None or len(tmpl.outs) != 1:
        return None
    b = Binding()
    ins = set(tmpl.ins)
    if _loose(tmpl.outs[0], anchor, b, ins, 0):
        return b
    return None


def _loose(t: Value, g: Value, b: Binding, ins: set, depth: int) -> bool:
    if depth > 400:
        return False
    if t in b.values:
        return b.values[t] is g
    if t in ins:
        b.values[t] = g
        return True
    if t.known:
        return g.known
    tn, gn = t.node, g.node
    if tn is None:
        return False
    if gn is not None and tn.prim is gn.prim and len(tn.ins) == len(gn.ins) and t.index == g.index:
        if tn in b.nodes:
            return b.nodes[tn] is gn
        b.nodes[tn] = gn
        b.values[t] = g
        return all(_loose(x, y, b, ins, depth + 1) for x, y in zip(tn.ins, gn.ins))
    if tn.name in TRANSPARENT:
        return _loose(tn.ins[0], g, b, ins, depth + 1)
    if gn is not None and gn.name in TRANSPARENT:
        return _loose(t, gn.ins[0], b, ins, depth + 1)
    return False


def peels(ins: Sequence[Value], depth: int = 2, limit: int = 16) -> list[list[Value]]:
    """Input bindings to try after a skeleton match: each input as bound, or the input of the
    reshapes, broadcasts and casts that produce it (stand-in shapes may have hidden them)."""
    options = []
    for v in ins:
        opts = [v]
        w = v
        for _ in range(depth):
            if w.node is None or w.node.name not in TRANSPARENT:
                break
            w = w.node.ins[0]
            opts.append(w)
        options.append(opts)
    out = [[]]
    for opts in options:
        out = [o + [v] for o in out for v in opts][:limit]
    return out


# --- the group a match replaces ----------------------------------------------------------------

def group(b: Binding, outputs: Sequence[Value]) -> set[Node] | None:
    """The candidate nodes of a binding, with dead consumers of their values; None if a value
    computed inside is used outside (other than the outputs) or a node has effects."""
    nodes = set(b.nodes.values())
    return closed(nodes, outputs)


def closed(nodes: set[Node], outputs: Sequence[Value]) -> set[Node] | None:
    """nodes plus dead consumers of their inner values, if no inner value escapes; else None."""
    outs = set(outputs)
    extra: set[Node] = set()
    for n in nodes:
        if _effects(n):
            return None
        for v in n.outs:
            if v in outs:
                continue
            if v.is_out:
                return None
            for u in v.uses:
                if u in nodes or u in extra:
                    continue
                if _dead(u):
                    extra.add(u)
                else:
                    return None
    return nodes | extra


def _dead(n: Node) -> bool:
    return not _effects(n) and all(not v.uses and not v.is_out for v in n.outs)


def _effects(n: Node) -> bool:
    try:
        return bool(n.eqn.effects)
    except AttributeError:
        return False


def only_use(v: Value, inside: set[Node]) -> bool:
    """v is used only by nodes in ``inside`` and is not an output."""
    return not v.is_out and all(u in inside for u in v.uses)


def check_types(m: Match) -> bool:
    """emit produces the outputs' shapes and dtypes (traced abstractly; once per ``m.key``)."""
    def make():
        args = [v.const if v.known else struct(v) for v in m.inputs]
        out = jax.eval_shape(lambda *a: list(m.emit(*a)), *args)
        return [(o.shape, o.dtype) for o in out]
    if m.key is None:
        try:
            got = make()
        except Exception:  # noqa: BLE001 - a rule refusing the candidate: no match
            return False
    else:
        got = cached(("check", m.rule, m.key, tuple(aval_key(v) for v in m.inputs)), make)
    if got is None or len(got) != len(m.outputs):
        return False
    return all(s == v.aval.shape and d == v.aval.dtype for (s, d), v in zip(got, m.outputs))


def last_axis_vector(b: Value, v: int, rank: int, inside: set) -> Value | None:
    """The (v,)-shaped source of b, a broadcast of it along the last axis of a rank-``rank`` array (a
    bias, a norm's scale); the broadcasts and reshapes only used on the way are added to ``inside``.
    None if b is anything else."""
    axis_of_v = rank - 1   # where V sits in the current value
    while b.node is not None and b.node.name in ("broadcast_in_dim", "reshape") and only_use(b, inside):
        n = b.node
        src = n.ins[0]
        if n.name == "broadcast_in_dim":
            dims = [int(d) for d in n.params["broadcast_dimensions"]]
            if axis_of_v not in dims:
                return None
            axis_of_v = dims.index(axis_of_v)
        else:  # a reshape between (V,) and (1, ..., 1, V)
            out = b.aval.shape
            if out[axis_of_v] != v or any(s != 1 for i, s in enumerate(out) if i != axis_of_v):
                return None
            if src.aval.ndim == 0 or src.aval.shape[-1] != v or any(s != 1 for s in src.aval.shape[:-1]):
                return None
            axis_of_v = src.aval.ndim - 1
        inside.add(n)
        b = src
    if b.aval.shape == (v,) and axis_of_v == 0 and jnp.issubdtype(b.aval.dtype, jnp.floating):
        return b
    return None


# --- values known when tracing -----------------------------------------------------------------

_FOLD_NODES = 64
_FOLD_ELEMENTS = 1 << 24


def fold(v: Value) -> np.ndarray | None:
    """v's value if it follows from literals and concrete constants alone (a mask built from iota)."""
    if v.known:
        return np.asarray(v.const)
    order: list[Node] = []
    seen: set = set()

    def visit(w: Value) -> bool:
        if w.known:
            return True
        n = w.node
        if n is None or len(order) > _FOLD_NODES:
            return False
        if n in seen:
            return True
        if any(np.prod(o.aval.shape, dtype=np.int64) > _FOLD_ELEMENTS for o in n.outs) or n.prim.multiple_results \
                or _ir.JIT is n.prim or n.params.get("jaxpr") is not None or n.eqn.effects:
            return False
        seen.add(n)
        if not all(visit(i) for i in n.ins):
            return False
        order.append(n)
        return True

    if not visit(v):
        return None
    env: dict = {}
    try:
        for n in order:
            args = [np.asarray(w.const) if w.known else env[w] for w in n.ins]
            outs = _numpy(n, args)
            if outs is None:
                with jax.ensure_compile_time_eval():
                    outs = [np.asarray(o) for o in _ir.bind(n, args)]
            for o, val in zip(n.outs, outs):
                if val.shape != tuple(o.aval.shape) or val.dtype != o.aval.dtype:
                    return None
                env[o] = val
        return env[v]
    except Exception:  # noqa: BLE001
        return None


def _numpy(n: Node, args: list) -> list | None:
    """n on NumPy arrays, for the operations masks and scales are built from (exact in NumPy: integer
    and boolean arithmetic, comparisons, layout, casts, sqrt); None for anything else (JAX runs it)."""
    p, name, dtype = n.params, n.name, n.outs[0].aval.dtype
    if name == "iota":
        shape, dim = tuple(p["shape"]), int(p["dimension"])
        r = np.arange(shape[dim], dtype=dtype).reshape([-1 if i == dim else 1 for i in range(len(shape))])
        return [np.broadcast_to(r, shape).copy()]
    if name == "broadcast_in_dim":
        shape = tuple(p["shape"])
        dims = [int(d) for d in p["broadcast_dimensions"]]
        src = args[0].reshape([args[0].shape[dims.index(i)] if i in dims else 1 for i in range(len(shape))]) \
            if sorted(dims) == dims else None
        return None if src is None else [np.broadcast_to(src, shape).copy()]
    if name == "reshape" and p.get("dimensions") is None:
        return [args[0].reshape(tuple(p["new_sizes"]))]
    if name == "transpose":
        return [np.transpose(args[0], [int(a) for a in p["permutation"]])]
    if name == "squeeze":
        return [np.squeeze(args[0], tuple(int(d) for d in p["dimensions"]))]
    if name == "convert_element_type" and (np.dtype(dtype).kind in "biu" or args[0].dtype.kind in "bf"):
        return [args[0].astype(dtype)]
    if name == "select_n" and args[0].dtype == np.bool_ and len(args) == 3:
        return [np.where(args[0], args[2], args[1]).astype(dtype)]
    binary = {"ge": np.greater_equal, "gt": np.greater, "le": np.less_equal, "lt": np.less, "eq": np.equal,
              "ne": np.not_equal, "and": np.logical_and if dtype == np.bool_ else np.bitwise_and,
              "or": np.logical_or if dtype == np.bool_ else np.bitwise_or}
    if name in binary and len(args) == 2:
        return [np.asarray(binary[name](args[0], args[1])).astype(dtype)]
    if name in ("add", "sub", "mul", "max", "min") and np.dtype(dtype).kind in "iu":
        f = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[name]
        return [np.asarray(f(args[0], args[1])).astype(dtype)]
    if name == "not" and dtype == np.bool_:
        return [np.logical_not(args[0])]
    if name == "sqrt" and np.dtype(dtype).kind == "f" and args[0].dtype == dtype:
        return [np.sqrt(args[0])]
    return None


def known_scalar(v: Value) -> float | None:
    """The value of v if it is known when tracing (see fold) and all its elements are equal; else None."""
    a = fold(v)
    if a is None or a.size == 0:
        return None
    flat = a.reshape(-1)
    if a.ndim and not np.all(flat == flat[0]):
        return None
    try:
        return float(flat[0])
    except (TypeError, ValueError):
        return None
