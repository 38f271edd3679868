"""Rewriting: find the matches in a program (and in its loops and branches), then evaluate it.

:func:`plan` walks a :class:`~jaxrules.lean._ir.Program` from its last node to its first, so that a
larger computation (a cross-entropy fused with its matmul, an attention) claims its nodes before
the smaller ones inside it (a softmax). Nodes no pattern claims are re-emitted as they were traced.

Bodies of ``scan``, ``while``, ``cond`` and ``checkpoint`` (remat) are planned too; where one has a
match, the loop or branch is emitted again through the public API (``lax.scan``, ``lax.while_loop``,
``lax.switch``, ``jax.checkpoint``) around the rewritten body, with the same settings. Bodies of
``custom_jvp`` and ``custom_vjp`` functions are left alone: their derivative is the user's rule.

:func:`run` evaluates under whatever transformation is tracing it (jit, grad, vmap, ...): matched
groups call a jaxrules rule, every other node binds its primitive as ``jax.core.eval_jaxpr`` does.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable

import jax
from jax import lax

from jaxrules.lean import _ir
from jaxrules.lean._ir import Node, Program
from jaxrules.lean._match import check_types


def _prim(f: Callable, *args: Any) -> Any:
    return jax.make_jaxpr(f)(*args).jaxpr.eqns[-1].primitive


_x = jax.ShapeDtypeStruct((2,), "float32")
SCAN = _prim(lambda x: lax.scan(lambda c, a: (c, a), x, x), _x)
WHILE = _prim(lambda x: lax.while_loop(lambda c: c[0] < 0, lambda c: c, x), _x)
COND = _prim(lambda x: lax.cond(x[0] < 0, lambda a: a, lambda a: -a, x), _x)
REMAT = _prim(jax.checkpoint(lambda x: x * 2), _x)
del _x

#: patterns by the primitive name of their anchor (filled by the pattern modules)
PATTERNS: dict[str, list] = collections.defaultdict(list)


def register(*anchors: str) -> Callable:
    """Decorator: a function ``find(node) -> Match | None`` tried at nodes of these primitives."""
    def deco(find):
        for a in anchors:
            PATTERNS[a].append(find)
        return find
    return deco


@dataclasses.dataclass(eq=False)
class Plan:
    at: dict = dataclasses.field(default_factory=dict)     # last node of a match -> Match
    skip: set = dataclasses.field(default_factory=set)     # nodes inside matches
    subs: dict = dataclasses.field(default_factory=dict)   # loop/branch node -> [(Program, Plan)]
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def __bool__(self) -> bool:
        return bool(self.at or self.subs)


def plan(prog: Program) -> Plan:
    p = Plan()
    for node in reversed(prog.nodes):
        if node in p.skip:
            continue
        for find in PATTERNS.get(node.name, ()):
            try:
                m = find(node)
            except Exception:  # noqa: BLE001 - a pattern that cannot read this candidate: no match
                m = None
            if m is None or (m.nodes & p.skip) or not check_types(m):
                continue
            p.skip |= m.nodes
            p.at[m.last] = m
            p.counts[m.rule] += 1
            break
    for node in prog.nodes:
        if node in p.skip:
            continue
        bodies = _bodies(node)
        if not bodies:
            continue
        subs = [(b, plan(b)) for b in bodies]
        if any(sp for _, sp in subs):
            p.subs[node] = subs
            for _, sp in subs:
                p.counts.update(sp.counts)
    return p


def _closed(j: Any) -> Any:
    if hasattr(j, "consts"):
        return j
    from jax.extend.core import ClosedJaxpr
    return ClosedJaxpr(j, [])


def _bodies(node: Node) -> list[Program]:
    """The sub-programs lean rewrites inside a loop, branch or remat node (none for other nodes)."""
    prim, prm = node.prim, node.params
    try:
        if prim is SCAN:
            return [_ir.build(prm["jaxpr"])]
        if prim is WHILE:
            return [_ir.build(prm["cond_jaxpr"]), _ir.build(prm["body_jaxpr"])]
        if prim is COND:
            return [_ir.build(b) for b in prm["branches"]]
        if prim is REMAT:
            return [_ir.build(_closed(prm["jaxpr"]))]
        if prim is _ir.JIT:  # a jit kept whole for its name (jax.nn's relu) that no pattern took
            return [_ir.build(prm["jaxpr"])]
    except Exception:  # noqa: BLE001 - an unfamiliar form of the primitive: leave it whole
        return []
    return []


# --- evaluation --------------------------------------------------------------------------------

def run(prog: Program, p: Plan, args: list[Any]) -> list[Any]:
    """Evaluate prog on args, with p's matches emitted as jaxrules rules."""
    env: dict = {}
    for v, c in prog.consts:
        env[v] = c
    for v, a in zip(prog.ins, args):
        env[v] = a

    def read(v):
        return v.const if v.literal else env[v]

    for node in prog.nodes:
        m = p.at.get(node)
        if m is not None:
            with _ir.context_of(node):
                outs = m.emit(*[read(v) for v in m.inputs])
            for v, o in zip(m.outputs, outs):
                env[v] = _retype(o, v.aval)
            continue
        if node in p.skip:
            continue
        vals = [read(v) for v in node.ins]
        if node in p.subs:
            outs = _emit_sub(node, p.subs[node], vals)
        else:
            outs = _ir.bind(node, vals)
        for v, o in zip(node.outs, outs):
            env[v] = o
    return [read(v) for v in prog.outs]


def _retype(x: Any, aval: Any) -> Any:
    """x with the dtype and weak type the replaced computation had."""
    from jaxrules._rule import _convert_weak
    weak = bool(getattr(aval, "weak_type", False))
    t = jax.typeof(x)
    if t.dtype == aval.dtype and bool(getattr(t, "weak_type", False)) == weak:
        return x
    if _convert_weak is not None:
        return _convert_weak(x, aval.dtype, weak)
    return x.astype(aval.dtype)


def _emit_sub(node: Node, subs: list, vals: list) -> list:
    prim, prm = node.prim, node.params
    with _ir.context_of(node), node.eqn.ctx.manager:
        if prim is SCAN:
            (body, bp), = subs
            nc, ncar = prm["num_consts"], prm["num_carry"]
            consts, init, xs = vals[:nc], vals[nc:nc + ncar], vals[nc + ncar:]

            def step(carry, x):
                outs = run(body, bp, list(consts) + list(carry) + list(x))
                return tuple(outs[:ncar]), tuple(outs[ncar:])
            carry, ys = lax.scan(step, tuple(init), tuple(xs), length=prm["length"], reverse=prm["reverse"],
                                 unroll=prm["unroll"])
            return list(carry) + list(ys)
        if prim is WHILE:
            (cond, cp), (body, bp) = subs
            cn, bn = prm["cond_nconsts"], prm["body_nconsts"]
            cconsts, bconsts, init = vals[:cn], vals[cn:cn + bn], vals[cn + bn:]
            out = lax.while_loop(lambda c: run(cond, cp, list(cconsts) + list(c))[0],
                                 lambda c: tuple(run(body, bp, list(bconsts) + list(c))), tuple(init))
            return list(out)
        if prim is COND:
            index, ops = vals[0], vals[1:]
            branches = [lambda *a, b=b, bp=bp: tuple(run(b, bp, list(a))) for b, bp in subs]
            return list(lax.switch(index, branches, *ops))
        if prim is REMAT:
            (body, bp), = subs
            f = jax.checkpoint(lambda *a: tuple(run(body, bp, list(a))), prevent_cse=prm.get("prevent_cse", True),
                               policy=prm.get("policy"))
            return list(f(*vals))
        if prim is _ir.JIT:
            (body, bp), = subs
            f = lambda *a: tuple(run(body, bp, list(a)))  # noqa: E731
            f.__name__ = f.__qualname__ = prm.get("name", "jit")
            return list(jax.jit(f)(*vals))
    raise AssertionError(prim)  # pragma: no cover
