"""A small graph view of a jaxpr that lean matches on and evaluates.

``build`` turns a traced program into :class:`Program`: values (with their producer and consumers)
and nodes (one per equation), with calls to ``jax.jit``-ed functions inlined, so that a computation
that crosses a jit boundary (``jnp.where`` is a jit of its own) is one piece of graph. A few named
jits stay whole (``KEEP``: jax.nn's activations, which lean recognises by name and body).

It reads only what every jaxpr equation has: ``primitive``, ``params``, ``invars`` (a ``Literal``
has ``val``), ``outvars``, ``source_info`` and ``ctx``. Sub-programs of loops and branches are
built on demand by the rewriter.
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Any, Callable, Iterable

import jax
import numpy as np

try:  # the context an equation was traced in (source location, name stack): kept when re-emitted
    from jax._src import source_info_util as _siu
except ImportError:  # pragma: no cover - a later JAX: equations are re-emitted without it
    _siu = None


class Value:
    """A value of the program: an input, a constant, a literal, or a node's output."""

    __slots__ = ("aval", "node", "index", "uses", "literal", "const", "is_out", "__weakref__")

    def __init__(self, aval: Any, node: "Node | None" = None, index: int = 0):
        self.aval = aval
        self.node = node            # producer (None for inputs, constants and literals)
        self.index = index          # which output of the producer
        self.uses: list[Node] = []  # consumers, once per operand position
        self.literal = False        # a jaxpr Literal (its value is ``const``)
        self.const: Any = None      # the concrete value of a literal or of a concrete constant
        self.is_out = False         # an output of the program

    @property
    def known(self) -> bool:
        """Its value is known now (a literal or a concrete constant)."""
        return self.literal or self.const is not None

    def __repr__(self) -> str:
        what = f"={self.const!r}" if self.literal else (f"<-{self.node.name}" if self.node else "in")
        return f"V({_aval_str(self.aval)}{what})"


class Node:
    """One equation: ``outs = prim(*ins, **params)``."""

    __slots__ = ("prim", "params", "ins", "outs", "eqn", "pos", "prefix", "__weakref__")

    def __init__(self, prim: Any, params: dict, ins: list[Value], eqn: Any, prefix: Any = None):
        self.prim = prim
        self.params = params
        self.ins = ins
        self.outs: list[Value] = []
        self.eqn = eqn              # the original equation: source_info and ctx for re-emission
        self.pos = -1               # position in the program
        self.prefix = prefix        # name stack of the jit calls it was inlined from

    @property
    def name(self) -> str:
        return self.prim.name

    @property
    def out(self) -> Value:
        return self.outs[0]

    def __repr__(self) -> str:
        return f"{self.name}#{self.pos}"


class Program:
    """Nodes in topological order, inputs, outputs and constants (Value, concrete or traced value)."""

    def __init__(self):
        self.ins: list[Value] = []
        self.outs: list[Value] = []
        self.nodes: list[Node] = []
        self.consts: list[tuple[Value, Any]] = []

    def __repr__(self) -> str:
        return "\n".join(f"{n.pos:4d} {n.name} {[_aval_str(v.aval) for v in n.ins]} -> "
                         f"{[_aval_str(v.aval) for v in n.outs]}" for n in self.nodes)


def _aval_str(a: Any) -> str:
    try:
        return a.str_short()
    except Exception:  # noqa: BLE001
        return str(a)


def _is_literal(v: Any) -> bool:
    return type(v).__name__ == "Literal"  # jax.extend.core.Literal (the class has moved between modules)


def _is_drop(v: Any) -> bool:
    return type(v).__name__ == "DropVar"


def _concrete(c: Any) -> Any:
    """c if its value is known now (not a tracer), else None."""
    return None if isinstance(c, jax.core.Tracer) else c


def _jit_prim() -> Any:
    return jax.make_jaxpr(jax.jit(lambda x: x))(1.0).jaxpr.eqns[0].primitive


JIT = _jit_prim()

#: named jits that stay whole: lean recognises them by their name and body (see patterns)
KEEP: set[str] = set()


def build(closed: Any, keep: Callable[[Any], bool] | None = None) -> Program:
    """The Program of a ClosedJaxpr (constants as given, concrete or traced), jits inlined."""
    prog = Program()
    keep = keep or (lambda eqn: eqn.params.get("name") in KEEP)
    consts = []
    for var, c in zip(closed.jaxpr.constvars, closed.consts):
        v = Value(var.aval)
        v.const = _concrete(c)
        prog.consts.append((v, c))
        consts.append(v)
    prog.ins = [Value(var.aval) for var in closed.jaxpr.invars]
    outs = _walk(closed.jaxpr, consts, prog.ins, prog, keep, None)
    prog.outs = outs
    for v in outs:
        v.is_out = True
    for i, n in enumerate(prog.nodes):
        n.pos = i
    return prog


def _literal(lit: Any) -> Value:
    v = Value(lit.aval)
    v.literal = True
    v.const = lit.val
    return v


def _walk(jaxpr: Any, consts: list[Value], ins: list[Value], prog: Program, keep: Callable, prefix: Any) -> list[Value]:
    env: dict[Any, Value] = {}
    for var, v in zip(jaxpr.constvars, consts):
        env[var] = v
    for var, v in zip(jaxpr.invars, ins):
        env[var] = v

    def read(var):
        return _literal(var) if _is_literal(var) else env[var]

    for eqn in jaxpr.eqns:
        args = [read(v) for v in eqn.invars]
        if eqn.primitive is JIT and not keep(eqn):
            inner = eqn.params["jaxpr"]
            cvals = []
            for var, c in zip(inner.jaxpr.constvars, inner.consts):
                cv = Value(var.aval)
                cv.const = _concrete(c)
                prog.consts.append((cv, c))
                cvals.append(cv)
            stack = _stack(prefix, eqn)
            outs = _walk(inner.jaxpr, cvals, args, prog, keep, stack)
            for var, v in zip(eqn.outvars, outs):
                if not _is_drop(var):
                    env[var] = v
            continue
        node = Node(eqn.primitive, eqn.params, args, eqn, prefix)
        for a in args:
            a.uses.append(node)
        for i, var in enumerate(eqn.outvars):
            v = Value(var.aval, node, i)
            node.outs.append(v)
            if not _is_drop(var):
                env[var] = v
        prog.nodes.append(node)
    return [read(v) for v in jaxpr.outvars]


def _stack(prefix: Any, eqn: Any) -> Any:
    """The name stack inside an inlined jit call: the caller's, then the call's own."""
    if _siu is None:
        return None
    try:
        s = eqn.source_info.name_stack.extend(eqn.params["name"])
        return s if prefix is None else prefix + s
    except Exception:  # noqa: BLE001 - names are cosmetic (HLO metadata)
        return prefix


# --- evaluation --------------------------------------------------------------------------------

def bind(node: Node, args: list[Any]) -> list[Any]:
    """Re-emit a node as the original equation was emitted (as jax.core.eval_jaxpr does)."""
    eqn = node.eqn
    get = getattr(node.prim, "get_bind_params", None)
    params = get(node.params) if get is not None else node.params
    with _context(node), eqn.ctx.manager:
        out = node.prim.bind(*args, **params)
    return list(out) if node.prim.multiple_results else [out]


def _context(node: Node) -> Any:
    if _siu is None:
        return contextlib.nullcontext()
    try:
        stack = node.eqn.source_info.name_stack
        if node.prefix is not None:
            stack = node.prefix + stack
        return _siu.user_context(node.eqn.source_info.traceback, name_stack=_siu.current_name_stack() + stack)
    except Exception:  # noqa: BLE001
        return contextlib.nullcontext()


def context_of(node: Node) -> Any:
    """The source context of a node, for what lean emits in its place."""
    return _context(node)


# --- comparing programs ------------------------------------------------------------------------

def same_aval(a: Any, b: Any, weak: bool = True) -> bool:
    try:
        return (a.shape == b.shape and a.dtype == b.dtype
                and (not weak or bool(getattr(a, "weak_type", False)) == bool(getattr(b, "weak_type", False))))
    except Exception:  # noqa: BLE001
        return False


def same_value(a: Any, b: Any) -> bool:
    """Two known values are the same array (dtype, shape and every bit but NaN payloads)."""
    try:
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    except Exception:  # noqa: BLE001
        return False


def same_params(p: dict, q: dict) -> bool:
    if p.keys() != q.keys():
        return False
    return all(_same_param(p[k], q[k]) for k in p)


def _same_param(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if hasattr(a, "jaxpr") and hasattr(a, "consts") or type(a).__name__ in ("Jaxpr", "ClosedJaxpr"):
        return same_jaxpr(a, b)
    if type(a).__name__ == "WrappedFun":  # custom_jvp's rule: the same custom_jvp object behind it
        if type(b).__name__ != "WrappedFun":
            return False
        ra, rb = _rules(a), _rules(b)
        return bool(ra) and ra == rb
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_same_param(x, y) for x, y in zip(a, b))
    if callable(a) and not isinstance(a, type):
        return False  # distinct function objects: cannot tell what they compute
    if isinstance(a, (np.ndarray, jax.Array)):
        return same_value(a, b)
    if isinstance(a, (numbers.Number, np.generic)) and isinstance(b, (numbers.Number, np.generic)):
        return isinstance(a, (bool, np.bool_)) == isinstance(b, (bool, np.bool_)) and bool(a == b)
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # noqa: BLE001
        return False


def _rules(f: Any, limit: int = 64) -> set[int]:
    """ids of the jax.custom_jvp / custom_vjp objects a traced rule closes over (breadth first).

    jaxprs hold a custom_jvp's rule as a fresh closure per trace; the object the user decorated is
    found in its closures. If JAX stores it elsewhere some day, nothing is found: no match."""
    kinds = (jax.custom_jvp, jax.custom_vjp)
    found: set[int] = set()
    todo, seen = [f], set()
    while todo and len(seen) < limit:
        x = todo.pop(0)
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, kinds):
            found.add(id(x))
            continue
        if type(x).__name__ == "WrappedFun":
            todo.append(getattr(x, "f", None))
        elif isinstance(x, (tuple, list)):
            todo.extend(x[:8])
        elif callable(x):
            for c in getattr(x, "__closure__", None) or ():
                try:
                    todo.append(c.cell_contents)
                except ValueError:
                    pass
            if hasattr(x, "func"):
                todo.append(x.func)
    return found


def same_jaxpr(a: Any, b: Any) -> bool:
    """Two jaxprs (open or closed) compute the same thing: equation by equation, the same wiring."""
    ja, ca = (a.jaxpr, a.consts) if hasattr(a, "consts") else (a, [])
    jb, cb = (b.jaxpr, b.consts) if hasattr(b, "consts") else (b, [])
    if len(ja.eqns) != len(jb.eqns) or len(ja.invars) != len(jb.invars) or len(ja.outvars) != len(jb.outvars):
        return False
    if len(ca) != len(cb) or not all(same_value(x, y) for x, y in zip(ca, cb)):
        return False
    env: dict[Any, Any] = {}
    for x, y in zip(list(ja.constvars) + list(ja.invars), list(jb.constvars) + list(jb.invars)):
        if not same_aval(x.aval, y.aval):
            return False
        env[x] = y

    def same_atom(x, y):
        if _is_literal(x) or _is_literal(y):
            return _is_literal(x) and _is_literal(y) and same_aval(x.aval, y.aval) and same_value(x.val, y.val)
        return env.get(x) is y

    for ea, eb in zip(ja.eqns, jb.eqns):
        if ea.primitive is not eb.primitive or len(ea.invars) != len(eb.invars) or len(ea.outvars) != len(eb.outvars):
            return False
        if not all(same_atom(x, y) for x, y in zip(ea.invars, eb.invars)):
            return False
        if not same_params(ea.params, eb.params):
            return False
        for x, y in zip(ea.outvars, eb.outvars):
            if not same_aval(x.aval, y.aval):
                return False
            env[x] = y
    return all(same_atom(x, y) for x, y in zip(ja.outvars, jb.outvars))


def trace(fun: Callable, *avals: Any, keep: Callable | None = None) -> Program:
    """The Program of fun on these abstract arguments (ShapeDtypeStructs; None stays None)."""
    closed = jax.make_jaxpr(fun)(*avals)
    return build(closed, keep)


def consumers(v: Value) -> Iterable[Node]:
    return v.uses
