"""Layer and RMS norms of Flax NNX, flax linen and Equinox, and ``jax.nn.standardize``.

None of them is a named function in a jaxpr (``jax.nn.standardize`` is a jit named ``standardize``;
the frameworks' norms are plain operations). Each is recognised by tracing the framework's own
module, built with the candidate's settings, on the candidate's shapes, with its scale and bias as
inputs (see _match): ``nnx.LayerNorm`` and ``nnx.RMSNorm`` built inside the trace, linen's
``LayerNorm`` and ``RMSNorm`` applied to the candidate's parameters, Equinox's ``LayerNorm`` and
``RMSNorm`` under as many ``jax.vmap`` as the input has leading axes (Equinox's modules take one
example). Settings tried: ``use_scale``/``use_bias`` (``use_weight`` in Equinox) and, for flax,
``use_fast_variance``; epsilon is read from the candidate. Norms over other axes than the last are
left alone.

A framework is only considered once the program has imported it: lean never imports flax or
equinox itself.

The replacements: ``jr.layer_norm(x, scale, bias, epsilon=ε)``, ``jr.rms_norm(x, scale, epsilon=ε)``
and ``jr.standardize(x, epsilon=ε)``, cast to the original's output dtype. flax's
``use_fast_variance`` computes the variance as mean(x²) − mean(x)²; the rules' two-pass variance is
the same math, without its cancellation.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxrules as jr
from jaxrules.lean import _ir
from jaxrules.lean._ir import Node, Value
from jaxrules.lean._match import (Match, aval_key, closed, exact, group, last_axis_vector, only_use, peels, rank_key,
                                  skeleton, stand_in, struct, template)
from jaxrules.lean.rewrite import register


@dataclasses.dataclass(frozen=True)
class Norm:
    rule: str                         # layer_norm | rms_norm | standardize
    framework: str                    # module that must be imported for it to be tried
    make: Callable[..., Callable]     # make(eps, scale, bias, **variant) -> f(x, *params)
    variants: tuple                   # dicts of the other settings to try
    default_eps: float
    bias_ok: bool = True              # the rule takes a bias


def _nnx_layer_norm(eps, scale, bias, fast):
    from flax import nnx

    def f(x, *params):
        m = nnx.LayerNorm(x.shape[-1], epsilon=eps, use_scale=scale, use_bias=bias, use_fast_variance=fast,
                          param_dtype=params[0].dtype if params else jnp.float32, rngs=nnx.Rngs(0))
        it = iter(params)
        if scale:
            m.scale = nnx.Param(next(it))
        if bias:
            m.bias = nnx.Param(next(it))
        return m(x)
    return f


def _nnx_rms_norm(eps, scale, bias, fast):
    from flax import nnx

    def f(x, *params):
        m = nnx.RMSNorm(x.shape[-1], epsilon=eps, use_scale=scale, use_fast_variance=fast,
                        param_dtype=params[0].dtype if params else jnp.float32, rngs=nnx.Rngs(0))
        if scale:
            m.scale = nnx.Param(params[0])
        return m(x)
    return f


def _linen_norm(cls_name):
    def make(eps, scale, bias, fast):
        import flax.linen as nn
        cls = getattr(nn, cls_name)

        def f(x, *params):
            kw = dict(epsilon=eps, use_scale=scale, use_fast_variance=fast,
                      param_dtype=params[0].dtype if params else jnp.float32)
            if cls_name == "LayerNorm":
                kw["use_bias"] = bias
            names = [n for n, on in (("scale", scale), ("bias", bias)) if on]
            return cls(**kw).apply({"params": dict(zip(names, params))}, x)
        return f
    return make


def _eqx_norm(cls_name):
    def make(eps, scale, bias):
        import equinox as eqx
        cls = getattr(eqx.nn, cls_name)

        def f(x, *params):
            m = cls(x.shape[-1], eps=eps, use_weight=scale, use_bias=bias)
            it = iter(params)
            if scale:
                m = eqx.tree_at(lambda m: m.weight, m, next(it))
            if bias:
                m = eqx.tree_at(lambda m: m.bias, m, next(it))
            g = m
            for _ in range(x.ndim - 1):
                g = jax.vmap(g)
            return g(x)
        return f
    return make


def _standardize(eps, scale, bias):
    def f(x):
        return jax.nn.standardize(x, axis=-1, epsilon=eps)
    return f


_BOTH = (True, False)
_FLAX = tuple(dict(scale=s, bias=b, fast=f) for s, b, f in itertools.product(_BOTH, _BOTH, _BOTH))
_FLAX_RMS = tuple(dict(scale=s, bias=False, fast=f) for s, f in itertools.product((True, False), (True, False)))
_EQX = tuple(dict(scale=s, bias=b) for s, b in itertools.product((True, False), (True, False)))
_EQX_RMS = tuple(dict(scale=s, bias=False) for s in (True, False))

NORMS = (
    Norm("layer_norm", "flax.nnx", _nnx_layer_norm, _FLAX, 1e-6),
    Norm("rms_norm", "flax.nnx", _nnx_rms_norm, _FLAX_RMS, 1e-6),
    Norm("layer_norm", "flax.linen", _linen_norm("LayerNorm"), _FLAX, 1e-6),
    Norm("rms_norm", "flax.linen", _linen_norm("RMSNorm"), _FLAX_RMS, 1e-6),
    Norm("layer_norm", "equinox", _eqx_norm("LayerNorm"), _EQX, 1e-5),
    Norm("rms_norm", "equinox", _eqx_norm("RMSNorm"), _EQX_RMS, 1e-5),
    Norm("standardize", "jax", _standardize, (dict(scale=False, bias=False),), 1e-5),
)


def _keep_standardize() -> None:
    eqn = jax.make_jaxpr(lambda x: jax.nn.standardize(x, epsilon=1e-5))(jax.ShapeDtypeStruct((2, 3), "float32"))
    last = eqn.jaxpr.eqns[-1]
    if last.primitive is _ir.JIT:
        _ir.KEEP.add(last.params["name"])


_keep_standardize()


def _near_rsqrt(v: Value, depth: int = 5) -> bool:
    """A norm's output is a few operations from an rsqrt (or is a jit whose body has one)."""
    todo = [v]
    for _ in range(depth):
        nxt = []
        for w in todo:
            n = w.node
            if n is None:
                continue
            if n.name == "rsqrt" or (n.prim is _ir.JIT and n.params.get("name") == "standardize"):
                return True
            nxt.extend(n.ins)
        todo = nxt
    return False


def _eps_candidates(b, default: float) -> list[float]:
    vals = [default]
    for n in b.nodes.values():
        if n.name in ("add", "jit", "pjit"):
            for w in n.ins:
                if w.literal and np.ndim(w.const) == 0 and jnp.issubdtype(np.asarray(w.const).dtype, jnp.floating):
                    v = float(w.const)
                    if 0 <= v < 1 and v not in vals:
                        vals.append(v)
    return vals


def _settings_key(d: dict) -> tuple:
    return tuple(sorted(d.items()))


@register("add", "mul", _ir.JIT.name)
def find_norm(node: Node) -> Match | None:
    y = node.outs[0]
    if len(node.outs) != 1 or y.aval.ndim == 0 or not jnp.issubdtype(y.aval.dtype, jnp.floating) \
            or not _near_rsqrt(y):
        return None
    for spec in NORMS:
        if spec.framework != "jax" and spec.framework not in sys.modules:
            continue
        for var in spec.variants:
            m = _try(spec, var, y)
            if m is not None:
                return m
    return None


def _try(spec: Norm, var: dict, y: Value) -> Match | None:
    n_params = int(var["scale"]) + int(var["bias"])
    sy = stand_in(y, jnp.float32)
    pstruct = jax.ShapeDtypeStruct(sy.shape[-1:], jnp.float32)
    probe = template(("norm-probe", spec.framework, spec.rule, _settings_key(var), rank_key(sy)),
                     spec.make(spec.default_eps, **var), sy, *[pstruct] * n_params)
    b = skeleton(probe, y)
    if b is None or None in b.inputs(probe):
        return None
    d = y.aval.shape[-1]
    for ins in peels(b.inputs(probe)):
        x, params = ins[0], ins[1:]
        if x.aval.shape != y.aval.shape or any(p.aval.shape != (d,) or not jnp.issubdtype(p.aval.dtype, jnp.floating)
                                               for p in params):
            continue
        for eps in _eps_candidates(b, spec.default_eps):
            key = ("norm", spec.framework, spec.rule, _settings_key(var), eps, tuple(aval_key(v) for v in ins))
            tmpl = template(key, spec.make(eps, **var), *[struct(v) for v in ins])
            bb = exact(tmpl, y)
            if bb is None or any(bb.values.get(t) is not g for t, g in zip(tmpl.ins, ins)):
                continue
            nodes = group(bb, [y])
            if nodes is None:
                return None
            return _match(spec, var, eps, ins, y, nodes)
    return None


def _match(spec: Norm, var: dict, eps: float, ins: list, y: Value, nodes: set) -> Match:
    dtype = y.aval.dtype
    scale, bias = var["scale"], var["bias"]

    def emit(x, *params):
        it = iter(params)
        s = next(it) if scale else None
        b = next(it) if bias else None
        if spec.rule == "layer_norm":
            out = jr.layer_norm(x, s, b, axis=-1, epsilon=eps)
        elif spec.rule == "rms_norm":
            out = jr.rms_norm(x, s, axis=-1, epsilon=eps)
        else:
            out = jr.standardize(x, axis=-1, epsilon=eps)
        return [out.astype(dtype)]
    return Match(spec.rule, nodes, list(ins), [y], emit, key=(spec.rule, scale, bias, eps, str(dtype)))


# --- jax.nn.standardize, then a scale and a shift: a layer norm written with jax.nn --------------

@register("add", "mul")
def find_affine_standardize(node: Node) -> Match | None:
    """y = standardize(x, axis=-1, epsilon=ε) * s (+ b), s and b vectors over the last axis (either
    order of each product and sum) → jr.layer_norm(x, s, b, epsilon=ε)."""
    y = node.outs[0]
    if len(node.outs) != 1 or y.aval.ndim == 0 or not jnp.issubdtype(y.aval.dtype, jnp.floating):
        return None
    d, rank = y.aval.shape[-1], y.aval.ndim
    nodes: set = {node}
    bias = None
    prod = y
    if node.name == "add":
        for i in (0, 1):
            cand = node.ins[i]
            if cand.node is not None and cand.node.name == "mul" and cand.aval.shape == y.aval.shape:
                b = last_axis_vector(node.ins[1 - i], d, rank, nodes)
                if b is not None:
                    bias, prod = b, cand
                    break
        else:
            return None
        if not only_use(prod, nodes):
            return None
    mul = prod.node
    if mul is None or mul.name != "mul":
        return None
    nodes.add(mul)
    for i in (0, 1):
        z = mul.ins[i]
        if z.node is None or z.node.prim is not _ir.JIT or z.node.params.get("name") != "standardize" \
                or not only_use(z, nodes) or z.aval.shape != y.aval.shape:
            continue
        scale = last_axis_vector(mul.ins[1 - i], d, rank, nodes)
        if scale is None:
            continue
        std = z.node
        x = std.ins[0]
        eps_lit = [w.const for w in std.ins[1:] if w.literal and np.ndim(w.const) == 0]
        for eps in [1e-5] + [float(e) for e in eps_lit]:
            tmpl = template(("standardize", eps, aval_key(x)), _standardize(eps, False, False), struct(x))
            bb = exact(tmpl, z)
            if bb is None or bb.values.get(tmpl.ins[0]) is not x:
                continue
            nodes |= set(bb.nodes.values())
            group_ = closed(nodes, [y])
            if group_ is None or x.aval.dtype != y.aval.dtype:
                return None
            inputs = [x, scale] + ([bias] if bias is not None else [])

            def emit(xv, s, b=None, eps=eps):
                return [jr.layer_norm(xv, s, b, axis=-1, epsilon=eps).astype(y.aval.dtype)]
            return Match("layer_norm", group_, inputs, [y], emit, key=("std-affine", eps, bias is not None))
    return None
